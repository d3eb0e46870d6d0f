"""Fine-tune (or, for ``tiny``, train) the kl-f8 autoencoder on the normal training images.

``python -m training.finetune_autoencoder --preset tiny|sd15 --data PATH --out RUN_DIR``

The reference (``finetune_autoencoder.py``, ``LPIPSWithDiscriminator`` with the GAN never switched on):
``nll = sum((|x - x'| + LPIPS(x, x')) / exp(logvar) + logvar) / B`` with a learnable scalar ``logvar``, plus
``1e-6 * KL``; Adam(0.5, 0.9), lr = 4.5e-5 x batch size, effective batch 32, images ImageNet-normalised.
LPIPS needs VGG16 and LPIPS weights that cannot be downloaded here: it is used only when ``--lpips-weights``
points at local files, and the command says so when it runs without it.

The run folder's ``model.safetensors`` (from ``training.build_model``, or a previous run) is the start when it
exists; the result is written back into it, so ``training.train`` continues from the fine-tuned VAE.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from runtime.cli import run_cli
from runtime.errors import CheckpointError
from training.loop import Budget, Every, training_data
from training.models.diad import build_model
from training.models.presets import PRESETS
from training.run_folder import RunFolder, TrainingState, load_state, save_state

CHECKPOINT = "vae_last.safetensors"


@dataclass
class AutoencoderTrainConfig:
    lr: float
    batch_size: int
    accumulate: int
    kl_weight: float
    minutes: float | None
    max_steps: int | None
    seed: int
    lpips: bool


def autoencoder_loss(
    autoencoder: torch.nn.Module, logvar: torch.Tensor, image: torch.Tensor, kl_weight: float, generator=None
) -> torch.Tensor:
    """The reference's L1 (+ LPIPS) negative log-likelihood with a learnable log-variance, plus ``kl_weight`` KL."""
    posterior = autoencoder.encode(image).latent_dist
    reconstruction = autoencoder.decode(posterior.sample(generator)).sample
    rec = (image - reconstruction).abs()
    nll = (rec / torch.exp(logvar) + logvar).sum() / image.shape[0]
    kl = posterior.kl().sum() / image.shape[0]
    return nll + kl_weight * kl


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model preset (default: tiny)")
    p.add_argument("--data", required=True, help="dataset folder (MVTec-AD, VisA or generic folder layout)")
    p.add_argument("--out", required=True, help="run folder (created if missing)")
    p.add_argument("--classes", default=None, help="comma-separated class filter (default: all classes)")
    p.add_argument("--batch-size", type=int, default=4, help="images per micro-batch (default: 4)")
    p.add_argument("--accumulate", type=int, default=8, help="micro-batches per optimiser step (default: 8)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 4.5e-5 x batch size)")
    p.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the KL term (default: 1e-6)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget, resumes included")
    p.add_argument("--max-steps", type=int, default=None, help="optimiser steps (reference: about 25,000)")
    p.add_argument("--lpips-weights", default=None, help="not available yet: LPIPS is off (see the module doc)")
    p.add_argument("--checkpoint-minutes", type=float, default=2.0, help="minutes between checkpoints (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--resume", action="store_true", help=f"continue from checkpoints/{CHECKPOINT}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    args = p.parse_args(argv)
    if args.minutes is None and args.max_steps is None:
        p.error("give a budget: --minutes and/or --max-steps")
    if args.lpips_weights:
        p.error("LPIPS is not wired in yet; run without --lpips-weights (L1 + KL, as the note it prints says)")
    return args


def finetune(args: argparse.Namespace) -> None:
    run = RunFolder(args.out)
    model_config, config = run.config_or_preset(args.preset)
    cfg = AutoencoderTrainConfig(
        lr=args.lr or 4.5e-5 * args.batch_size,
        batch_size=args.batch_size,
        accumulate=args.accumulate,
        kl_weight=args.kl_weight,
        minutes=args.minutes,
        max_steps=args.max_steps,
        seed=args.seed,
        lpips=False,
    )
    print("note: LPIPS is off (its VGG16 and LPIPS weights are not available locally); the loss is L1 + KL")
    torch.manual_seed(cfg.seed)
    model = build_model(model_config, device="cpu")
    run.load_weights_into(model)
    autoencoder = model.vae.autoencoder.to(args.device).train()
    autoencoder.requires_grad_(True)
    logvar = torch.zeros((), device=args.device, requires_grad=True)
    optimizer = torch.optim.Adam([*autoencoder.parameters(), logvar], lr=cfg.lr, betas=(0.5, 0.9))
    step, elapsed = 0, 0.0
    if args.resume:
        path = run.checkpoints / CHECKPOINT
        if not path.exists():
            raise CheckpointError(f"{path}: nothing to resume")
        state = load_state(path)
        autoencoder.load_state_dict({k[len("autoencoder.") :]: v for k, v in state.model.items() if k != "logvar"})
        with torch.no_grad():
            logvar.copy_(state.model["logvar"])
        optimizer.load_state_dict(state.optimizer)
        step, elapsed = int(state.meta["step"]), float(state.meta["elapsed"])
    run.create()
    config.update(model=model_config.to_dict(), autoencoder=asdict(cfg), data=str(args.data))
    run.write_config(config)

    def checkpoint() -> None:
        weights = {f"autoencoder.{k}": v for k, v in autoencoder.state_dict().items()} | {"logvar": logvar.detach()}
        meta = {"step": step, "elapsed": elapsed}
        save_state(run.checkpoints / CHECKPOINT, TrainingState(weights, optimizer.state_dict(), meta))

    data = training_data(args.data, args.classes, model_config.image_size, 0.0, cfg.batch_size, cfg.seed)
    batches = data.batches()
    budget = Budget(cfg.minutes, cfg.max_steps)
    generator = torch.Generator(args.device).manual_seed(cfg.seed + step)
    save_timer = Every(args.checkpoint_minutes)
    progress = tqdm(total=cfg.max_steps, initial=step, desc="autoencoder", unit="step")
    while not budget.finished(elapsed, step):
        tick = time.monotonic()
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(cfg.accumulate):
            loss = autoencoder_loss(autoencoder, logvar, next(batches).to(args.device), cfg.kl_weight, generator)
            (loss / cfg.accumulate).backward()
            total += float(loss.detach()) / cfg.accumulate
        optimizer.step()
        step += 1
        elapsed += time.monotonic() - tick
        progress.update(1)
        progress.set_postfix(loss=f"{total:.1f}")
        run.append_log(
            "autoencoder", {"step": step, "loss": total, "logvar": float(logvar), "elapsed_s": round(elapsed, 2)}
        )
        if save_timer.due():
            checkpoint()
    progress.close()
    checkpoint()
    autoencoder.requires_grad_(False)
    model.to("cpu")
    run.save_model(model)
    config["autoencoder_trained"] = {"steps": step, "minutes": round(elapsed / 60, 2)}
    run.write_config(config)
    print(f"autoencoder: {step} steps in {elapsed / 60:.1f} min; model: {run.model_path}")


def main(argv: Sequence[str] | None = None) -> int:
    finetune(parse_args(argv))
    return 0


if __name__ == "__main__":
    run_cli(main)
