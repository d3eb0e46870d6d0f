"""Fit the scorer's normal statistics: ``python -m training.statistics --run RUN_DIR --data PATH``.

One pass over the training images (normal only) reconstructs each with the run's inference plan (or ``--steps``,
``--start-t``, ``--draws``) and with the VAE alone, and fits a :class:`NormalStatistics` for each (the
feature residual depends on the reconstruction). They are saved as ``RUN_DIR/statistics/<settings>/<plan>.safetensors``
(``<plan>``: ``t24_steps2_draws2`` or ``vae``), where ``training.evaluate`` and ``export`` find them; the settings
(``--kind``, ``--scope``, ``--channels``) default to the run's ``scorer.statistics`` config.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from runtime.cli import run_cli
from runtime.errors import DatasetLayoutError
from training.data import AnomalyDataset, Sample, load_index
from training.models.diad import DiAD
from training.models.normal_statistics import KINDS, SCOPES, NormalStatistics, StatisticsFit, StatisticsSettings
from training.models.presets import ScorerConfig
from training.models.scorer import FeatureScorer, seeded_scorer
from training.run_folder import RunFolder

VAE_PLAN = "vae"


def plan_name(steps: int, start_t: int, draws: int) -> str:
    """The file stem of a plan's statistics: ``vae`` (no DDIM steps) or ``t{start_t}_steps{steps}_draws{draws}``."""
    return VAE_PLAN if steps == 0 else f"t{start_t}_steps{steps}_draws{draws}"


def settings_of(config: ScorerConfig) -> StatisticsSettings | None:
    """The statistics a scorer config asks for, or None for the reference's ``1 - cos``."""
    if config.statistics == "none":
        return None
    return StatisticsSettings(config.statistics, config.statistics_scope, config.statistics_channels)


def chosen_statistics(config: ScorerConfig, kind: str | None, scope: str | None) -> StatisticsSettings | None:
    """The statistics to score with: the scorer config's, with ``kind`` (``"none"``: 1 - cos) and ``scope``
    overriding it."""
    base = settings_of(config)
    kind = kind or (base.kind if base else "none")
    if kind == "none":
        return None
    defaults = base or StatisticsSettings()
    return StatisticsSettings(kind, scope or defaults.scope, defaults.channels)


def add_statistics_arguments(p: argparse.ArgumentParser) -> None:
    """``--statistics`` and ``--statistics-scope`` (evaluation and export)."""
    p.add_argument("--statistics", choices=("none", *KINDS), default=None,
                   help="score against normal statistics of the feature residual (residual) or of the image's "
                   "features and the residual (joint), fitted on the training images; none: 1 - cos (default: the "
                   "run's scorer config)")
    p.add_argument("--statistics-scope", choices=SCOPES, default=None,
                   help="one Gaussian per position, or one covariance shared by all positions (default: the run's)")


def statistics_path(run: RunFolder, settings: StatisticsSettings, plan: str) -> Path:
    return run.root / "statistics" / f"{settings.kind}-{settings.scope}-{settings.channels}" / f"{plan}.safetensors"


@torch.no_grad()
def fit(
    model: DiAD, scorer: FeatureScorer, samples: Sequence[Sample], settings: StatisticsSettings,
    steps: int, start_t: int, draws: int, batch_size: int = 8, progress: bool = True,
) -> dict[str, NormalStatistics]:
    """The statistics of the diffusion plan (``steps`` > 0) and of the VAE alone, keyed by :func:`plan_name`."""
    device = next(model.parameters()).device
    fits = {name: StatisticsFit(settings, scorer.widths()) for name in {plan_name(steps, start_t, draws), VAE_PLAN}}
    loader = DataLoader(AnomalyDataset(samples, model.config.image_size), batch_size=batch_size)
    model.eval()
    for batch in tqdm(loader, desc="normal statistics", unit="batch", disable=not progress):
        image = batch["image"].to(device)
        latent = model.vae.encode_mean(image)
        recons = {VAE_PLAN: model.vae.decode(latent)}
        if steps > 0:
            out = model.reconstruct(image, steps, start_t, decode_vae_reconstruction=False, draws=draws)
            recons[plan_name(steps, start_t, draws)] = out["reconstruction"]
        for name, recon in recons.items():
            fits[name].add([f.cpu() for f in scorer.backbone(scorer.backbone_input(image, recon))], len(image))
    plans = {name: {"steps": 0, "start_t": 0, "draws": 1} if name == VAE_PLAN else
             {"steps": steps, "start_t": start_t, "draws": draws} for name in fits}
    return {name: f.finish({**plans[name], "plan": name}) for name, f in fits.items()}


def ensure(
    run: RunFolder, model: DiAD, scorer: FeatureScorer, data: str | Path, settings: StatisticsSettings,
    steps: int, start_t: int, draws: int, refit: bool = False,
) -> dict[str, NormalStatistics]:
    """The run's saved statistics of the plan and the VAE, fitted on ``data``'s training images when missing."""
    names = {plan_name(steps, start_t, draws), VAE_PLAN}
    paths = {name: statistics_path(run, settings, name) for name in names}
    if not refit and all(p.is_file() for p in paths.values()):
        return {name: NormalStatistics.load(p) for name, p in paths.items()}
    samples = load_index(data).split("train")
    if not samples:
        raise DatasetLayoutError(f"{data}: no training images to fit the normal statistics on")
    fitted = fit(model, scorer, samples, settings, steps, start_t, draws)
    for name, statistics in fitted.items():
        statistics.info["data"] = str(data)
        statistics.save(paths[name])
    return fitted


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.statistics", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n")[1])
    p.add_argument("--run", required=True, help="run folder (config.json + model.safetensors)")
    p.add_argument("--data", required=True, help="dataset folder; its training images (normal) are fitted")
    p.add_argument("--kind", choices=KINDS, default=None, help="residual or joint (default: the run's, else joint)")
    p.add_argument("--scope", choices=SCOPES, default=None, help="position or shared (default: the run's)")
    p.add_argument("--channels", type=int, default=None, help="channels kept per layer and stream (default: run's)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the run's config)")
    p.add_argument("--start-t", type=int, default=None, help="noising timestep (default: the run's config)")
    p.add_argument("--draws", type=int, default=None, help="noise draws (default: the run's config)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    args = p.parse_args(argv)
    run = RunFolder(args.run)
    config = run.model_config()
    default_kind = "joint" if settings_of(config.scorer) is None else None  # a 1 - cos run: fit the default kind
    settings = chosen_statistics(config.scorer, args.kind or default_kind, args.scope)
    if args.channels:
        settings = replace(settings, channels=args.channels)
    inference = config.inference
    steps = inference.steps if args.steps is None else args.steps
    start_t = inference.start_t if args.start_t is None else args.start_t
    draws = inference.draws if args.draws is None else args.draws
    model = run.load_model(args.device)
    scorer = seeded_scorer(config.scorer, config.image_size, inference.noise_seed).to(args.device)
    fitted = ensure(run, model, scorer, args.data, settings, steps, start_t, draws, refit=True)
    for name, statistics in fitted.items():
        print(f"{statistics_path(run, settings, name)}: {statistics.info['images']} images, {asdict(settings)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
