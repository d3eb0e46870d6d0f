"""Fine-tune (or, for the ``tiny`` base model, train) the kl-f8 autoencoder on normal images.

``python -m training.finetune_autoencoder --preset tiny|sd15 --data PATH --out RUN_DIR --minutes M``

The reference (``finetune_autoencoder.py``, ``LPIPSWithDiscriminator`` with the GAN never switched on):
``nll = sum((|x - x'| + LPIPS(x, x')) / exp(logvar) + logvar) / B`` with a learnable scalar ``logvar``, plus
``1e-6 * KL``; Adam(0.5, 0.9), images ImageNet-normalised. LPIPS compares VGG16 features, whose weights cannot be
downloaded here; the perceptual term here compares the features the anomaly scorer compares (its pretrained
backbone, ``1 - cos`` averaged over its scales), so the autoencoder learns to keep exactly what the scorer looks
at. Defaults (learning rate, batch, crops, schedule, perceptual weight) are the preset's recipe
(:data:`training.models.presets.RECIPES`).

Where a run starts: its ``model.safetensors`` when it has one (from ``training.build_model``, or a previous run),
else the preset's base model (``--init base``; ``tiny`` ships one, :mod:`training.base_model`) or random weights
(``--init scratch``). The result is written back into ``model.safetensors``, so ``training.train`` continues from
the fine-tuned VAE. ``--data generic`` trains on endless generated images (the base model's pretraining).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from runtime.cli import run_cli
from training.base_model import default_init, initialise
from training.loop import (
    Budget,
    TrainingLoop,
    add_budget_arguments,
    parse_budgeted,
    random_crops,
    run_parser,
    training_data,
)
from training.models.diad import build_model
from training.models.presets import SCHEDULES, get_recipe
from training.models.scorer import FeatureScorer
from training.run_folder import RunFolder

CHECKPOINT = "vae_last.safetensors"


@dataclass
class AutoencoderTrainConfig:
    lr: float
    batch_size: int
    accumulate: int
    kl_weight: float
    perceptual_weight: float
    crop: int | None
    schedule: str
    minutes: float | None
    max_steps: int | None
    seed: int


def perceptual_distance(scorer: FeatureScorer, image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per image ``(B,)``: the scorer's ``1 - cos`` feature distance, averaged over positions and scales."""
    return torch.stack([c.mean(dim=(1, 2)) for c in scorer.cos_maps(image, reconstruction)]).mean(dim=0)


def autoencoder_loss(
    autoencoder: torch.nn.Module,
    logvar: torch.Tensor,
    image: torch.Tensor,
    kl_weight: float,
    scorer: FeatureScorer | None = None,
    perceptual_weight: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The reference's L1 + perceptual negative log-likelihood with a learnable log-variance, plus ``kl_weight`` KL."""
    posterior = autoencoder.encode(image).latent_dist
    reconstruction = autoencoder.decode(posterior.sample(generator)).sample
    rec = (image - reconstruction).abs()
    if scorer is not None and perceptual_weight:
        rec = rec + perceptual_weight * perceptual_distance(scorer, image, reconstruction).view(-1, 1, 1, 1)
    nll = (rec / torch.exp(logvar) + logvar).sum() / image.shape[0]
    kl = posterior.kl().sum() / image.shape[0]
    return nll + kl_weight * kl


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = run_parser(__doc__.split("\n\n")[0], "run folder (created if missing)")
    p.add_argument("--batch-size", type=int, default=None, help="images per micro-batch (default: the recipe's)")
    p.add_argument("--accumulate", type=int, default=None, help="micro-batches per optimiser step (default: recipe)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the recipe's)")
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="learning-rate schedule (default: recipe)")
    p.add_argument("--crop", type=int, default=None, help="random square crops of this side (default: recipe; 0: none)")
    p.add_argument("--kl-weight", type=float, default=None, help="weight of the KL term (default: 1e-6)")
    p.add_argument("--perceptual-weight", type=float, default=None, help="weight of the feature term (default: recipe)")
    add_budget_arguments(p, "optimiser steps (reference: about 25,000)", CHECKPOINT)
    return parse_budgeted(p, argv)


class AutoencoderTraining(TrainingLoop):
    """The autoencoder's step: L1 + perceptual + KL on random crops; its checkpoint holds the VAE and logvar."""

    log_name = "autoencoder"
    checkpoint_name = CHECKPOINT

    def __init__(self, autoencoder: torch.nn.Module, scorer: FeatureScorer | None, cfg: AutoencoderTrainConfig,
                 **loop: Any):
        super().__init__(**loop)
        self.autoencoder, self.scorer, self.cfg = autoencoder, scorer, cfg
        self.logvar = torch.zeros((), device=self.device, requires_grad=True)
        self.adam = torch.optim.Adam([*autoencoder.parameters(), self.logvar], lr=cfg.lr, betas=(0.5, 0.9))
        self.generators = {
            "posterior": torch.Generator(self.device).manual_seed(cfg.seed),
            "crops": torch.Generator().manual_seed(cfg.seed),
        }

    def optimizer(self, progress: float) -> tuple[torch.optim.Optimizer, float]:
        if self.saved_optimizer is not None:
            self.adam.load_state_dict(self.saved_optimizer)
            self.saved_optimizer = None
        return self.adam, self.cfg.lr

    def micro_loss(self, batch: torch.Tensor, last: bool) -> torch.Tensor:
        image = random_crops(batch, self.cfg.crop, self.generators["crops"])
        return autoencoder_loss(self.autoencoder, self.logvar, image, self.cfg.kl_weight, self.scorer,
                                self.cfg.perceptual_weight, self.generators["posterior"])

    def weights(self) -> dict[str, torch.Tensor]:
        return {f"autoencoder.{k}": v for k, v in self.autoencoder.state_dict().items()} | {"logvar": self.logvar}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.autoencoder.load_state_dict({k[len("autoencoder.") :]: v for k, v in weights.items() if k != "logvar"})
        with torch.no_grad():
            self.logvar.copy_(weights["logvar"])

    def log_row(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "logvar": float(self.logvar.detach())}


def finetune(args: argparse.Namespace) -> None:
    run = RunFolder(args.out)
    model_config, config = run.config_or_preset(args.preset, args.image_size)
    recipe = get_recipe(model_config.name).autoencoder
    cfg = AutoencoderTrainConfig(
        lr=args.lr or recipe.lr,
        batch_size=args.batch_size or recipe.batch_size,
        accumulate=args.accumulate or recipe.accumulate,
        kl_weight=recipe.kl_weight if args.kl_weight is None else args.kl_weight,
        perceptual_weight=recipe.perceptual_weight if args.perceptual_weight is None else args.perceptual_weight,
        crop=recipe.crop if args.crop is None else (args.crop or None),
        schedule=args.schedule or recipe.schedule,
        minutes=args.minutes,
        max_steps=args.max_steps,
        seed=args.seed,
    )
    torch.manual_seed(cfg.seed)
    model = build_model(model_config, device="cpu")
    print(initialise(model, run, config, args.init or default_init(model_config.name)))
    scorer = None
    if cfg.perceptual_weight:
        scorer = FeatureScorer.from_config(model_config.scorer, model_config.image_size).to(args.device)
        print(f"perceptual term: {model_config.scorer.backbone} features, weights {scorer.weights}")
    autoencoder = model.vae.autoencoder.to(args.device).train()
    autoencoder.requires_grad_(True)
    device = torch.device(args.device)
    loop = AutoencoderTraining(
        autoencoder, scorer, cfg, run=run,
        data=training_data(args.data, args.classes, model_config.image_size, 0.0, cfg.batch_size, cfg.seed),
        budget=Budget(cfg.minutes, cfg.max_steps), accumulate=cfg.accumulate, schedule=cfg.schedule,
        checkpoint_minutes=args.checkpoint_minutes, device=device,
    )
    if args.resume:
        loop.resume()
    run.create()
    config.update(model=model_config.to_dict(), autoencoder=asdict(cfg), data=str(args.data))
    run.write_config(config)
    loop.train("autoencoder", cfg.max_steps)
    autoencoder.requires_grad_(False)
    model.to("cpu")
    run.save_model(model)
    config["autoencoder_trained"] = {"steps": loop.step, "minutes": round(loop.elapsed / 60, 2)}
    run.write_config(config)
    print(f"autoencoder: {loop.step} steps in {loop.elapsed / 60:.1f} min; model: {run.model_path}")


def main(argv: Sequence[str] | None = None) -> int:
    finetune(parse_args(argv))
    return 0


if __name__ == "__main__":
    run_cli(main)
