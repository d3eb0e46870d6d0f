"""``python -m training.fit --data D --out models/NAME [--minutes 20]``: your images to a calibrated model folder.

The stages, in order, each run by the stage command's own code (progress bars included) and cached in the run
folder (``--run``, default ``runs/NAME``), so that the same command run again after an interruption skips what is
done and resumes a killed training stage from its last checkpoint:

1. check: the dataset's report (``python -m training.data``); any error stops here, before any training. A share of
   each class's normal training images (``--calibration-fraction``) is held out for calibration and the split
   written to ``RUN/split.json``; every later stage reads the data through it, so no stage trains on them.
2. autoencoder (``training.finetune_autoencoder``) and 3. DiAD (``training.train``): the ``--minutes`` split as the
   recipe documents it (:data:`AUTOENCODER_SHARE`: 4 + 16 of 20 minutes, docs/accuracy.md).
4. the scorer's normal statistics (``training.statistics``);
5. evaluation (``training.evaluate``) where the test split has normal and defect images, else it says why no AUROC;
6. export (``python -m export``, run as a command: training does not import the export package) to ``--out``;
7. calibration (``runtime.calibrate``, per class, FPR rule at ``--fpr``) on the held-out images only.

It ends with what the model folder holds, its thresholds, the AUROC and the ``runtime.stream`` command to run next.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from runtime.calibrate import CalibrationWarning, calibrate, report
from runtime.cli import run_cli
from runtime.datasets import CALIBRATION, TEST, TRAIN, DatasetIndex
from runtime.datasets.split_file import NAME as SPLIT_FILE
from runtime.datasets.split_file import read, record
from runtime.detector import Detector
from runtime.errors import DatasetLayoutError, DatasetWarning, ModelFolderError
from runtime.manifest import MANIFEST, Manifest
from training import evaluate, finetune_autoencoder, statistics, train
from training.data.check import check
from training.finetune_autoencoder import CHECKPOINT as AUTOENCODER_CHECKPOINT
from training.models.presets import PRESETS
from training.run_folder import atomic_write_text

AUTOENCODER_SHARE = 0.2  # of the minutes: docs/accuracy.md, "Your own data: splitting a training budget"
DEFAULT_MINUTES = 20.0
DEFAULT_CALIBRATION_FRACTION = 0.2
DEFAULT_FPR = 0.05
DIAD_CHECKPOINT = "last.safetensors"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.fit", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="D",  help="dataset folder: plain folder (<class>/good/*.png, optional "
                   "<class>/<defect>/*.png and <class>/ground_truth/<defect>/), MVTec AD or VisA")
    p.add_argument("--out", required=True, metavar="MODEL",  help="model folder to write (new, empty, or a model folder: replaced)")
    p.add_argument("--minutes", type=float, metavar="M",  default=DEFAULT_MINUTES,
                   help=f"training minutes, autoencoder then DiAD (default {DEFAULT_MINUTES:g})")
    p.add_argument("--run", metavar="RUN",  help="run folder: checkpoints, split.json, evaluation (default runs/<name of --out>)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model preset (default tiny)")
    p.add_argument("--image-size", type=int, metavar="PX", help="image side (default: the preset's, tiny 128)")
    p.add_argument("--classes", metavar="A,B",  help="comma-separated classes to train on (default: all)")
    p.add_argument("--calibration-fraction", type=float, metavar="F",  default=DEFAULT_CALIBRATION_FRACTION,
                   help="share of each class's normal training images held out for calibration, never trained on "
                   f"(default {DEFAULT_CALIBRATION_FRACTION:g}; at least 2 images per class)")
    p.add_argument("--fpr", type=float, metavar="R",  default=DEFAULT_FPR,
                   help=f"target false-reject rate of normal images at the thresholds (default {DEFAULT_FPR:g})")
    p.add_argument("--seed", type=int, metavar="N",  default=0, help="seed of the held-out split and of training (default 0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device for training and evaluation (default cuda when available, else cpu)")
    for stage in ("autoencoder", "train"):  # tiny budgets for tests: optimiser steps instead of minutes
        p.add_argument(f"--max-steps-{stage}", type=int, help=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes must be positive, got {args.minutes}")
    if not 0 < args.calibration_fraction < 1:
        parser.error(f"--calibration-fraction must be in (0, 1), got {args.calibration_fraction}")
    if not 0 < args.fpr < 1:
        parser.error(f"--fpr must be in (0, 1), got {args.fpr}")
    args.out = Path(args.out)
    args.run = Path(args.run) if args.run else Path("runs") / args.out.name
    args.classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    return args


# ------------------------------------------------------------------------------------------------- markers


class Stages:
    """The stage markers (``.<stage>-done``, holding the stage's settings as JSON): a stage whose marker exists is
    done and skipped, unless an earlier stage ran in this call (then every later one runs again) or, for the
    stages after training, its settings changed. A training stage done with other settings is kept, and said so:
    nothing trained is thrown away; a new ``--run`` trains anew."""

    def __init__(self) -> None:
        self.ran = False
        self.number = 1
        self.seconds: dict[str, float] = {}
        self._current = ("check", time.monotonic())

    def begin(self, name: str, title: str) -> None:
        """Start stage ``name`` (the previous one ends), announced by ``title``."""
        self.end()
        self.number += 1
        self._current = (name, time.monotonic())
        print(f"\n[{self.number}/7] {title}", flush=True)

    def end(self) -> None:
        name, start = self._current
        self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - start
        self._current = (name, time.monotonic())

    def timings(self) -> str:
        """How long each stage took in this call, e.g. ``check 2 s, autoencoder 4.0 min, ...``."""
        self.end()
        parts = [f"{name} {_duration(s)}" for name, s in self.seconds.items()]
        return f"took {_duration(sum(self.seconds.values()))}: {', '.join(parts)}"

    def done(self, marker: Path, settings: dict[str, Any], keep_changed: bool = False) -> bool:
        if self.ran or not marker.is_file():
            return False
        text = marker.read_text().strip()
        recorded = json.loads(text) if text.startswith("{") else {}  # the Makefile's markers are empty
        if recorded == settings:
            print(f"done earlier ({marker}), skipped")
            return True
        if keep_changed:
            print(f"done earlier with other settings ({marker}: {recorded or 'none recorded'}); kept (to train "
                  "again, give another --run)")
        return keep_changed

    def finish(self, marker: Path, settings: dict[str, Any]) -> None:
        atomic_write_text(marker, json.dumps(settings, sort_keys=True) + "\n")
        self.ran = True


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _marker(folder: Path, stage: str) -> Path:
    return folder / f".{stage}-done"


# -------------------------------------------------------------------------------------------------- stages


def check_out(out: Path) -> None:
    """Refuse, before any training, a ``--out`` that the export would refuse at the end."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise ModelFolderError(f"{out}: exists and is not a model folder ({MANIFEST} missing) nor an empty folder; "
                               "expected a new path, an empty folder or a model folder to replace")


def prepare(args: argparse.Namespace) -> DatasetIndex:
    """Stage 1: the dataset's report, then the held-out split in ``RUN/split.json`` (an existing one is kept)."""
    print(f"[1/7] checking {args.data}", flush=True)
    split = args.run / SPLIT_FILE
    recorded = read(split) if split.is_file() else None
    if recorded is not None and Path(recorded["data"]) != Path(args.data).resolve():
        raise DatasetLayoutError(f"{split}: this run was fitted on {recorded['data']}, not {args.data}; give "
                                 "another --run (nothing was changed)")
    report_ = check(args.data if recorded is None else split, args.classes if recorded is None else None,
                    args.calibration_fraction, args.seed)
    print(report_.text())
    if report_.errors:
        raise DatasetLayoutError(f"{args.data}: {len(report_.errors)} error(s), listed above; nothing was trained")
    index = report_.index
    if recorded is not None:
        print(f"split: kept from {split} (calibration fraction {recorded['fraction']:g}, seed {recorded['seed']}, "
              f"classes {', '.join(index.classes)})")
        return index
    args.run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(split, json.dumps(record(index, args.classes, args.calibration_fraction, args.seed),
                                        indent=1) + "\n")
    print(f"split: {len(index.split(TRAIN))} training, {len(index.split(CALIBRATION))} calibration, "
          f"{len(index.split(TEST))} test images; written to {split}")
    return index


def train_stages(args: argparse.Namespace, stages: Stages) -> None:
    """Stages 2 and 3: the autoencoder, then DiAD, each resumed from its checkpoint when one is there."""
    data = str(args.run / SPLIT_FILE)
    common = ["--preset", args.preset, "--data", data, "--out", str(args.run), "--device", args.device,
              "--seed", str(args.seed)] + (["--image-size", str(args.image_size)] if args.image_size else [])
    parts = (("autoencoder", AUTOENCODER_SHARE, AUTOENCODER_CHECKPOINT, finetune_autoencoder.parse_args,
              finetune_autoencoder.finetune),
             ("train", 1 - AUTOENCODER_SHARE, DIAD_CHECKPOINT, train.parse_args, train.train))
    for stage, share, checkpoint, parse, run_stage in parts:
        settings = {"data": data, "preset": args.preset, "image_size": args.image_size,
                    "minutes": round(args.minutes * share, 4), "max_steps": getattr(args, f"max_steps_{stage}")}
        resume = (args.run / "checkpoints" / checkpoint).is_file()
        name = "autoencoder" if stage == "autoencoder" else "DiAD"
        stages.begin(name, f"{name}: {settings['minutes']:g} min of "
                     f"training{', resumed from its checkpoint' if resume else ''}")
        marker = _marker(args.run, stage)
        if stages.done(marker, settings, keep_changed=True):
            continue
        argv = common + ["--minutes", str(settings["minutes"])]
        argv += ["--max-steps", str(settings["max_steps"])] if settings["max_steps"] else []
        run_stage(parse(argv + (["--resume"] if resume else [])))
        stages.finish(marker, settings)


def statistics_and_evaluation(args: argparse.Namespace, index: DatasetIndex, stages: Stages) -> str | None:
    """Stages 4 and 5; returns why the AUROC is not measured, or None when it is."""
    data = str(args.run / SPLIT_FILE)
    settings = {"data": data}
    stages.begin("statistics", "the scorer's normal statistics")
    marker = _marker(args.run, "statistics")
    if not stages.done(marker, settings):
        statistics.main(["--run", str(args.run), "--data", data, "--device", args.device])
        stages.finish(marker, settings)
    stages.begin("evaluation", "evaluation on the test images")
    labels = {s.label for s in index.split(TEST)}
    if labels != {0, 1}:
        missing = "defect" if 1 not in labels else "normal test"
        why = (f"the dataset has no {missing} images, and the AUROC compares normal with defect images (plain "
               "folder: defect images in <class>/<defect>/*.png; every 5th image of good/ is a normal test image)")
        print(f"skipped: {why}")
        return why
    marker = _marker(args.run, "evaluate")
    if not stages.done(marker, settings):
        evaluate.main(["--run", str(args.run), "--data", data, "--device", args.device, "--pictures", "1"])
        stages.finish(marker, settings)
    return None


def export_model(args: argparse.Namespace, stages: Stages) -> None:
    """Stage 6: ``python -m export`` as a command (the export package builds on training, not the reverse)."""
    settings = {"run": str(args.run.resolve())}
    stages.begin("export", f"export to {args.out}")
    marker = _marker(args.out, "export")
    if stages.done(marker, settings) and (args.out / MANIFEST).is_file():
        return
    command = [sys.executable, "-m", "export", "--run", str(args.run), "--out", str(args.out),
               "--data", str(args.run / SPLIT_FILE)]
    print("python " + shlex.join(command[1:]), flush=True)
    if subprocess.run(command, check=False).returncode != 0:
        raise ModelFolderError(f"{args.out}: the export failed (its error is above); the trained run {args.run} is "
                               "kept: run the same command again")
    stages.finish(marker, settings)


def calibrate_model(args: argparse.Namespace, index: DatasetIndex, stages: Stages) -> None:
    """Stage 7: per-class thresholds from the held-out normal images (FPR rule), written into the manifest."""
    held = index.split(CALIBRATION)
    settings = {"fpr": args.fpr, "images": sorted(str(s.image) for s in held)}
    stages.begin("calibration", f"calibration on the {len(held)} held-out normal images")
    marker = args.out / ".calibrated"
    if stages.done(marker, settings):
        return
    with Detector(args.out) as detector, warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # the report lists them
        thresholds = calibrate(detector, [s.image for s in held], fpr=args.fpr, progress=True, per_class=True,
                               classes={s.image: s.class_name for s in held})
        print(report(thresholds))
        detector.manifest.set_thresholds(thresholds)
    stages.finish(marker, settings)


# ---------------------------------------------------------------------------------------------------- end


def summary(args: argparse.Namespace, index: DatasetIndex, no_auroc: str | None) -> str:
    """What the model folder holds, its thresholds, the AUROC (or why not) and the stream command to run next."""
    manifest = Manifest.load(args.out)
    files = sorted(p for p in args.out.iterdir() if p.is_file() and not p.name.startswith("."))
    size = sum(p.stat().st_size for p in files) / 2**20
    lines = [f"model folder {args.out} ({size:.1f} MiB): {', '.join(p.name for p in files)}"]
    t = manifest.thresholds
    held = t.details["calibration"]["images"]
    lines.append(f"thresholds (target false-reject rate {args.fpr:g}, from {held} held-out normal images): image "
                 f"{t.image:.6g} for any class, pixel {t.pixel:.6g}")
    lines += [f"  class {c['name']}: image {c['image']:.6g}" for c in t.classes or []]
    if no_auroc is None:
        mean = json.loads((args.run / "metrics.json").read_text())["metrics"]["diad"][-1]
        values = ", ".join(f"{name} {_metric(mean.get(key))}" for key, name in
                           (("i_auroc", "I-AUROC"), ("p_auroc", "P-AUROC"), ("aupro", "AU-PRO")))
        lines.append(f"{values} (mean over classes, test images): {args.run / 'metrics.md'}")
    else:
        lines.append(f"AUROC not measured: {no_auroc}")
    command = f"python -m runtime.stream --model {shlex.quote(str(args.out))} --source "
    lines += ["next, run the stream on your images (a folder, a glob, a video, a camera index or an rtsp:// URL):",
              f"  {command}{shlex.quote(str(_example_source(index)))}"]
    return "\n".join(lines)


def _metric(value: float | None) -> str:
    return "n/a (no masks)" if value is None else f"{value:.3f}"


def _example_source(index: DatasetIndex) -> Path:
    """A folder of the dataset's images to stream: the first defect folder, else the first test or held-out one."""
    test = index.split(TEST)
    defects = [s for s in test if s.label == 1]
    return (defects or test or index.split(CALIBRATION))[0].image.parent


def fit(args: argparse.Namespace) -> int:
    """Run the stages (see the module docstring); returns the exit status."""
    check_out(args.out)
    stages = Stages()
    index = prepare(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)  # the report above named them; the stages re-read the data
        train_stages(args, stages)
        no_auroc = statistics_and_evaluation(args, index, stages)
        export_model(args, stages)
        calibrate_model(args, index, stages)
    print()
    print(summary(args, index, no_auroc))
    print(stages.timings())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return fit(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to resume ({args.run} keeps what is done)", file=sys.stderr)
        raise


if __name__ == "__main__":
    run_cli(main)
