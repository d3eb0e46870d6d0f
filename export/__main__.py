"""``python -m export --run RUN_DIR --out MODEL_DIR``: a trained run -> a self-contained model folder."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from export.model_folder import EXPORT_PRECISIONS, check_options, check_out, export_plan, write_model_folder
from export.onnx import DEFAULT_OPSET
from export.parity import check_parity, format_parity, parity
from runtime.cli import run_cli
from runtime.errors import CheckpointError
from runtime.schedule import DDIMPlan
from training.models.diad import DiAD
from training.models.normal_statistics import NormalStatistics, StatisticsSettings
from training.models.scorer import FeatureScorer, seeded_scorer
from training.run_folder import RunFolder
from training.statistics import add_statistics_arguments, chosen_statistics, ensure, plan_name, statistics_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("--run", required=True, help="training run folder (config.json + model.safetensors)")
    parser.add_argument("--out", required=True,
                        help="model folder to write: a new path, an empty folder or a model folder (replaced)")
    parser.add_argument("--precision", choices=EXPORT_PRECISIONS, default="fp32",
                        help="graph precision (default fp32; INT8: python -m export.quantize on the FP32 folder)")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch the runtime may use (default 8)")
    parser.add_argument("--steps", type=int,
                        help="DDIM steps recorded as default (default: the run's config); 0: VAE-only plan (no "
                        "diffusion). Every graph is exported whatever the default, so --steps N of the runtime "
                        "switches back to DDIM")
    parser.add_argument("--start-t", type=int, help="start timestep recorded as default (default: the run's)")
    parser.add_argument("--draws", type=int,
                        help="noise draws per image, their sample latents averaged (default: the run's config)")
    add_statistics_arguments(parser)
    parser.add_argument("--data", help="dataset whose training images fit the scorer's normal statistics when the "
                        "run has none for this plan yet (default: none; they must have been fitted)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument(
        "--verify", action=argparse.BooleanOptionalAction, default=True,
        help="compare every graph with PyTorch on ONNX Runtime after the export and fail beyond the tolerance "
        "(export.parity.TOLERANCE; default on)",
    )
    return parser


def saved_statistics(
    run: RunFolder, model: DiAD, scorer: FeatureScorer, settings: StatisticsSettings | None, plan: DDIMPlan,
    draws: int | None, data: str | None,
) -> NormalStatistics | None:
    """The run's normal statistics ``settings`` for ``plan`` (None: ``1 - cos``), fitted on ``data``'s training
    images when the run has none yet; without ``data`` that is a :class:`CheckpointError` saying how to fit them."""
    if settings is None:
        return None
    draws = model.config.inference.draws if draws is None else draws
    name = plan_name(plan.steps, plan.start_t, draws)
    path = statistics_path(run, settings, name)
    if path.is_file():
        return NormalStatistics.load(path)
    if data is None:
        raise CheckpointError(
            f"{path}: missing; the scorer measures against normal statistics, fit them for this plan first: give "
            f"--data DATA, or python -m training.statistics --run {run.root} --data DATA --kind {settings.kind} "
            f"--scope {settings.scope} --steps {plan.steps} --start-t {plan.start_t} --draws {draws}"
        )
    return ensure(run, model, scorer, data, settings, plan.steps, plan.start_t, draws)[name]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_options(args.precision, args.max_batch, args.opset, args.draws)
    except ValueError as exc:
        parser.error(str(exc))
    check_out(args.out)
    run = RunFolder(args.run)
    if not run.root.is_dir():
        raise CheckpointError(f"{run.root}: run folder not found")
    if not run.model_path.is_file():
        raise CheckpointError(f"{run.model_path}: missing; train the run first (python -m training.train)")
    try:
        export_plan(run.model_config(), args.steps, args.start_t)
    except ValueError as exc:
        parser.error(f"--steps / --start-t: {exc}")
    model = run.load_model("cpu")
    config = model.config
    scorer = seeded_scorer(config.scorer, config.image_size, config.inference.noise_seed)
    wanted = chosen_statistics(config.scorer, args.statistics, args.statistics_scope)
    plan = export_plan(config, args.steps, args.start_t)
    scorer.use_statistics(saved_statistics(run, model, scorer, wanted, plan, args.draws, args.data))
    manifest, exported = write_model_folder(
        model, scorer, args.out, args.precision, args.max_batch, args.steps, args.start_t, args.opset,
        source=str(Path(args.run).resolve()), draws=args.draws,
    )

    print(f"model folder {manifest.root} ({args.precision}, opset {args.opset}, preset {config.name})")
    print("| component | files | MiB | export s |\n|:---|:---|---:|---:|")
    for e in exported:
        print(f"| {e.name} | {', '.join(f.name for f in e.files)} | {e.bytes / 2**20:.1f} | {e.seconds:.1f} |")
    plan = manifest.plan()
    if plan.vae_only:
        print(f"default plan {plan.label}: encode, decode the clean latent, score; every graph is exported, "
              "--steps N switches back to DDIM")
    else:
        print(f"default plan {plan.label}: {plan.timesteps.tolist()}, {manifest.draws} noise draw(s) averaged")
    if args.verify:
        results = parity(model, scorer, manifest)
        print(format_parity(results), end="")
        check_parity(results, args.precision)
        print(f"every graph matches PyTorch within the {args.precision} tolerance")
    return 0


if __name__ == "__main__":
    run_cli(main)
