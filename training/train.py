"""Train DiAD: ``python -m training.train --preset tiny|sd15 --data PATH --out RUN_DIR``.

Multi-class (one model for all classes), epsilon-MSE at t ~ U{0..999}, AdamW (reference: lr 1e-5, weight decay
0.01) on the trainable set ``sg`` or ``sg+decoder``. Two stages:

* ``unet``: only when the UNet is not pretrained (``tiny`` from scratch has no SD-1.5 to start from): the plain
  UNet learns to denoise the training images, standing in for SD's pretraining. Gets ``--unet-fraction`` of
  the budget.
* ``sg``: the SG network is (re)initialised from the UNet encoder, as ``build_model`` does from SD-1.5, and
  DiAD trains as the reference does.

The run folder gets ``config.json``, ``logs/train.csv`` (and TensorBoard events with ``--tensorboard``),
``checkpoints/last.safetensors`` (model, optimiser, RNG states, written atomically every
``--checkpoint-minutes``; ``--resume`` continues from it, the time budget included) and ``model.safetensors``
at the end. Validation: the epsilon-MSE at fixed timesteps and noise on held-out normal training images,
never on test images. Multi-GPU / multi-process: launch with ``torchrun`` (DDP; gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from runtime.cli import run_cli
from runtime.errors import CheckpointError
from training.loop import Budget, Every, distributed_setup, slowest, training_data
from training.models.diad import DiAD, build_model
from training.models.presets import PRESETS, TRAINABLE_SETS
from training.run_folder import RunFolder, TrainingState, load_state, save_state

VALIDATION_TIMESTEPS = (50, 250, 500, 750, 950)


@dataclass
class TrainConfig:
    """Optimisation settings, recorded in ``config.json``."""

    lr: float
    weight_decay: float = 0.01
    batch_size: int = 4
    accumulate: int = 1
    precision: str = "fp32"
    minutes: float | None = None
    max_steps: int | None = None
    unet_fraction: float = 0.0
    unet_lr: float | None = None
    val_fraction: float = 0.1
    val_every: int = 100
    checkpoint_minutes: float = 2.0
    seed: int = 0


class Objective(nn.Module):
    """The loss as a module, so DDP can hook its forward."""

    def __init__(self, model: DiAD, with_sg: bool):
        super().__init__()
        self.model = model
        self.with_sg = with_sg

    def forward(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.model.training_loss(image, generator, with_sg=self.with_sg)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model preset (default: tiny)")
    p.add_argument("--data", required=True, help="dataset folder (MVTec-AD, VisA or generic folder layout)")
    p.add_argument("--out", required=True, help="run folder; an existing run's config.json and weights are used")
    p.add_argument("--classes", default=None, help="comma-separated class filter (default: all classes)")
    p.add_argument("--trainable", choices=TRAINABLE_SETS, default=None, help="trainable set (default: preset's)")
    p.add_argument("--injection", choices=("mid+sff", "all"), default=None, help="SG residuals (default: preset's)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: 1e-5 sd15, 1e-3 tiny)")
    p.add_argument("--unet-lr", type=float, default=None, help="learning rate of the unet stage (default: --lr)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    p.add_argument("--batch-size", type=int, default=4, help="images per micro-batch and process (default: 4)")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimiser step (default: 1)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast precision (default: fp32)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget of the whole run, resumes included")
    p.add_argument("--max-steps", type=int, default=None, help="optimiser steps of the whole run (both stages)")
    p.add_argument(
        "--unet-fraction",
        type=float,
        default=None,
        help="share of the budget for the unet stage (default: 0.4 when the run's UNet is not pretrained, else 0)",
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="normal training images held out (default: 0.1)")
    p.add_argument("--val-every", type=int, default=100, help="optimiser steps between validations (default: 100)")
    p.add_argument("--checkpoint-minutes", type=float, default=2.0, help="minutes between checkpoints (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoints/last.safetensors")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events to logs/")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    args = p.parse_args(argv)
    if args.minutes is None and args.max_steps is None:
        p.error("give a budget: --minutes and/or --max-steps")
    return args


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


def train(args: argparse.Namespace) -> DiAD:
    """Run the training described by the command-line ``args``; returns the trained model."""
    rank, world = distributed_setup()
    device = torch.device(
        f"cuda:{rank % torch.cuda.device_count()}" if args.device == "cuda" and world > 1 else args.device
    )
    run = RunFolder(args.out)
    model_config, config = run.config_or_preset(args.preset)
    model_config.trainable = args.trainable or model_config.trainable
    model_config.injection = args.injection or model_config.injection
    cfg = TrainConfig(
        lr=args.lr or (1e-5 if model_config.name == "sd15" else 1e-3),
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        accumulate=args.accumulate,
        precision=args.precision,
        minutes=args.minutes,
        max_steps=args.max_steps,
        unet_lr=args.unet_lr,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        checkpoint_minutes=args.checkpoint_minutes,
        seed=args.seed,
        unet_fraction=(
            args.unet_fraction if args.unet_fraction is not None else 0.0 if config.get("unet_pretrained") else 0.4
        ),
    )
    torch.manual_seed(cfg.seed)
    model = build_model(model_config, device="cpu")
    started_from = run.load_weights_into(model)
    state = None
    if args.resume:
        last = run.last_checkpoint()
        if last is None:
            raise CheckpointError(f"{run.checkpoints}: nothing to resume (no last.safetensors)")
        state = load_state(last)
        model.load_state_dict(state.model, strict=True)
    model.to(device).train()
    if rank == 0:
        run.create()
        config.update(model=model_config.to_dict(), train=asdict(cfg), data=str(args.data))
        config.setdefault("unet_pretrained", False)
        run.write_config(config)
        if not started_from and state is None:
            print(
                "note: starting from scratch (no model.safetensors in the run folder): the VAE stays untrained "
                "unless python -m training.finetune_autoencoder ran first"
            )

    data = training_data(
        args.data, args.classes, model_config.image_size, cfg.val_fraction, cfg.batch_size, cfg.seed, rank, world
    )
    meta = state.meta if state else {"step": 0, "elapsed": 0.0, "stage": None}
    step, elapsed = int(meta["step"]), float(meta["elapsed"])
    budget = Budget(cfg.minutes, cfg.max_steps)
    generator = torch.Generator(device).manual_seed(cfg.seed * 1000 + rank + step)
    writer = None
    if args.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.root / "logs"))

    def checkpoint() -> None:
        meta.update(step=step, elapsed=elapsed)
        path = run.checkpoints / "last.safetensors"
        save_state(path, TrainingState(model.state_dict(), optimizer.state_dict(), meta))

    stage, optimizer, objective = None, None, None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
    progress = tqdm(total=cfg.max_steps, initial=step, disable=rank != 0, desc="train", unit="step")
    batches = data.batches()
    save_timer = Every(cfg.checkpoint_minutes)
    while not budget.finished(elapsed, step):
        want = stage_at(budget.progress(elapsed, step), cfg)
        if want != stage:
            if want == "sg" and meta.get("stage") == "unet":
                model.sg.copy_encoder_from(model.unet)  # DiAD's init: SG = the (pretrained) UNet encoder
            optimizer = optimizer_for(model, want, cfg)
            if state is not None and state.optimizer is not None and meta.get("stage") == want:
                optimizer.load_state_dict(state.optimizer)
            objective = Objective(model, with_sg=want == "sg")
            if world > 1:
                objective = DistributedDataParallel(objective, find_unused_parameters=True)
            stage = meta["stage"] = want
        tick = time.monotonic()
        optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        for micro in range(cfg.accumulate):
            image = next(batches).to(device)
            sync = objective.no_sync() if world > 1 and micro < cfg.accumulate - 1 else nullcontext()
            with sync, autocast:
                loss = objective(image, generator) / cfg.accumulate
            loss.backward()
            loss_value += float(loss.detach())
        optimizer.step()
        step += 1
        elapsed += slowest(time.monotonic() - tick, device)
        progress.update(1)
        progress.set_postfix(stage=stage, loss=f"{loss_value:.4f}")
        row = {"step": step, "stage": stage, "loss": loss_value, "elapsed_s": round(elapsed, 2), "val_loss": ""}
        if data.val_loader is not None and (step % cfg.val_every == 0 or budget.finished(elapsed, step)):
            row["val_loss"] = validation_loss(model, data.val_loader, stage == "sg", device)
        if rank == 0:
            run.append_log("train", row)
            if writer:
                writer.add_scalar(f"loss/{stage}", loss_value, step)
                if row["val_loss"] != "":
                    writer.add_scalar(f"val_loss/{stage}", row["val_loss"], step)
            if save_timer.due():
                checkpoint()
    progress.close()
    if rank == 0:
        checkpoint()
        run.save_model(model)
        config["unet_pretrained"] = bool(config.get("unet_pretrained")) or cfg.unet_fraction > 0
        config["trained"] = {"steps": step, "minutes": round(elapsed / 60, 2)}
        run.write_config(config)
        print(f"trained {step} steps in {elapsed / 60:.1f} min; model: {run.model_path}")
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
