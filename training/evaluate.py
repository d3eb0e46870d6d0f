"""Evaluate a trained run on the test split: ``python -m training.evaluate --run RUN_DIR --data PATH``.

Two methods are scored by the same feature scorer, so every table shows what diffusion adds:

* ``diad``: the DDIM reconstruction (encode, noise to ``start_t`` with each of the config's fixed seeded noise
  draws, ``steps`` DDIM steps steered by the SG network, average the draws' sample latents, decode);
* ``vae``: the VAE-only reconstruction ``decode(encode_mean(x))``, decoded from the same latent, no diffusion.

Every image gets the same noise, so an image always gets the same score, batched or not. Metrics are
``runtime.metrics.per_class`` (per class, then the mean over classes). The scorer compares the image with each
reconstruction by ``1 - cos`` or, when the run's scorer config (the ``tiny`` preset) or ``--statistics`` asks for
it, by the distance from normal statistics fitted on the training images for each method's reconstructions
(:mod:`training.statistics`; fitted once and kept in the run folder).

Where results go: with the run's own settings (start timestep, DDIM steps, SG injection, noise draws from
``config.json``) into the run folder itself; with any of them overridden into ``RUN_DIR/evaluations/<tag>/`` (e.g.
``steps2_t500_injection-all``), so a quick experiment never replaces the default results. Each of these folders
gets ``metrics.json`` (settings, dataset, timings and both methods' rows), ``metrics.csv`` (one row per
method x class), ``metrics.md`` (the tables), ``scores.csv`` (per image), ``images/score_histogram.png`` and
``images/eval/<class>_<defect>_<stem>.png`` (input | VAE reconstruction | anomaly map | diffusion sample |
overlay with the ground-truth contour, one heatmap range for all pictures). An evaluation first removes the
previous one's files from its folder, so old and new results are never mixed; ``--classes`` and ``--limit``
do not change the folder (they are recorded in ``metrics.json``).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from runtime.cli import run_cli
from runtime.errors import CheckpointError, DatasetLayoutError
from runtime.files import GOOD
from runtime.metrics import COLUMNS, json_safe, per_class, to_markdown
from runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD, denormalize
from runtime.schedule import ddim_plan
from runtime.sequence import STAGES, WallClock
from runtime.visualize import grid, heatmap, label, overlay, write_rgb
from training.data import AnomalyDataset, Sample, load_index
from training.models.backbones import RANDOM
from training.models.diad import DiAD
from training.models.presets import INJECTIONS, ModelConfig
from training.models.normal_statistics import NormalStatistics, StatisticsSettings
from training.models.scorer import FeatureScorer, seeded_scorer
from training.run_folder import RunFolder, atomic_write_text
from training.statistics import VAE_PLAN, add_statistics_arguments, chosen_statistics, ensure, plan_name, settings_of

METHODS = ("diad", "vae")
DESCRIPTIONS = {
    "diad": "diffusion reconstruction (DDIM sample, decoded)",
    "vae": "VAE reconstruction decode(encode_mean(x)), no diffusion",
}
OUTPUTS = ("metrics.json", "metrics.csv", "metrics.md", "scores.csv", "images/score_histogram.png", "images/eval")
HEATMAP_PERCENTILE = 99.9


@dataclass(frozen=True)
class Settings:
    """What fixes the reconstructions: recorded with the results."""

    steps: int
    start_t: int
    injection: str
    noise_seed: int
    draws: int = 1
    statistics: str = "none"  # the scorer's: "none" (1 - cos) or "<kind>-<scope>-<channels>"

    @classmethod
    def of(
        cls, config: ModelConfig, steps: int | None = None, start_t: int | None = None, injection: str | None = None,
        draws: int | None = None, statistics: StatisticsSettings | None | str = "config",
    ) -> Settings:
        """The config's inference settings with the given overrides; an impossible DDIM plan is a ValueError.
        ``statistics``: the scorer's normal statistics, None for ``1 - cos``, default the config's."""
        inference = config.inference
        chosen = settings_of(config.scorer) if statistics == "config" else statistics
        settings = cls(
            inference.steps if steps is None else steps,
            inference.start_t if start_t is None else start_t,
            config.injection if injection is None else injection,
            inference.noise_seed,
            inference.draws if draws is None else draws,
            "none" if chosen is None else f"{chosen.kind}-{chosen.scope}-{chosen.channels}",
        )
        if settings.injection not in INJECTIONS:
            raise ValueError(f"injection {settings.injection!r}: expected one of {INJECTIONS}")
        if settings.draws < 1:
            raise ValueError(f"draws must be at least 1, got {settings.draws}")
        ddim_plan(settings.steps, settings.start_t)
        return settings

    def tag(self, default: Settings) -> str:
        """``""`` for the default settings, else the overridden ones, e.g. ``steps2_t500_injection-all_draws4``."""
        parts = [
            f"steps{self.steps}" if self.steps != default.steps else "",
            f"t{self.start_t}" if self.start_t != default.start_t else "",
            f"injection-{self.injection}" if self.injection != default.injection else "",
            f"draws{self.draws}" if self.draws != default.draws else "",
            f"statistics-{self.statistics}" if self.statistics != default.statistics else "",
        ]
        return "_".join(p for p in parts if p)


@dataclass
class EvaluationResult:
    """Per-image outputs of :func:`evaluate`, in the order of ``samples``.

    ``scores[method]`` ``(N,)`` and ``maps[method]`` ``(N, S, S)`` float32; ``psnr[method]`` ``(N,)`` dB of the
    reconstruction against the input (RGB in [0, 1]); ``masks`` ``(N, S, S)`` uint8 0/1;
    ``seconds_per_image`` per stage (see :func:`evaluate`); ``pictures[i]``: RGB uint8 ``input``, ``vae`` and
    ``diad`` reconstructions of the images asked for.
    """

    samples: list[Sample]
    settings: Settings
    labels: np.ndarray
    classes: np.ndarray
    masks: np.ndarray
    scores: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]
    psnr: dict[str, np.ndarray]
    seconds_per_image: dict[str, float]
    pictures: dict[int, dict[str, np.ndarray]]

    def metrics(self) -> dict[str, list[dict]]:
        """``runtime.metrics.per_class`` rows (classes, then ``mean``) of each method."""
        return {m: per_class(self.classes, self.scores[m], self.labels, self.maps[m], self.masks) for m in METHODS}

    def reconstruction(self) -> dict[str, dict[str, float]]:
        """How faithfully each method reconstructs the normal images: mean PSNR (dB) and mean feature distance
        (the anomaly map's mean, i.e. the scorer's ``1 - cos`` summed over scales)."""
        good = self.labels == 0
        return {
            m: {"psnr_db": float(self.psnr[m][good].mean()), "feature_distance": float(self.maps[m][good].mean())}
            for m in METHODS
        } if good.any() else {}


def set_injection(model: DiAD, injection: str) -> None:
    """Choose which SG residuals reach the UNet. The SG network reads this at every forward and holds the
    weights of every zero conv either way, so a built (and loaded) model can be switched in place."""
    if injection not in INJECTIONS:
        raise ValueError(f"injection {injection!r}: expected one of {INJECTIONS}")
    model.sg.injection = injection
    model.config.injection = injection


def _round_robin(groups: Sequence[Sequence[int]]) -> list[int]:
    """First of each group, then second of each, ..."""
    longest = max((len(g) for g in groups), default=0)
    return [g[k] for k in range(longest) for g in groups if k < len(g)]


def _by_class_and_defect(samples: Sequence[Sample]) -> dict[str, tuple[list[int], list[list[int]]]]:
    """Per class: the indices of its normal samples, and those of its defect samples grouped by defect type."""
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, s in enumerate(samples):
        groups[s.class_name][s.defect].append(i)
    return {c: (g.get(GOOD, []), [g[d] for d in sorted(g) if d != GOOD]) for c, g in sorted(groups.items())}


def limit_per_class(samples: Sequence[Sample], limit: int | None) -> list[Sample]:
    """At most ``limit`` samples per class, taken in turn from ``good`` and each defect type, so a limited set
    keeps both labels; the original order is kept."""
    if limit is None:
        return list(samples)
    groups = _by_class_and_defect(samples).values()
    keep = {i for good, defects in groups for i in _round_robin([good, *defects])[:limit]}
    return [s for i, s in enumerate(samples) if i in keep]


def choose_pictures(samples: Sequence[Sample], per_class: int) -> list[int]:
    """Indices of up to ``per_class`` images per class: defect images first (one type after another), then good."""
    groups = _by_class_and_defect(samples).values()
    return sorted(i for good, defects in groups for i in (_round_robin(defects) + good)[:per_class])


def evaluate(
    model: DiAD,
    scorer: FeatureScorer,
    samples: Sequence[Sample],
    steps: int | None = None,
    start_t: int | None = None,
    batch_size: int = 8,
    pictures: Collection[int] = (),
    workers: int = 0,
    progress: bool = True,
    draws: int | None = None,
    statistics: dict[str, NormalStatistics] | None = None,
) -> EvaluationResult:
    """Reconstruct and score ``samples`` with both methods (model and scorer on the same device).

    ``steps`` / ``start_t`` / ``draws`` (noise draws) default to the model's config; the injection is the model's
    (:func:`set_injection`). ``statistics``: per method, the normal statistics the scorer measures it against
    (default: ``1 - cos``).
    ``pictures``: indices whose input and reconstructions are kept for display (nothing else is kept but maps).
    ``seconds_per_image``: ``encode`` (latent, hint and noising), ``steps`` (DDIM loop and mean over draws),
    ``decode`` and ``score`` of the diffusion pipeline, their sum ``diad``, the baseline's extra ``vae_decode`` and ``vae_score``, and ``wall``
    (the whole loop, data loading and the first batch's warm-up included).
    """
    if not samples:
        raise ValueError("evaluate needs at least one sample")
    chosen = next(iter(statistics.values())).settings if statistics else None
    settings = Settings.of(model.config, steps, start_t, model.sg.injection, draws, chosen)
    device = next(model.parameters()).device
    size = model.config.image_size
    n = len(samples)
    scores = {m: np.empty(n, np.float32) for m in METHODS}
    maps = {m: np.empty((n, size, size), np.float32) for m in METHODS}
    psnr = {m: np.empty(n, np.float32) for m in METHODS}
    masks = np.empty((n, size, size), np.uint8)
    kept: dict[int, dict[str, np.ndarray]] = {}
    wanted = set(pictures)
    clock = WallClock(lambda: torch.cuda.synchronize(device) if device.type == "cuda" else None)
    loader = DataLoader(AnomalyDataset(samples, size), batch_size=batch_size, shuffle=False, num_workers=workers)
    model.eval()
    start = time.perf_counter()
    at = 0
    with torch.inference_mode(), tqdm(total=n, desc="evaluate", unit="img", disable=not progress) as bar:
        for batch in loader:
            image = batch["image"].to(device)
            out = model.reconstruct(image, settings.steps, settings.start_t, decode_vae_reconstruction=False,
                                    draws=settings.draws, clock=clock)  # encode, steps, decode
            with clock.stage("vae_decode"):
                recons = {"diad": out["reconstruction"], "vae": model.vae.decode(out["latent"])}
            for method, recon in recons.items():
                scorer.use_statistics(statistics[method] if statistics else None)
                with clock.stage("score" if method == "diad" else "vae_score"):
                    amap, score = scorer(image, recon)
                maps[method][at : at + len(image)] = amap.float().cpu().numpy()
                scores[method][at : at + len(image)] = score.float().cpu().numpy()
                psnr[method][at : at + len(image)] = peak_signal_to_noise(image, recon)
            masks[at : at + len(image)] = batch["mask"][:, 0].numpy() > 0
            for k in sorted(wanted.intersection(range(at, at + len(image)))):
                rgb = {"input": image[k - at], **{m: r[k - at] for m, r in recons.items()}}
                kept[k] = {name: denormalize(x.float().cpu().numpy()) for name, x in rgb.items()}
            at += len(image)
            bar.update(len(image))
    wall = time.perf_counter() - start

    seconds = {stage: clock.seconds[stage] for stage in STAGES}
    seconds["diad"] = sum(seconds.values())
    seconds.update(vae_decode=clock.seconds["vae_decode"], vae_score=clock.seconds["vae_score"], wall=wall)
    return EvaluationResult(
        samples=list(samples),
        settings=settings,
        labels=np.array([s.label for s in samples], np.int64),
        classes=np.array([s.class_name for s in samples]),
        masks=masks,
        scores=scores,
        maps=maps,
        psnr=psnr,
        seconds_per_image={name: value / n for name, value in seconds.items()},
        pictures=kept,
    )


def peak_signal_to_noise(image: torch.Tensor, reconstruction: torch.Tensor) -> np.ndarray:
    """Per image PSNR (dB) between two ImageNet-normalised batches, as RGB clipped to [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
    a, b = ((x.float() * std + mean).clamp(0, 1) for x in (image, reconstruction))
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (-10 * torch.log10(mse)).cpu().numpy()


# ------------------------------------------------------------------------------------------------------ files


def heatmap_range(maps: np.ndarray) -> float:
    """Upper end of the heatmap range shared by all pictures: the 99.9th percentile (every 4th pixel)."""
    return float(np.percentile(maps[:, ::4, ::4], HEATMAP_PERCENTILE))


def picture_strip(result: EvaluationResult, i: int, vmax: float) -> np.ndarray:
    """Input | VAE reconstruction | anomaly map | diffusion sample | overlay with the ground-truth contour."""
    rgb, amap, sample = result.pictures[i], result.maps["diad"][i], result.samples[i]
    tiles = [
        label(rgb["input"], f"{sample.class_name}/{sample.defect}"),
        label(rgb["vae"], "VAE reconstruction"),
        label(heatmap(amap, 0.0, vmax), f"anomaly map (0..{vmax:.3g})"),
        label(rgb["diad"], f"diffusion sample ({result.settings.steps} steps)"),
        label(
            overlay(rgb["input"], amap, 0.0, vmax, gt_mask=result.masks[i]),
            f"overlay + GT, score {result.scores['diad'][i]:.4f}",
        ),
    ]
    return grid(tiles, columns=len(tiles))


def picture_name(sample: Sample) -> str:
    return f"{sample.class_name}_{sample.defect}_{sample.image.stem}.png"


def write_histogram(path: Path, result: EvaluationResult) -> None:
    """Image scores of normal vs defect images: one row per class, one column per method."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state (renders with Agg)

    classes = sorted(set(result.classes))
    fig = Figure(figsize=(4 * len(METHODS), 2 * len(classes)), layout="constrained")
    axes = fig.subplots(len(classes), len(METHODS), squeeze=False)
    for row, name in enumerate(classes):
        in_class = result.classes == name
        for col, method in enumerate(METHODS):
            ax, scores = axes[row, col], result.scores[method][in_class]
            bins = np.histogram_bin_edges(scores, bins=20)
            for value, text, colour in ((0, "good", "tab:green"), (1, "defect", "tab:red")):
                ax.hist(scores[result.labels[in_class] == value], bins=bins, alpha=0.6, label=text, color=colour)
            ax.set_title(f"{name} - {method}", fontsize=9)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.supxlabel("image score")
    fig.savefig(path, dpi=80)


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def metrics_csv(metrics: dict[str, list[dict]]) -> str:
    """One row per method x class (``runtime.metrics.to_csv``'s columns after a ``method`` column)."""
    rows = [[m, row["class"], *(repr(float(row[k])) for k in COLUMNS)] for m in METHODS for row in metrics[m]]
    return _csv_text(["method", "class", *COLUMNS.values()], rows)


def scores_csv(result: EvaluationResult) -> str:
    rows = [
        [str(s.image), s.class_name, s.defect, s.label, *(repr(float(result.scores[m][i])) for m in METHODS)]
        for i, s in enumerate(result.samples)
    ]
    return _csv_text(["path", "class", "defect", "label", *METHODS], rows)


def comparison(metrics: dict[str, list[dict]]) -> str:
    """One line: mean I-AUROC and P-AUROC of diad vs vae."""
    diad, vae = metrics["diad"][-1], metrics["vae"][-1]
    parts = [f"{COLUMNS[k]} {diad[k]:.3f} vs {vae[k]:.3f} ({diad[k] - vae[k]:+.3f})" for k in ("i_auroc", "p_auroc")]
    return "diad vs vae (mean over classes): " + ", ".join(parts)


def _scorer_text(scorer: dict[str, Any]) -> str:
    weights = "RANDOM weights (scores meaningless)" if scorer["weights"] == RANDOM else f"weights {scorer['weights']}"
    return f"{scorer['backbone']} layers {scorer['layers']}, {weights}"


def _scoring_text(statistics: str) -> str:
    if statistics == "none":
        return "scored by 1 - cos"
    return f"scored against normal statistics {statistics} fitted on the training images"


def report(metrics: dict[str, list[dict]], info: dict[str, Any]) -> str:
    """The Markdown of ``metrics.md``: settings, one table per method, the comparison line."""
    st, data, sec = info["settings"], info["dataset"], info["seconds_per_image"]
    lines = [
        f"# Evaluation of {info['run']}",
        "",
        (
            f"DDIM {st['steps']} steps from t={st['start_t']}, injection {st['injection']}, noise seed "
            f"{st['noise_seed']}, {st.get('draws', 1)} noise draw(s) averaged; {data['images']} test images "
            f"({data['good']} good, {data['defect']} defect) of "
            f"{len(data['classes'])} classes from {data['path']} ({data['layout']}); scorer: "
            f"{_scorer_text(info['scorer'])}, {_scoring_text(st.get('statistics', 'none'))}; "
            f"{sec['diad']:.3f} s/image for diad, {sec['wall']:.3f} s/image in all."
        ),
    ]
    for method in METHODS:
        lines += ["", f"## {method}: {DESCRIPTIONS[method]}", "", to_markdown(metrics[method])]
    lines += ["", comparison(metrics)]
    if info.get("reconstruction"):
        rec = info["reconstruction"]
        lines += [
            "",
            f"Reconstruction of the {data['good']} normal test images: PSNR "
            + ", ".join(f"{m} {rec[m]['psnr_db']:.2f} dB" for m in METHODS)
            + "; mean feature distance "
            + ", ".join(f"{m} {rec[m]['feature_distance']:.4f}" for m in METHODS)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def write_evaluation(out: Path, result: EvaluationResult, info: dict[str, Any]) -> str:
    """Replace the evaluation files in ``out`` (see the module docstring); returns the Markdown report.

    The previous evaluation's files go first and ``metrics.json`` is written last, so an interrupted write
    never leaves old and new results side by side.
    """
    metrics = result.metrics()
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    pictures = out / "images" / "eval"
    pictures.mkdir(parents=True)
    vmax = heatmap_range(result.maps["diad"])
    for i in sorted(result.pictures):
        write_rgb(str(pictures / picture_name(result.samples[i])), picture_strip(result, i, vmax))
    write_histogram(out / "images" / "score_histogram.png", result)
    text = report(metrics, info)
    atomic_write_text(out / "scores.csv", scores_csv(result))
    atomic_write_text(out / "metrics.csv", metrics_csv(metrics))
    atomic_write_text(out / "metrics.md", text)
    record = {**info, "heatmap_range": [0.0, vmax], "metrics": metrics}
    atomic_write_text(out / "metrics.json", json.dumps(json_safe(record), indent=2) + "\n")
    return text


# -------------------------------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, help="run folder (config.json + model.safetensors)")
    p.add_argument("--data", required=True, help="dataset folder (MVTec-AD, VisA or generic layout); test split")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the run's config)")
    p.add_argument("--start-t", type=int, default=None, help="timestep to noise to (default: the run's config)")
    p.add_argument("--injection", choices=INJECTIONS, default=None, help="SG residuals (default: the run's config)")
    p.add_argument("--draws", type=int, default=None,
                   help="noise draws per image, their sample latents averaged (default: the run's config)")
    add_statistics_arguments(p)
    p.add_argument("--classes", default=None, help="comma-separated class filter (default: all classes)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    p.add_argument("--pictures", type=int, default=2, help="picture strips per class, defects first (default: 2)")
    p.add_argument("--limit", type=int, default=None, help="at most N test images per class (default: all)")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes (default: 0, in-process)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    run = RunFolder(args.run)
    if not run.root.is_dir():
        raise CheckpointError(f"{run.root}: run folder not found")
    config = run.model_config()
    try:
        wanted = chosen_statistics(config.scorer, args.statistics, args.statistics_scope)
        settings = Settings.of(config, args.steps, args.start_t, args.injection, args.draws, wanted)
    except ValueError as exc:
        parser.error(str(exc))
    index = load_index(args.data, args.classes.split(",") if args.classes else None)
    samples = limit_per_class(index.split("test"), args.limit)
    if not samples:
        raise DatasetLayoutError(f"{args.data}: no test images")

    device = torch.device(args.device)
    model = run.load_model(device)
    set_injection(model, settings.injection)
    scorer = seeded_scorer(config.scorer, config.image_size, settings.noise_seed).to(device)
    statistics = None
    if wanted is not None:
        fitted = ensure(run, model, scorer, args.data, wanted, settings.steps, settings.start_t, settings.draws)
        statistics = {"diad": fitted[plan_name(settings.steps, settings.start_t, settings.draws)],
                      "vae": fitted[VAE_PLAN]}
    result = evaluate(
        model, scorer, samples, settings.steps, settings.start_t, args.batch_size,
        choose_pictures(samples, args.pictures), args.workers, draws=settings.draws, statistics=statistics,
    )

    tag = settings.tag(Settings.of(config))
    out = run.root / "evaluations" / tag if tag else run.root
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "run": str(run.root),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "file": str(run.model_path),
            "modified": datetime.fromtimestamp(run.model_path.stat().st_mtime, timezone.utc).isoformat(),
            "preset": config.name,
        },
        "settings": {**asdict(settings), "tag": tag, "batch_size": args.batch_size, "device": str(device)},
        "dataset": {
            "path": str(index.root),
            "layout": index.layout,
            "classes": sorted(set(result.classes)),
            "limit_per_class": args.limit,
            "images": len(samples),
            "good": int((result.labels == 0).sum()),
            "defect": int((result.labels == 1).sum()),
        },
        "scorer": {
            "backbone": config.scorer.backbone,
            "layers": list(config.scorer.layers),
            "weights": scorer.weights,
        },
        "seconds_per_image": result.seconds_per_image,
        "reconstruction": result.reconstruction(),
    }
    print(write_evaluation(out, result, info), end="")
    print(f"wrote {out}/metrics.{{json,csv,md}}, scores.csv and images/ ({len(result.pictures)} pictures)")
    return 0


if __name__ == "__main__":
    run_cli(main)
