"""The one training loop of both training commands, and what it runs on.

:class:`TrainingLoop` owns what ``training.finetune_autoencoder`` and ``training.train`` share: the time/step budget
(resumes included), gradient accumulation, the learning-rate schedule, the CSV log and the progress bar, atomic
checkpoints every few minutes and ``--resume``. A checkpoint holds the weights, the optimiser state, the random
generators and the data position (micro-batches consumed), so a run of N steps, resumed, then run for N more ends
with the same weights, bit for bit on a CPU, as a run of 2N steps. Subclasses say what a step computes.

Data: the cached, pre-processed normal training images in an order fixed by (seed, epoch), or endless generated
images (``--data generic``, the base model's pretraining), both resumable at any micro-batch.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from runtime.errors import CheckpointError, DatasetLayoutError
from runtime.preprocess import preprocess
from training import generic_images
from training.base_model import INITS
from training.data import AnomalyDataset, load_index, split_validation
from training.models.presets import PRESETS
from training.run_folder import RunFolder, TrainingState, load_state, save_state

GENERIC = "generic"  # --data value: the endless generated images of training.generic_images (base pretraining)
RNG_PREFIX = "rng."


def run_parser(description: str, out_help: str) -> argparse.ArgumentParser:
    """The arguments both training commands share first: what to train, on what, where, from which start."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model preset (default: tiny)")
    p.add_argument("--data", required=True, help=f"dataset folder (MVTec-AD, VisA or folder layout), or '{GENERIC}'")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--init", choices=INITS, default=None, help="a new run's start (default: base where one ships)")
    p.add_argument("--classes", default=None, help="comma-separated class filter (default: all classes)")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="image side of a new run (default: the preset's; recorded in config.json)")
    return p


def add_budget_arguments(p: argparse.ArgumentParser, max_steps_help: str, checkpoint: str) -> None:
    """The arguments both training commands share last: budget, checkpoints, seed, resume and device."""
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget of the training loop (steps, validations, checkpoints), resumes included")
    p.add_argument("--max-steps", type=int, default=None, help=max_steps_help)
    p.add_argument("--checkpoint-minutes", type=float, default=2.0, help="minutes between checkpoints (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--resume", action="store_true", help=f"continue from checkpoints/{checkpoint}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")


def parse_budgeted(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; a usage error when neither ``--minutes`` nor ``--max-steps`` bounds the run."""
    args = p.parse_args(argv)
    if args.minutes is None and args.max_steps is None:
        p.error("give a budget: --minutes and/or --max-steps")
    return args


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
    """Training batches (normal training images or generated ones) and held-out validation images (normal
    training images, never test images; none for generated data)."""

    batch_size: int
    image_size: int
    seed: int
    train_set: CachedImages | None  # None: generated images
    sampler: DistributedSampler | None
    val_loader: DataLoader | None

    def batches(self, position: int = 0) -> Iterator[torch.Tensor]:
        """Endless micro-batches, starting after the first ``position`` ones: epoch ``e``'s order is fixed by
        ``(seed, e)``, generated image ``i`` by ``(seed, i)``, so a resumed run sees what it would have seen."""
        if self.train_set is None:
            images = generic_images.stream(self.seed, self.image_size, start=position * self.batch_size)
            while True:
                yield torch.from_numpy(np.stack([preprocess(next(images), self.image_size)
                                                 for _ in range(self.batch_size)]))
        per_epoch = len(self.sampler) // self.batch_size
        epoch, skip = divmod(position, per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            for b in range(skip, per_epoch):
                yield torch.stack([self.train_set[i] for i in order[b * self.batch_size : (b + 1) * self.batch_size]])
            skip, epoch = 0, epoch + 1


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
    """Batches of the normal training images (resized to ``image_size``) of all or the given classes, or of
    generated images when ``data`` is :data:`GENERIC`; each process of a DDP run gets its own share."""
    if data == GENERIC:
        return TrainingData(batch_size, image_size, seed * world + rank, None, None, None)
    index = load_index(data, classes.split(",") if classes else None)
    train, val = split_validation(index.split("train"), val_fraction, seed)
    if len(train) < world:
        raise DatasetLayoutError(f"{data}: too few training images left after holding out validation images")
    train_set = CachedImages(AnomalyDataset(train, image_size))
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=seed, drop_last=True)
    val_loader = DataLoader(CachedImages(AnomalyDataset(val, image_size)), batch_size=batch_size) if val else None
    return TrainingData(min(batch_size, len(sampler)), image_size, seed, train_set, sampler, val_loader)


@dataclass
class Budget:
    """Stop after ``minutes`` of wall time in the training loop (steps, validations and checkpoints; resumes
    included, the start-up not) or ``max_steps`` optimiser steps."""

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


def lr_factor(schedule: str, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` (0..1) of the budget: ``constant`` 1, ``cosine`` 1 -> 1/20."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"learning-rate schedule {schedule!r}: expected constant or cosine")


def random_crops(images: torch.Tensor, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """One random ``size`` x ``size`` crop per image (the images themselves when ``size`` is None or larger)."""
    n, _, height, width = images.shape
    if size is None or (size >= height and size >= width):
        return images
    ys = torch.randint(0, height - size + 1, (n,), generator=generator).tolist()
    xs = torch.randint(0, width - size + 1, (n,), generator=generator).tolist()
    return torch.stack([image[:, y : y + size, x : x + size] for image, y, x in zip(images, ys, xs)])


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


class TrainingLoop(ABC):
    """Budget, accumulation, schedule, log, checkpoints and resume; a subclass gives the step's parts.

    Hooks: :meth:`optimizer` (the optimiser of the coming step, may switch stages), :meth:`micro_loss`,
    :meth:`weights` / :meth:`load_weights` (what a checkpoint holds besides the optimiser), :meth:`log_row` (extra
    log fields, e.g. validation). ``generators`` (name -> torch.Generator) are saved and restored with the run.
    """

    log_name: str = "train"
    checkpoint_name: str = "last.safetensors"

    def __init__(
        self,
        run: RunFolder,
        data: TrainingData,
        budget: Budget,
        accumulate: int,
        schedule: str,
        checkpoint_minutes: float,
        device: torch.device,
        rank: int = 0,
    ):
        self.run, self.data, self.budget = run, data, budget
        self.accumulate, self.schedule = accumulate, schedule
        self.checkpoint_minutes, self.device, self.rank = checkpoint_minutes, device, rank
        self.step, self.elapsed, self.position = 0, 0.0, 0
        self.meta: dict[str, Any] = {}
        self.generators: dict[str, torch.Generator] = {}
        self.saved_optimizer: dict[str, Any] | None = None  # from --resume, for the optimiser it belongs to

    # ----------------------------------------------------------------------------------------------- hooks
    @abstractmethod
    def optimizer(self, progress: float) -> tuple[torch.optim.Optimizer, float]:
        """The optimiser of the coming step and its base learning rate, at ``progress`` (0..1) of the budget."""

    @abstractmethod
    def micro_loss(self, batch: torch.Tensor, last: bool) -> torch.Tensor:
        """The loss of one micro-batch (``last``: the step's final one, where DDP synchronises)."""

    @abstractmethod
    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds."""

    @abstractmethod
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Put a checkpoint's tensors back."""

    def log_row(self, row: dict[str, Any]) -> dict[str, Any]:
        return row

    def schedule_progress(self, progress: float) -> float:
        """Where in its schedule the learning rate is (a multi-stage run restarts it per stage)."""
        return progress

    # ----------------------------------------------------------------------------------------- the loop
    @property
    def checkpoint_path(self):
        return self.run.checkpoints / self.checkpoint_name

    def save_checkpoint(self, optimizer: torch.optim.Optimizer, elapsed: float) -> None:
        """Weights, optimiser, generators and data position after ``self.step`` steps, ``elapsed`` seconds in."""
        rng = {f"{RNG_PREFIX}{name}": g.get_state() for name, g in self.generators.items()}
        meta = {**self.meta, "step": self.step, "elapsed": elapsed, "position": self.position}
        save_state(self.checkpoint_path, TrainingState({**self.weights(), **rng}, optimizer.state_dict(), meta))

    def resume(self) -> None:
        """Continue from the checkpoint: weights, optimiser state, generators, step, time and data position; the
        log loses the rows after the checkpoint's step."""
        if not self.checkpoint_path.is_file():
            raise CheckpointError(f"{self.checkpoint_path}: nothing to resume")
        state = load_state(self.checkpoint_path)
        for name, generator in self.generators.items():
            saved = state.model.pop(f"{RNG_PREFIX}{name}", None)
            if saved is None:  # a checkpoint of an older version: the run goes on, not bit for bit
                print(f"note: {self.checkpoint_path} holds no '{name}' generator state; continuing with a fresh one")
            else:
                generator.set_state(saved)
        self.load_weights(state.model)
        self.saved_optimizer = state.optimizer
        self.step, self.elapsed = int(state.meta.pop("step")), float(state.meta.pop("elapsed"))
        self.position = int(state.meta.pop("position", 0))
        self.meta.update(state.meta)
        if self.rank == 0:  # the steps logged after the checkpoint, before the run stopped, are run again
            self.run.truncate_log(self.log_name, self.step)

    def train(self, desc: str, max_steps: int | None) -> None:
        """Run until the budget is spent; a final checkpoint is written."""
        batches = self.data.batches(self.position)
        save_timer = Every(self.checkpoint_minutes)
        progress = tqdm(total=max_steps, initial=self.step, disable=self.rank != 0, desc=desc, unit="step")
        optimizer = None
        tick = time.monotonic()
        while not self.budget.finished(self.elapsed, self.step):
            spent = self.budget.progress(self.elapsed, self.step)
            optimizer, base_lr = self.optimizer(spent)
            lr = base_lr * lr_factor(self.schedule, self.schedule_progress(spent))
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss_value = 0.0
            for micro in range(self.accumulate):
                loss = self.micro_loss(next(batches).to(self.device), micro == self.accumulate - 1) / self.accumulate
                loss.backward()
                loss_value += float(loss.detach())
                self.position += 1
            optimizer.step()
            self.step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4g}")
            row = self.log_row({"step": self.step, "loss": loss_value, "lr": lr,
                                "elapsed_s": round(self.elapsed + time.monotonic() - tick, 2)})
            if self.rank == 0:
                self.run.append_log(self.log_name, row)
                if save_timer.due():  # the budget it records includes this iteration up to the save
                    self.save_checkpoint(optimizer, self.elapsed + time.monotonic() - tick)
            # the budget is wall time: the step, its validation and its checkpoint (rank 0's, for every rank)
            now = time.monotonic()
            self.elapsed += slowest(now - tick, self.device)
            tick = now
        progress.close()
        if self.rank == 0 and optimizer is not None:
            self.save_checkpoint(optimizer, self.elapsed)
