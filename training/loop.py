"""Pieces shared by the training commands: cached training images, endless batches, time/step budgets, DDP."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from runtime.errors import DatasetLayoutError
from training.data import AnomalyDataset, load_index, split_validation


class CachedImages(Dataset):
    """The pre-processed image tensors of an :class:`AnomalyDataset`, each read and resized only once."""

    def __init__(self, dataset: AnomalyDataset):
        self.dataset = dataset
        self.cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i not in self.cache:
            self.cache[i] = self.dataset[i]["image"]
        return self.cache[i]


@dataclass
class TrainingData:
    """Training and held-out validation images (both from the normal training split, never from test)."""

    loader: DataLoader
    val_loader: DataLoader | None
    sampler: DistributedSampler | None

    def batches(self, epoch: int = 0) -> Iterator[torch.Tensor]:
        """Endless micro-batches, reshuffled every epoch."""
        while True:
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            yield from self.loader
            epoch += 1


def training_data(
    data: str,
    classes: str | None,
    image_size: int,
    val_fraction: float,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
) -> TrainingData:
    """Loaders over the normal training images (resized to ``image_size``) of all or the given classes."""
    index = load_index(data, classes.split(",") if classes else None)
    train, val = split_validation(index.split("train"), val_fraction, seed)
    if len(train) < world:
        raise DatasetLayoutError(f"{data}: too few training images left after holding out validation images")
    train_set = CachedImages(AnomalyDataset(train, image_size))
    sampler = DistributedSampler(train_set, world, rank, seed=seed, drop_last=True) if world > 1 else None
    loader = DataLoader(
        train_set,
        batch_size=min(batch_size, len(train_set) // world),
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    val_loader = DataLoader(CachedImages(AnomalyDataset(val, image_size)), batch_size=batch_size) if val else None
    return TrainingData(loader, val_loader, sampler)


@dataclass
class Budget:
    """Stop after ``minutes`` of training time (resumes included) or ``max_steps`` optimiser steps."""

    minutes: float | None
    max_steps: int | None

    def progress(self, elapsed: float, step: int) -> float:
        """How much of the budget is spent, 0..1 (the larger of time and steps)."""
        parts = [
            elapsed / (60 * self.minutes) if self.minutes else 0.0,
            step / self.max_steps if self.max_steps else 0.0,
        ]
        return max(parts)

    def finished(self, elapsed: float, step: int) -> bool:
        return self.progress(elapsed, step) >= 1.0


class Every:
    """True once every ``minutes`` of wall time (checkpoint timer)."""

    def __init__(self, minutes: float):
        self.seconds = 60 * minutes
        self.last = time.monotonic()

    def due(self) -> bool:
        if time.monotonic() - self.last < self.seconds:
            return False
        self.last = time.monotonic()
        return True


def distributed_setup() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group when launched by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def slowest(seconds: float, device: torch.device) -> float:
    """The largest of every process's ``seconds``, so that all processes agree on the budget."""
    if not dist.is_initialized():
        return seconds
    t = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)
