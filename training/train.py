"""Train DiAD: ``python -m training.train --preset tiny|sd15 --data PATH --out RUN_DIR``.

Multi-class (one model for all classes), epsilon-MSE at t ~ U{0..999}, AdamW (reference: lr 1e-5, weight decay
0.01) on the trainable set ``sg`` or ``sg+decoder``. Two stages:

* ``unet``: only when the UNet is not pretrained (a run started with ``--init scratch``): the plain UNet learns
  to denoise the training images, standing in for SD's pretraining. Gets ``--unet-fraction`` of the budget;
  ``--data generic --unet-fraction 1`` is how the ``tiny`` base model's UNet was trained.
* ``sg``: the SG network is (re)initialised from the UNet encoder, as ``build_model`` does from SD-1.5, and
  DiAD trains as the reference does.

A new run starts from the preset's base model (``--init base``, :mod:`training.base_model`; ``tiny`` ships one,
``sd15`` starts from ``training.build_model``) or from random weights (``--init scratch``). Defaults of the
optimisation (learning rate, batch, schedule) are the preset's recipe (:data:`training.models.presets.RECIPES`).

The run folder gets ``config.json``, ``logs/train.csv`` (and TensorBoard events with ``--tensorboard``),
``checkpoints/last.safetensors`` (model, optimiser, RNG states, written atomically every
``--checkpoint-minutes``; ``--resume`` continues from it, the time budget included) and ``model.safetensors``
at the end. Validation: the epsilon-MSE at fixed timesteps and noise on held-out normal training images,
never on test images. Multi-GPU / multi-process: launch with ``torchrun`` (DDP; gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from runtime.cli import run_cli
from runtime.schedule import NUM_TRAIN_TIMESTEPS
from training.anomaly_synthesis import mask_patches, synthesize
from training.base_model import default_init, initialise
from training.loop import (
    Budget,
    TrainingLoop,
    add_budget_arguments,
    distributed_setup,
    parse_budgeted,
    run_parser,
    training_data,
)
from training.models.diad import DiAD, build_model
from training.models.presets import SCHEDULES, TRAINABLE_SETS, get_recipe
from training.run_folder import RunFolder

VALIDATION_TIMESTEPS = (50, 250, 500, 750, 950)


@dataclass
class TrainConfig:
    """Optimisation settings, recorded in ``config.json``."""

    lr: float
    weight_decay: float = 0.01
    batch_size: int = 4
    accumulate: int = 1
    schedule: str = "constant"
    precision: str = "fp32"
    minutes: float | None = None
    max_steps: int | None = None
    unet_fraction: float = 0.0
    unet_lr: float | None = None
    max_timestep: int = NUM_TRAIN_TIMESTEPS
    synthesis: float = 0.0
    masking: float = 0.0
    val_fraction: float = 0.1
    val_every: int = 100
    checkpoint_minutes: float = 2.0
    seed: int = 0


class Objective(nn.Module):
    """The loss as a module, so DDP can hook its forward. With ``synthesis`` > 0 (and a ``defects`` generator),
    that share of each batch gets a synthetic defect for the network to remove, with ``masking`` > 0 that share
    masked patches to fill (:mod:`training.anomaly_synthesis`)."""

    def __init__(
        self, model: DiAD, with_sg: bool, max_timestep: int, synthesis: float = 0.0,
        defects: torch.Generator | None = None, masking: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.with_sg = with_sg
        self.max_timestep = max_timestep
        self.synthesis, self.defects, self.masking = synthesis, defects, masking

    def forward(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        corrupted = None
        if self.synthesis > 0 and self.defects is not None:
            corrupted, _ = synthesize(image, self.defects, self.synthesis)
        if self.masking > 0 and self.defects is not None:
            corrupted, _ = mask_patches(image if corrupted is None else corrupted, self.defects, self.masking)
        return self.model.training_loss(
            image, generator, with_sg=self.with_sg, max_timestep=self.max_timestep, corrupted=corrupted
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = run_parser(__doc__.split("\n\n")[0], "run folder; an existing run's config.json and weights are used")
    p.add_argument("--trainable", choices=TRAINABLE_SETS, default=None, help="trainable set (default: preset's)")
    p.add_argument("--injection", choices=("mid+sff", "all"), default=None, help="SG residuals (default: preset's)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: the recipe's)")
    p.add_argument("--unet-lr", type=float, default=None, help="learning rate of the unet stage (default: --lr)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: the recipe's)")
    p.add_argument(
        "--max-timestep",
        type=int,
        default=None,
        help="the sg stage trains at t ~ U{0..N-1} (default: the recipe's; the reference: 1000)",
    )
    p.add_argument(
        "--synthesis",
        type=float,
        default=None,
        help="share of each batch given a synthetic defect to remove in the sg stage (default: the recipe's; "
        "the reference: 0)",
    )
    p.add_argument("--masking", type=float, default=0.0,
                   help="share of each batch with masked patches to fill in the sg stage (default: 0)")
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="learning-rate schedule (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="images per micro-batch and process (default: recipe)")
    p.add_argument("--accumulate", type=int, default=None, help="micro-batches per optimiser step (default: recipe)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast precision (default: fp32)")
    p.add_argument(
        "--unet-fraction",
        type=float,
        default=None,
        help="share of the budget for the unet stage (default: 0.4 when the run's UNet is not pretrained, else 0)",
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="normal training images held out (default: 0.1)")
    p.add_argument("--val-every", type=int, default=100, help="optimiser steps between validations (default: 100)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events to logs/")
    add_budget_arguments(p, "optimiser steps of the whole run (both stages)", "last.safetensors")
    return parse_budgeted(p, argv)


@torch.no_grad()
def validation_loss(model: DiAD, loader: DataLoader, with_sg: bool, device: torch.device) -> float:
    """epsilon-MSE at fixed timesteps with fixed noise: comparable from one validation to the next."""
    model.eval()
    total, count = 0.0, 0
    for i, image in enumerate(loader):
        image = image.to(device)
        for t in VALIDATION_TIMESTEPS:
            generator = torch.Generator(device).manual_seed(1000 * i + t)
            loss = model.training_loss(image, generator, with_sg=with_sg, timestep=t)
            total += float(loss) * len(image)
            count += len(image)
    model.train()
    return total / max(count, 1)


def optimizer_for(model: DiAD, stage: str, cfg: TrainConfig) -> torch.optim.Optimizer:
    model.set_trainable("unet" if stage == "unet" else model.config.trainable)
    lr = cfg.unet_lr or cfg.lr if stage == "unet" else cfg.lr
    return torch.optim.AdamW(model.trainable_parameters(), lr=lr, weight_decay=cfg.weight_decay)


def stage_at(progress: float, cfg: TrainConfig) -> str:
    """Which stage a run is in, from the share of its budget spent."""
    return "unet" if progress < cfg.unet_fraction else "sg"


def stage_progress(progress: float, cfg: TrainConfig) -> float:
    """How much of its own stage's share of the budget a run has spent (each stage runs its own schedule)."""
    if progress < cfg.unet_fraction:
        return progress / cfg.unet_fraction
    return (progress - cfg.unet_fraction) / max(1.0 - cfg.unet_fraction, 1e-9)


class DiADTraining(TrainingLoop):
    """DiAD's step: the epsilon-MSE of the current stage (``unet`` then ``sg``), DDP, bf16 autocast, validation."""

    def __init__(self, model: DiAD, cfg: TrainConfig, world: int, writer: Any = None, **loop: Any):
        super().__init__(**loop)
        self.model, self.cfg, self.world, self.writer = model, cfg, world, writer
        self.meta["stage"] = None
        self.stage: str | None = None
        self.current: torch.optim.Optimizer | None = None
        self.objective: nn.Module | None = None
        self.generators = {"noise": torch.Generator(self.device).manual_seed(cfg.seed * 1000 + self.rank)}
        if cfg.synthesis > 0 or cfg.masking > 0:  # drawn on the CPU: the defects are made there
            self.generators["defects"] = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank + 7)
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
        )

    def optimizer(self, progress: float) -> tuple[torch.optim.Optimizer, float]:
        want = stage_at(progress, self.cfg)
        if want != self.stage:
            if want == "sg" and self.meta["stage"] == "unet":
                self.model.sg.copy_encoder_from(self.model.unet)  # DiAD's init: SG = the (pretrained) UNet encoder
            self.current = optimizer_for(self.model, want, self.cfg)
            if self.saved_optimizer is not None and self.meta["stage"] == want:
                self.current.load_state_dict(self.saved_optimizer)
            self.saved_optimizer = None
            sg = want == "sg"
            self.objective = Objective(
                self.model, sg, self.cfg.max_timestep if sg else NUM_TRAIN_TIMESTEPS,
                self.cfg.synthesis if sg else 0.0, self.generators.get("defects"), self.cfg.masking if sg else 0.0,
            )
            if self.world > 1:
                self.objective = DistributedDataParallel(self.objective, find_unused_parameters=True)
            self.stage = self.meta["stage"] = want
        return self.current, (self.cfg.unet_lr or self.cfg.lr) if want == "unet" else self.cfg.lr

    def schedule_progress(self, progress: float) -> float:
        return stage_progress(progress, self.cfg)

    def micro_loss(self, batch: torch.Tensor, last: bool) -> torch.Tensor:
        sync = self.objective.no_sync() if self.world > 1 and not last else nullcontext()
        with sync, self.autocast:
            return self.objective(batch, self.generators["noise"])

    def weights(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights, strict=True)

    def log_row(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {**row, "stage": self.stage, "val_loss": ""}
        val = self.data.val_loader
        if val is not None and (self.step % self.cfg.val_every == 0 or self.budget.finished(self.elapsed, self.step)):
            row["val_loss"] = validation_loss(self.model, val, self.stage == "sg", self.device)
        if self.writer is not None:
            self.writer.add_scalar(f"loss/{self.stage}", row["loss"], self.step)
            if row["val_loss"] != "":
                self.writer.add_scalar(f"val_loss/{self.stage}", row["val_loss"], self.step)
        return row


def train(args: argparse.Namespace) -> DiAD:
    """Run the training described by the command-line ``args``; returns the trained model."""
    rank, world = distributed_setup()
    device = torch.device(
        f"cuda:{rank % torch.cuda.device_count()}" if args.device == "cuda" and world > 1 else args.device
    )
    run = RunFolder(args.out)
    model_config, config = run.config_or_preset(args.preset, args.image_size)
    model_config.trainable = args.trainable or model_config.trainable
    model_config.injection = args.injection or model_config.injection
    torch.manual_seed(args.seed)
    model = build_model(model_config, device="cpu")
    started = initialise(model, run, config, args.init or default_init(model_config.name))
    recipe = get_recipe(model_config.name).diad
    cfg = TrainConfig(
        lr=args.lr or recipe.lr,
        weight_decay=recipe.weight_decay if args.weight_decay is None else args.weight_decay,
        batch_size=args.batch_size or recipe.batch_size,
        accumulate=args.accumulate or recipe.accumulate,
        schedule=args.schedule or recipe.schedule,
        precision=args.precision,
        minutes=args.minutes,
        max_steps=args.max_steps,
        unet_lr=args.unet_lr or recipe.unet_lr,
        max_timestep=args.max_timestep or recipe.max_timestep,
        synthesis=recipe.synthesis if args.synthesis is None else args.synthesis,
        masking=args.masking,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        checkpoint_minutes=args.checkpoint_minutes,
        seed=args.seed,
        unet_fraction=(
            args.unet_fraction if args.unet_fraction is not None else 0.0 if config.get("unet_pretrained") else 0.4
        ),
    )
    model.to(device).train()
    writer = None
    if args.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.root / "logs"))
    loop = DiADTraining(
        model, cfg, world, writer, run=run,
        data=training_data(
            args.data, args.classes, model_config.image_size, cfg.val_fraction, cfg.batch_size, cfg.seed, rank, world
        ),
        budget=Budget(cfg.minutes, cfg.max_steps), accumulate=cfg.accumulate, schedule=cfg.schedule,
        checkpoint_minutes=cfg.checkpoint_minutes, device=device, rank=rank,
    )
    if args.resume:
        loop.resume()
    if rank == 0:
        run.create()
        config.update(model=model_config.to_dict(), train=asdict(cfg), data=str(args.data))
        config.setdefault("unet_pretrained", False)
        run.write_config(config)
        if not args.resume:
            print(started)
    loop.train("train", cfg.max_steps)
    if rank == 0:
        run.save_model(model)
        config["unet_pretrained"] = bool(config.get("unet_pretrained")) or cfg.unet_fraction > 0
        config["trained"] = {"steps": loop.step, "minutes": round(loop.elapsed / 60, 2)}
        run.write_config(config)
        print(f"trained {loop.step} steps in {loop.elapsed / 60:.1f} min; model: {run.model_path}")
    if writer:
        writer.close()
    return model


def main(argv: Sequence[str] | None = None) -> int:
    train(parse_args(argv))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    run_cli(main)
