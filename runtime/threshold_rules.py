"""The threshold rules of :mod:`runtime.calibrate`, on raw float32 scores and maps; every threshold is a float32 value.

* FPR rule, normal images only. Of ``n`` calibration values, ``k = floor(r * n)`` may lie at or above the
  threshold for a target false-reject rate ``r`` (a 1e-9 tolerance keeps decimal rounding from losing one, so
  0.29 x 100 allows 29). The threshold is the smallest float32 strictly above the ``(k + 1)``-th largest value:
  ``t = nextafter(v_(k+1), +inf)``. It rejects exactly the values above ``v_(k+1)`` (at most ``k``, fewer with
  ties), so the realised rate on the calibration set is ``<= k / n <= r``, while any lower threshold rejects
  ``k + 1`` or more. The resolution is ``1 / n``: with ``n < 1 / r`` (e.g. under 100 images for 1 %) ``k = 0``
  and the threshold lies just above the largest normal value; a note says so. The image threshold uses the image
  scores, the pixel threshold every pixel of the normal maps.
* F1 rule, with labelled validation images: :func:`runtime.metrics.f1_max` over the validation image scores
  (``score >= threshold`` is a defect; the highest threshold among equally good ones), and over the validation
  pixels against the masks resized to the model resolution (:func:`runtime.preprocess.preprocess_mask`).
* Per class (normal images only): the FPR rule and the normalisation span on each class's own images
  (:func:`runtime.datasets.class_of` names the class from the path), and each class's mean descriptor
  (:mod:`runtime.class_thresholds`); the detector judges a frame by the threshold of the nearest class.

Notes on weak results go into a ``notes`` list, which :func:`runtime.calibrate.calibrate` turns into warnings.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime import metrics
from runtime.calibration_images import ScoredSet
from runtime.class_thresholds import assign, class_centres, spread
from runtime.datasets.paths import class_of
from runtime.errors import CalibrationError

MIN_IMAGES = 2  # readable normal images: fewer leave nothing to normalise pred_score with


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


def f1_stats(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | None]:
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


def fpr_rule(calib: ScoredSet, fpr: float, pixel_fpr: float, notes: list[str]) -> dict[str, dict[str, Any]]:
    """The FPR rule on the calibration images' scores (at ``fpr``) and pixels (at ``pixel_fpr``), with counts."""
    return {"image": _fpr_stats(calib.scores, fpr, "image", notes),
            "pixel": _fpr_stats(calib.maps, pixel_fpr, "pixel", notes)}


def normalisation_span(scored: Sequence[ScoredSet], first: Path) -> dict[str, tuple[float, float]]:
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
