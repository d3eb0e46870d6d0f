"""``python -m runtime.calibrate --model MODEL_DIR --images GOOD_DIR``: decision thresholds for a model folder.

The thresholds go into ``manifest.json`` (:meth:`Manifest.set_thresholds`); the graphs are untouched and the raw
scores stay available. Then :class:`~runtime.detector.Detector` reports ``pred_score`` (0.5 at the image
threshold), ``pred_label``, ``anomaly_map`` and ``pred_mask`` (``anomaly_map >= 0.5``, 0.5 at the pixel threshold).

Rules (on the model's raw float32 scores and maps; every threshold is a float32 value):

* FPR rule, normal images only. Of ``n`` calibration values, ``k = floor(r * n)`` may lie at or above the
  threshold for a target false-reject rate ``r`` (a 1e-9 tolerance keeps decimal rounding from losing one, so
  0.29 x 100 allows 29). The threshold is the smallest float32 strictly above the ``(k + 1)``-th largest value:
  ``t = nextafter(v_(k+1), +inf)``. It rejects exactly the values above ``v_(k+1)`` (at most ``k``, fewer with
  ties), so the realised rate on the calibration set is ``<= k / n <= r``, while any lower threshold rejects
  ``k + 1`` or more. The resolution is ``1 / n``: with ``n < 1 / r`` (e.g. under 100 images for 1 %) ``k = 0``
  and the threshold lies just above the largest normal value; a :class:`CalibrationWarning` says so. The image
  threshold uses the image scores (``--fpr``), the pixel threshold every pixel of the normal maps (``--pixel-fpr``).
* F1 rule, with labelled validation images: :func:`runtime.metrics.f1_max` over the validation image scores
  (``score >= threshold`` is a defect; the highest threshold among equally good ones), and over the validation
  pixels against the masks resized to the model resolution (:func:`runtime.preprocess.preprocess_mask`).

* Per class (``--per-class``, normal images only): the FPR rule and the normalisation span on each class's own
  images (:func:`runtime.datasets.class_of` names the class from the path), and each class's mean descriptor
  (:mod:`runtime.class_thresholds`); the detector judges a frame by the threshold of the nearest class. The
  global thresholds are kept beside them.

``Thresholds.method``: ``"fpr"`` (no validation), ``"f1"`` (both thresholds F1-optimal) or ``"f1-image"`` (image
threshold F1-optimal, pixel threshold by the FPR rule: validation defects without masks). ``details`` holds both
rules' values, the false-reject rates of the chosen thresholds on the calibration set and the warnings.
``image_min/max`` and ``pixel_min/max`` span the raw calibration and validation values
(:func:`runtime.scoring.normalize_to_threshold`).

Validation folder: searched recursively (hidden and ``ground_truth`` folders skipped); an image with a path
component ``good`` is normal, any other is a defect. Images directly inside the folder carry no label and are
ignored. A defect image's mask follows the datasets' one rule (:mod:`runtime.datasets.paths`: ``<stem>_mask.<ext>``,
else ``<stem>.<ext>``) in, with ``--masks M``, ``M/<folder>/`` then ``M/`` (``<folder>`` relative to the validation
folder), otherwise ``<class>/ground_truth/<defect>/`` (MVTec AD's ``<class>/test/<defect>/`` and the plain folder's
``<class>/<defect>/``). Either every defect image has a mask or none.

Unreadable image (or mask) files, and those over the limits (``--max-pixels``, ``--max-side``, ``--max-file-mb``),
are skipped, named and counted. Fewer than :data:`MIN_IMAGES` readable normal images, or values that all come out
equal, are refused (:class:`CalibrationError`): the manifest never gets a normalisation without a span, under which
``pred_score`` could only be 0 or 1. Memory: all raw maps are held (float32, ``S x S`` per image).
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime import metrics
from runtime.backends.base import BackendOutput
from runtime.class_thresholds import assign, class_centres, describe, spread
from runtime.cli import add_backend_arguments, run_cli
from runtime.datasets.paths import GROUND_TRUTH, MASK_NAMES, class_of, find_mask, ground_truth_folder
from runtime.detector import Detector
from runtime.errors import CalibrationError, DatasetLayoutError, ImageReadError, LimitError
from runtime.files import GOOD, IMAGE_EXTENSIONS, image_files, is_image_file, is_pattern, matching_files
from runtime.inflight import drain, make_room
from runtime.limits import Limits
from runtime.manifest import MANIFEST, Thresholds
from runtime.preprocess import preprocess_mask, read_image, read_mask
from runtime.schedule import plan_label

MIN_IMAGES = 2  # readable normal images: fewer leave nothing to normalise pred_score with
DEFAULT_FPR = 0.01  # target image false-reject rate
DEFAULT_PIXEL_FPR = 0.001  # target share of normal pixels flagged
RATE_NAMES = {"image": "false-reject rate", "pixel": "normal pixels flagged"}
VALIDATION_LAYOUT = (
    "DIR/.../good/*.png (normal) and DIR/.../<defect>/*.png (defects), e.g. an MVTec class's test folder or a plain "
    f"class folder, masks in <class>/ground_truth/<defect>/ or --masks, named {MASK_NAMES}"
)


class CalibrationWarning(UserWarning):
    """The calibration ran but a result is weaker than asked (too few images, no masks, skipped files)."""


@dataclass(frozen=True)
class LabelledImage:
    """One image file: ``label`` 0 (normal) or 1 (defect); ``mask``: a defect image's mask file (``> 0`` = defect)."""

    path: Path
    label: int = 0
    mask: Path | None = None


@dataclass
class ScoredSet:
    """Raw outputs of the readable images: scores ``(N,)``, maps ``(N, S, S)``, masks ``(N, S, S)`` 0/1 or None,
    class descriptors ``(N, D)`` (:func:`runtime.class_thresholds.describe`)."""

    images: list[LabelledImage]
    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray | None
    skipped: list[str]
    descriptors: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return np.array([image.label for image in self.images], np.int64)


# ------------------------------------------------------------------------------------------------- the rules


def check_rate(rate: float) -> None:
    """A target false-reject rate must be in ``[0, 1)``."""
    if not 0 <= rate < 1:
        raise ValueError(f"false-reject rate must be in [0, 1), got {rate}")


def allowed_rejects(n: int, rate: float) -> int:
    """``k = floor(rate * n)``: how many of ``n`` normal values may lie at or above an FPR-rule threshold."""
    check_rate(rate)
    return math.floor(rate * n + 1e-9)


def fpr_threshold(values: np.ndarray, rate: float) -> float:
    """The FPR rule: the smallest float32 ``t`` with at most ``floor(rate * n)`` of the ``n`` values ``>= t``."""
    check_rate(rate)
    flat = np.asarray(values, np.float32).ravel()
    if flat.size == 0:
        raise ValueError("the FPR rule needs at least one value")
    if np.isnan(flat).any():
        raise ValueError("values contain NaN")
    position = flat.size - 1 - allowed_rejects(flat.size, rate)  # ascending index of the (k + 1)-th largest value
    kth = np.partition(flat, position)[position]
    return float(np.nextafter(kth, np.float32(np.inf)))


def f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The F1 rule: :func:`runtime.metrics.f1_max`'s threshold, as float32 (NaN without defects)."""
    return float(np.float32(metrics.f1_max(np.asarray(scores, np.float32).ravel(), np.asarray(labels).ravel())[1]))


def rejects(values: np.ndarray, threshold: float) -> int:
    """How many values are ``>= threshold`` (flagged anomalous)."""
    return int(np.count_nonzero(np.asarray(values, np.float32) >= np.float32(threshold)))


def min_images(rate: float) -> int:
    """The fewest values for which the FPR rule resolves ``rate`` (``floor(rate * n) >= 1``)."""
    return math.ceil(1 / rate - 1e-9)


# ---------------------------------------------------------------------------------------------- listing files


def list_images(spec: str | Path) -> list[Path]:
    """One image file, the image files directly inside a folder, or those matching a glob pattern (``**``
    recursive), sorted.

    Raises :class:`DatasetLayoutError` naming ``spec`` when the file or folder is missing or holds no image file.
    """
    path, kinds = Path(spec), ", ".join(IMAGE_EXTENSIONS)
    if path.is_file():
        if not is_image_file(path):
            raise DatasetLayoutError(f"{path}: not an image file; expected {kinds}, a folder of them or a glob")
        return [path]
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise DatasetLayoutError(
                f"{path}: no image files ({kinds}) directly in this folder; expected the normal images there "
                f"(for subfolders use a glob pattern such as '{path}/**/*.png')"
            )
        return files
    if is_pattern(str(spec)):
        files = [p for p in matching_files(str(spec)) if is_image_file(p)]
        if not files:
            raise DatasetLayoutError(f"{spec}: glob pattern matches no image files ({kinds})")
        return files
    raise DatasetLayoutError(f"{path}: file or folder not found; expected normal images ({kinds}): a folder, a "
                             "glob or one file")


def mask_folders(image: Path, root: Path, masks: Path | None) -> list[Path]:
    """The folders where a defect image's mask may be, in order of preference (see the module docstring)."""
    if masks is None:
        return [ground_truth_folder(image)]
    return [masks / image.parent.relative_to(root), masks]


def list_validation(folder: str | Path, masks: str | Path | None = None) -> tuple[list[LabelledImage], list[Path]]:
    """Labelled images below ``folder`` with their masks, and the unlabelled images directly inside it.

    Raises :class:`DatasetLayoutError` when a folder is missing, a label is absent, or only some defect images
    (or, with ``masks``, none) have masks.
    """
    root = Path(folder)
    mask_root = None if masks is None else Path(masks)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: validation folder not found; expected {VALIDATION_LAYOUT}")
    if mask_root is not None and not mask_root.is_dir():
        raise DatasetLayoutError(f"{mask_root}: mask folder not found; expected <stem>_mask.png or <stem>.png files")
    images, unlabelled = [], []
    for path in sorted(p for p in root.rglob("*") if is_image_file(p)):
        parts = path.relative_to(root).parts[:-1]
        if GROUND_TRUTH in parts or any(part.startswith(".") for part in parts):
            continue
        if not parts:
            unlabelled.append(path)
            continue
        label = int(GOOD not in parts)
        found = None
        if label:
            found = next(filter(None, (find_mask(f, path.stem) for f in mask_folders(path, root, mask_root))), None)
        images.append(LabelledImage(path, label, found))
    n_good = sum(image.label == 0 for image in images)
    if n_good == 0 or n_good == len(images):
        raise DatasetLayoutError(
            f"{root}: validation needs normal and defect images, found {n_good} normal and "
            f"{len(images) - n_good} defect; expected {VALIDATION_LAYOUT}"
        )
    defects = [image for image in images if image.label]
    missing = [image for image in defects if image.mask is None]
    if missing and (len(missing) < len(defects) or mask_root is not None):
        first = missing[0].path
        looked = ", ".join(f"{f}/" for f in mask_folders(first, root, mask_root))
        raise DatasetLayoutError(
            f"{first}: defect image without a mask ({len(missing)} of {len(defects)}); looked in {looked} for "
            f"{MASK_NAMES}"
        )
    return images, unlabelled


# ---------------------------------------------------------------------------------------------------- scoring


class NoProgress:
    """Stands in for a tqdm bar."""

    def update(self, n: int) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over ``total`` images when asked for and tqdm is installed, else a silent stand-in."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return NoProgress()
        return tqdm(total=total, desc=desc, unit="img")
    return NoProgress()


def _read(image: LabelledImage, size: int, with_masks: bool, limits: Limits) -> tuple[np.ndarray, np.ndarray | None]:
    """The RGB image and (``with_masks``) its mask at the model resolution, zeros without a mask file."""
    frame = read_image(image.path, limits)
    if not with_masks:
        return frame, None
    if image.mask is None:
        return frame, np.zeros((size, size), np.uint8)
    return frame, preprocess_mask(read_mask(image.mask, limits), size)


def score_images(
    detector: Detector,
    images: Sequence[LabelledImage],
    batch_size: int | None = None,
    with_masks: bool = False,
    progress: bool = False,
    desc: str = "score",
) -> ScoredSet:
    """Raw scores and maps of ``images`` (and their masks at the model resolution: zeros for normal images).

    Unreadable images or masks, and those over the detector's limits, are skipped and listed;
    :class:`DatasetLayoutError` if none is readable. The next batch is read and pre-processed while the backend's
    pipeline slots compute the ones before it.
    """
    step = batch_size or detector.manifest.max_batch
    kept: list[LabelledImage] = []
    masks: list[np.ndarray] = []
    outputs: list[BackendOutput] = []
    descriptors: list[np.ndarray] = []
    skipped: list[str] = []
    bar = progress_bar(len(images), desc, progress)
    try:
        for start in range(0, len(images), step):
            frames = []
            for image in images[start : start + step]:
                try:
                    frame, mask = _read(image, detector.image_size, with_masks, detector.limits)
                except (ImageReadError, LimitError) as exc:
                    skipped.append(str(exc))
                    continue
                kept.append(image)
                frames.append(frame)
                if mask is not None:
                    masks.append(mask)
            if frames:
                make_room(detector, outputs.append)
                batch = detector.preprocess(frames)
                descriptors.append(describe(batch))
                detector.submit(batch)
            bar.update(len(images[start : start + step]))
        drain(detector, outputs.append)
    finally:
        bar.close()
    if not kept:
        where = images[0].path.parent if images else "(no files)"
        raise DatasetLayoutError(f"{where}: none of the {len(images)} image files could be read; first: {skipped[0]}")
    out = BackendOutput.concat(outputs)
    return ScoredSet(kept, np.asarray(out.score, np.float32), np.asarray(out.anomaly_map, np.float32),
                     np.stack(masks) if with_masks else None, skipped,
                     np.concatenate(descriptors))


# -------------------------------------------------------------------------------------------------- calibrate


def _f1_stats(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | None]:
    """F1, precision, recall at ``threshold`` and the AUROC (None where undefined)."""
    flagged = np.asarray(scores, np.float32) >= np.float32(threshold)
    positive = np.asarray(labels) > 0
    tp = int(np.count_nonzero(flagged & positive))
    n_flagged, n_positive = int(np.count_nonzero(flagged)), int(np.count_nonzero(positive))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        auroc = metrics.auroc(np.asarray(scores, np.float32), positive.astype(np.int64))
    return {
        "threshold": threshold,
        "f1": 2 * tp / (n_flagged + n_positive) if n_flagged + n_positive else None,
        "precision": tp / n_flagged if n_flagged else None,
        "recall": tp / n_positive if n_positive else None,
        "auroc": None if math.isnan(auroc) else auroc,
    }


def _fpr_stats(values: np.ndarray, rate: float, kind: str, notes: list[str]) -> dict[str, Any]:
    """The FPR rule on ``values`` with its counts; a note when ``rate`` is finer than ``1 / n``."""
    n = int(np.asarray(values).size)
    threshold = fpr_threshold(values, rate)
    if rate > 0 and allowed_rejects(n, rate) == 0:
        notes.append(
            f"{n} calibration {kind}s resolve false-reject rates only in steps of 1/{n} = {1 / n:.3g}; the target "
            f"{rate:g} needs at least {min_images(rate)}, so the {kind} threshold lies just above the highest "
            "normal value (no false rejects on the calibration set)"
        )
    return {"target": rate, "threshold": threshold, "values": n, "allowed": allowed_rejects(n, rate),
            "rejects": rejects(values, threshold), "resolution": 1 / n}


def per_class_thresholds(
    calib: ScoredSet, fpr: float, notes: list[str], classes: Mapping[Path, str] | None = None
) -> tuple[list[dict[str, Any]], list[float], dict[str, Any]]:
    """Each class's image threshold (FPR rule on its normal images), normalisation span and descriptor centre,
    the descriptors' spread, and per class the counts for ``details``. ``classes`` names each image's class
    (default: :func:`runtime.datasets.class_of` of its path)."""
    names = [classes[image.path] if classes else class_of(image.path) for image in calib.images]
    order = sorted(set(names))
    labels = np.array([order.index(name) for name in names])
    scale = spread(calib.descriptors, labels)
    centres = class_centres(calib.descriptors, labels)
    recognised = assign(calib.descriptors, centres, scale) == labels
    classes, details = [], {}
    for k, name in enumerate(order):
        values = calib.scores[labels == k]
        if values.size < MIN_IMAGES or not values.max() > values.min():
            raise CalibrationError(
                f"{calib.images[names.index(name)].path}: class {name!r} has {values.size} readable normal image(s) "
                f"scoring {values.min():.6g} to {values.max():.6g}; per-class thresholds need at least {MIN_IMAGES} "
                "per class with differing scores"
            )
        rule = _fpr_stats(values, fpr, f"{name} image", notes)
        classes.append({"name": name, "image": rule["threshold"], "image_min": float(values.min()),
                        "image_max": float(values.max()), "centre": centres[k].tolist()})
        details[name] = {**rule, "recognised": int(recognised[labels == k].sum())}
    if not recognised.all():
        notes.append(
            f"{int((~recognised).sum())} of {recognised.size} calibration images lie nearer another class's centre "
            "than their own: those classes look alike to the class descriptor, so some frames may be judged by "
            "another class's threshold"
        )
    return classes, scale.tolist(), details


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


def _fpr_rule(calib: ScoredSet, fpr: float, pixel_fpr: float, notes: list[str]) -> dict[str, dict[str, Any]]:
    """The FPR rule on the calibration images' scores (at ``fpr``) and pixels (at ``pixel_fpr``), with counts."""
    return {"image": _fpr_stats(calib.scores, fpr, "image", notes),
            "pixel": _fpr_stats(calib.maps, pixel_fpr, "pixel", notes)}


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
        "image": _f1_stats(val.scores, labels, image),
        "pixel": None,
    }
    if not with_masks:
        notes.append("not every validation defect has a mask: the pixel threshold comes from the FPR rule")
    elif not val.masks.any():
        notes.append("the validation masks mark no pixel at the model resolution: pixel threshold by the FPR rule")
    else:
        pixel = f1_threshold(val.maps, val.masks)
        rule["pixel"] = _f1_stats(val.maps.ravel(), val.masks.ravel(), pixel)
    return val, image, pixel, rule


def _normalisation_span(scored: Sequence[ScoredSet], first: Path) -> dict[str, tuple[float, float]]:
    """The lowest and highest image score and pixel value of ``scored`` (calibration set first);
    :class:`CalibrationError` naming ``first`` when they are equal."""
    span = {"image": (float(min(s.scores.min() for s in scored)), float(max(s.scores.max() for s in scored))),
            "pixel": (float(min(s.maps.min() for s in scored)), float(max(s.maps.max() for s in scored)))}
    for kind, (low, high) in span.items():
        if not high > low:
            raise CalibrationError(
                f"{first}: every {kind} value of the {len(scored[0].images)} calibration images is {low:.6g}, "
                "which leaves no span to normalise pred_score with (it could only be 0 or 1); calibrate with more "
                "varied normal images"
            )
    return span


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
    fpr_rule = _fpr_rule(calib, fpr, pixel_fpr, notes)
    image, pixel, method = fpr_rule["image"]["threshold"], fpr_rule["pixel"]["threshold"], "fpr"
    details: dict[str, Any] = {
        "plan": detector.plan.brief,
        "calibration": {"images": len(calib.images), "skipped": calib.skipped},
        "fpr_rule": fpr_rule,
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
    span = _normalisation_span(scored, good[0].path)
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
