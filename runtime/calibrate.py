"""``python -m runtime.calibrate --model MODEL_DIR --images GOOD_DIR``: decision thresholds for a model folder.

The thresholds go into ``manifest.json`` (:meth:`Manifest.set_thresholds`); the graphs are untouched and the raw
scores stay available. Then :class:`~runtime.detector.Detector` reports ``pred_score`` (0.5 at the image
threshold), ``pred_label``, ``anomaly_map`` and ``pred_mask`` (``anomaly_map >= 0.5``, 0.5 at the pixel threshold).

Rules (:mod:`runtime.threshold_rules`): the FPR rule on the normal images (image threshold at ``--fpr``, pixel
threshold at ``--pixel-fpr``; a :class:`CalibrationWarning` when too few images resolve the rate), the F1 rule on
labelled ``--validation`` images (:mod:`runtime.calibration_images` lists them and their masks), and with
``--per-class`` the FPR rule per class, the global thresholds kept beside them.

``Thresholds.method``: ``"fpr"`` (no validation), ``"f1"`` (both thresholds F1-optimal) or ``"f1-image"`` (image
threshold F1-optimal, pixel threshold by the FPR rule: validation defects without masks). ``details`` holds both
rules' values, the false-reject rates of the chosen thresholds on the calibration set and the warnings.
``image_min/max`` and ``pixel_min/max`` span the raw calibration and validation values
(:func:`runtime.scoring.normalize_to_threshold`).

Unreadable image (or mask) files, and those over the limits (``--max-pixels``, ``--max-side``, ``--max-file-mb``),
are skipped, named and counted. Fewer than :data:`runtime.threshold_rules.MIN_IMAGES` readable normal images, or
values that all come out equal, are refused (:class:`CalibrationError`): the manifest never gets a normalisation
without a span, under which ``pred_score`` could only be 0 or 1. Memory: all raw maps are held (float32, ``S x S``
per image).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.calibration_images import LabelledImage, ScoredSet, list_images, list_validation, score_images
from runtime.cli import add_backend_arguments, run_cli
from runtime.detector import Detector
from runtime.errors import CalibrationError, DatasetLayoutError
from runtime.limits import Limits
from runtime.manifest import MANIFEST, Thresholds
from runtime.schedule import plan_label
from runtime.threshold_rules import (
    MIN_IMAGES,
    check_rate,
    f1_stats,
    f1_threshold,
    fpr_rule,
    min_images,
    normalisation_span,
    per_class_thresholds,
    rejects,
)

DEFAULT_FPR = 0.01  # target image false-reject rate
DEFAULT_PIXEL_FPR = 0.001  # target share of normal pixels flagged
RATE_NAMES = {"image": "false-reject rate", "pixel": "normal pixels flagged"}


class CalibrationWarning(UserWarning):
    """The calibration ran but a result is weaker than asked (too few images, no masks, skipped files)."""


# -------------------------------------------------------------------------------------------------- calibrate


def _as_images(source: str | Path | Sequence[str | Path]) -> list[LabelledImage]:
    files = list_images(source) if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if not files:
        raise DatasetLayoutError("no calibration images given; expected normal image files")
    return [LabelledImage(path) for path in files]


def _validation_images(validation: str | Path | Sequence[LabelledImage] | None, masks: str | Path | None,
                       notes: list[str]) -> list[LabelledImage]:
    """The labelled validation images: a folder's (noting the unlabelled ones directly in it) or those given."""
    if isinstance(validation, (str, Path)):
        labelled, unlabelled = list_validation(validation, masks)
        if unlabelled:
            notes.append(f"{len(unlabelled)} image(s) directly in {validation} carry no label and were ignored")
        return labelled
    return [] if validation is None else list(validation)


def _score_normal_images(detector: Detector, good: list[LabelledImage], fpr: float, batch_size: int | None,
                         progress: bool) -> ScoredSet:
    """The calibration images scored; :class:`CalibrationError` with fewer than :data:`MIN_IMAGES` readable."""
    calib = score_images(detector, good, batch_size, progress=progress, desc="calibration")
    if len(calib.images) < MIN_IMAGES:
        needed = f" ({min_images(fpr)} to resolve a false-reject rate of {fpr:g})" if fpr > 0 else ""
        raise CalibrationError(
            f"{good[0].path}: {len(calib.images)} readable normal image(s) of {len(good)}; calibration needs at least "
            f"{MIN_IMAGES}{needed}"
        )
    return calib


def _f1_rule(
    detector: Detector,
    labelled: list[LabelledImage],
    where: str | Path,
    batch_size: int | None,
    progress: bool,
    notes: list[str],
) -> tuple[ScoredSet, float, float | None, dict[str, Any]]:
    """The F1 rule on the validation images: their scored set, the image threshold, the pixel threshold (None
    when the masks do not allow it: the FPR rule's stands) and the rule's counts for ``details``."""
    with_masks = all(image.mask is not None for image in labelled if image.label)
    val = score_images(detector, labelled, batch_size, with_masks, progress, desc="validation")
    labels = val.labels
    if labels.min() == labels.max():
        raise DatasetLayoutError(f"{where}: validation needs normal and defect images, the readable ones are all "
                                 f"{'defects' if labels[0] else 'normal'}")
    image, pixel = f1_threshold(val.scores, labels), None
    rule: dict[str, Any] = {
        "images": {"normal": int(np.sum(labels == 0)), "defect": int(np.sum(labels == 1))},
        "skipped": val.skipped,
        "image": f1_stats(val.scores, labels, image),
        "pixel": None,
    }
    if not with_masks:
        notes.append("not every validation defect has a mask: the pixel threshold comes from the FPR rule")
    elif not val.masks.any():
        notes.append("the validation masks mark no pixel at the model resolution: pixel threshold by the FPR rule")
    else:
        pixel = f1_threshold(val.maps, val.masks)
        rule["pixel"] = f1_stats(val.maps.ravel(), val.masks.ravel(), pixel)
    return val, image, pixel, rule


def calibrate(
    detector: Detector,
    good_images: str | Path | Sequence[str | Path],
    validation: str | Path | Sequence[LabelledImage] | None = None,
    fpr: float = DEFAULT_FPR,
    pixel_fpr: float = DEFAULT_PIXEL_FPR,
    batch_size: int | None = None,
    masks: str | Path | None = None,
    progress: bool = False,
    per_class: bool = False,
    classes: Mapping[Path, str] | None = None,
) -> Thresholds:
    """Thresholds for ``detector`` (see the module docstring for the rules); nothing is written.

    ``good_images``: a folder or glob of normal images, or their paths. ``validation``: a labelled folder (with
    ``masks``, an explicit mask folder) or :class:`LabelledImage` records; then the thresholds are F1-optimal.
    ``per_class``: also an image threshold per class (:func:`per_class_thresholds`; FPR rule only, so not with
    ``validation``), the class of each good image given by ``classes`` (its path -> class name) or its path.
    ``batch_size``: images read and run at once (default the manifest's ``max_batch``). Weak results raise
    :class:`CalibrationWarning` and are listed in ``details["warnings"]``.
    """
    check_rate(fpr)
    check_rate(pixel_fpr)
    if per_class and validation is not None:
        raise ValueError("per-class thresholds follow the FPR rule on normal images; give no validation images")
    good = _as_images(good_images)
    notes: list[str] = []
    labelled = _validation_images(validation, masks, notes)
    calib = _score_normal_images(detector, good, fpr, batch_size, progress)
    by_fpr = fpr_rule(calib, fpr, pixel_fpr, notes)
    image, pixel, method = by_fpr["image"]["threshold"], by_fpr["pixel"]["threshold"], "fpr"
    details: dict[str, Any] = {
        "plan": detector.plan.brief,
        "calibration": {"images": len(calib.images), "skipped": calib.skipped},
        "fpr_rule": by_fpr,
    }
    scored = [calib]
    if labelled:
        where = validation if isinstance(validation, (str, Path)) else "validation images"
        val, image, f1_pixel, details["f1_rule"] = _f1_rule(detector, labelled, where, batch_size, progress, notes)
        pixel, method = (pixel, "f1-image") if f1_pixel is None else (f1_pixel, "f1")
        scored.append(val)
    skipped = sum(len(s.skipped) for s in scored)
    if skipped:
        notes.append(f"{skipped} unreadable file(s) skipped")
    details["false_reject_rate"] = {
        "image": rejects(calib.scores, image) / calib.scores.size,
        "pixel": rejects(calib.maps, pixel) / calib.maps.size,
    }
    span = normalisation_span(scored, good[0].path)
    class_rules, scale = None, None
    if per_class:
        class_rules, scale, details["per_class"] = per_class_thresholds(calib, fpr, notes, classes)
    details["warnings"] = notes
    for note in notes:
        warnings.warn(note, CalibrationWarning, stacklevel=2)
    return Thresholds(
        image=image,
        pixel=pixel,
        image_min=span["image"][0],
        image_max=span["image"][1],
        pixel_min=span["pixel"][0],
        pixel_max=span["pixel"][1],
        method=method,
        details=details,
        classes=class_rules,
        class_scale=scale,
    )


# ----------------------------------------------------------------------------------------------------- report


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.3g}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def report(thresholds: Thresholds) -> str:
    """A short human-readable summary of a calibration's :class:`Thresholds`."""
    d = thresholds.details
    calib, rule, frr = d["calibration"], d["fpr_rule"], d["false_reject_rate"]
    header = (
        f"calibration: {calib['images']} normal images ({len(calib['skipped'])} unreadable skipped), "
        f"{plan_label(d['plan']['steps'], d['plan']['start_t'])}; method {thresholds.method}"
    )
    lines = [header]
    lines += [f"  skipped {reason}" for reason in calib["skipped"]]
    for kind in ("image", "pixel"):
        r = rule[kind]
        chosen = getattr(thresholds, kind)
        lines.append(
            f"{kind} threshold {chosen:.6g}: {RATE_NAMES[kind]} on the calibration set {_pct(frr[kind])} "
            f"(FPR rule {r['threshold']:.6g} for target {_pct(r['target'])}: {r['rejects']}/{r['values']} "
            f"{kind}s at or above, resolution {_pct(r['resolution'])})"
        )
    lines.append(f"normalisation: image [{thresholds.image_min:.6g}, {thresholds.image_max:.6g}], "
                 f"pixel [{thresholds.pixel_min:.6g}, {thresholds.pixel_max:.6g}]")
    for c in thresholds.classes or []:
        r = d["per_class"][c["name"]]
        lines.append(f"  class {c['name']}: image threshold {c['image']:.6g} ({r['rejects']}/{r['values']} at or "
                     f"above), normalisation [{c['image_min']:.6g}, {c['image_max']:.6g}], {r['recognised']}/"
                     f"{r['values']} recognised as {c['name']}")
    if "f1_rule" in d:
        f1 = d["f1_rule"]
        lines.append(f"validation: {f1['images']['normal']} normal + {f1['images']['defect']} defect images "
                     f"({len(f1['skipped'])} unreadable skipped)")
        lines += [f"  skipped {reason}" for reason in f1["skipped"]]
        for kind in ("image", "pixel"):
            s = f1[kind]
            if s is not None:
                lines.append(f"  {kind}: F1-optimal threshold {s['threshold']:.6g}, F1 {_num(s['f1'])}, precision "
                             f"{_num(s['precision'])}, recall {_num(s['recall'])}, AUROC {_num(s['auroc'])}")
    lines += [f"warning: {note}" for note in d["warnings"]]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.calibrate",
        description="Calibrate a model folder's image and pixel thresholds and write them into its manifest.json.",
    )
    parser.add_argument("--model", required=True, help="model folder (manifest.json + ONNX graphs)")
    parser.add_argument("--images", required=True, help="folder (or glob pattern) of normal calibration images")
    parser.add_argument("--fpr", type=float, default=DEFAULT_FPR,
                        help=f"target image false-reject rate (default {DEFAULT_FPR:g})")
    parser.add_argument("--pixel-fpr", type=float, default=DEFAULT_PIXEL_FPR,
                        help=f"target pixel false-positive rate ({DEFAULT_PIXEL_FPR:g})")
    parser.add_argument("--validation", help="labelled folder (good/ and <defect>/ subfolders): F1-optimal thresholds")
    parser.add_argument("--masks", help="mask folder for --validation (default: MVTec's ../ground_truth)")
    parser.add_argument("--per-class", action="store_true",
                        help="also an image threshold per class (the folder above train/ or test/, Data/ or good/); "
                             "frames are judged by the nearest class's threshold")
    add_backend_arguments(parser)
    parser.add_argument("--steps", type=int, help="DDIM steps to calibrate for (default: the manifest's; 0: VAE-only "
                        "plan (no diffusion))")
    parser.add_argument("--start-t", type=int, help="start timestep to calibrate for (default: the manifest's)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default the manifest's max_batch)")
    parser.add_argument("--dry-run", action="store_true", help="print the thresholds, leave the manifest unchanged")
    Limits.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, rate in (("--fpr", args.fpr), ("--pixel-fpr", args.pixel_fpr)):
        if not 0 <= rate < 1:
            parser.error(f"{flag} must be in [0, 1), got {rate}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.masks and not args.validation:
        parser.error("--masks needs --validation")
    if args.per_class and args.validation:
        parser.error("--per-class uses the FPR rule on normal images: give it no --validation")
    good = list_images(args.images)  # fail on a missing folder before loading the model
    with Detector(args.model, args.backend, args.device, args.steps, args.start_t, limits=Limits.from_args(args),
                  provider=args.provider) as detector, warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # the report lists them, and standard error
        thresholds = calibrate(detector, good, args.validation, args.fpr, args.pixel_fpr, args.batch_size,
                               args.masks, progress=True, per_class=args.per_class)
        print(report(thresholds))
        for note in thresholds.details["warnings"]:
            print(f"WARNING: {note}", file=sys.stderr)
        if args.dry_run:
            print(f"dry run: {detector.manifest.root / MANIFEST} left unchanged")
        else:
            detector.manifest.set_thresholds(thresholds)
            print(f"wrote the thresholds to {detector.manifest.root / MANIFEST}")
    return 0


if __name__ == "__main__":
    run_cli(main)
