"""Anomaly-detection metrics in numpy: image/pixel AUROC, AP, F1max, AU-PRO and their mean (mAD).

Definitions (scikit-learn's, ties included):

* AUROC: trapezoid area under the ROC curve built at the distinct scores (``roc_auc_score``). Never flipped:
  a detector worse than chance reports its true value below 0.5.
* AP: ``sum_n (R_n - R_{n-1}) * P_n`` over the distinct scores (``average_precision_score``).
* F1max: the largest ``2PR / (P + R)`` over the points of ``precision_recall_curve``, with its threshold.
* AU-PRO (MVTec AD): defect regions are the 8-connected components of each mask; PRO at a threshold is the
  mean over all regions of the fraction of the region scoring ``>=`` it, FPR the fraction of all normal
  pixels scoring ``>=`` it. The curve has one point per distinct score; its trapezoid area from FPR 0 to
  ``fpr_limit`` (interpolated linearly at the limit) is divided by ``fpr_limit``.

A metric that is undefined on the data (AUROC with a single label, AP/F1max without positives, AU-PRO
without defect regions or normal pixels) is NaN and raises an :class:`UndefinedMetricWarning` naming it.

How the pixel metrics stay fast on 10^8 pixels: all these curves change slope only where a positive sample
is crossed; between two distinct positive scores the curve runs straight (only negatives are added). So the
negative scores are sorted once (``np.sort``, no index array), the positive scores once together with their
region weights, and for each distinct positive score the negatives at or above it are counted by binary
search. These counts (:class:`_Curve`) give the exact curves shared by P-AUROC, P-AP, P-F1max and AU-PRO;
every pixel score is sorted exactly once and no per-pixel curve is ever built. Scores keep their dtype
(float32 maps stay float32, float64 maps are exact as well).
"""
from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

IMAGE_METRICS = ("i_auroc", "i_ap", "i_f1max")
PIXEL_METRICS = ("p_auroc", "p_ap", "p_f1max", "aupro")
KEYS = IMAGE_METRICS + PIXEL_METRICS + ("mad",)
COLUMNS = dict(zip(KEYS, ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AU-PRO", "mAD")))
FPR_LIMIT = 0.3


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined on the given data (e.g. a single label) and was returned as NaN."""


@dataclass(frozen=True)
class _Curve:
    """Confusion counts at each distinct positive score, highest score first.

    ``tp[k]`` / ``fp[k]``: positives / negatives scoring ``>= thresholds[k]``; ``fp_above[k]``: negatives
    scoring ``> thresholds[k]``; ``pro[k]``: summed region weights of the positives scoring ``>= thresholds[k]``.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fp_above: np.ndarray
    n_pos: int
    n_neg: int
    pro: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------- public API


def compute(
    image_scores: np.ndarray,
    image_labels: np.ndarray,
    anomaly_maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of one evaluation set, keys ``i_auroc i_ap i_f1max p_auroc p_ap p_f1max aupro mad``.

    ``image_scores`` / ``image_labels``: ``(N,)``, label ``> 0`` is anomalous. ``anomaly_maps``: ``(N, H, W)``
    scores; ``masks``: ``(N, H, W)``, value ``> 0`` is a defect pixel. Without maps and masks the four pixel
    metrics are NaN and ``mad`` is the mean of the three image metrics; with them, ``mad`` is the mean of all
    seven. ``mad`` propagates NaN: it is NaN when any metric it averages is undefined.
    """
    image = _label_curve(image_scores, image_labels)
    result = {
        "i_auroc": _auroc(image, "i_auroc"),
        "i_ap": _average_precision(image, "i_ap"),
        "i_f1max": _f1_max(image, "i_f1max")[0],
    }
    result.update(dict.fromkeys(PIXEL_METRICS, math.nan))
    averaged = IMAGE_METRICS
    if _has_pixels(anomaly_maps, masks):
        maps, masks = _check_pixels(anomaly_maps, masks, n_images=image.n_pos + image.n_neg)
        pixel, n_regions = _pixel_curve(maps, masks)
        result["p_auroc"] = _auroc(pixel, "p_auroc")
        result["p_ap"] = _average_precision(pixel, "p_ap")
        result["p_f1max"] = _f1_max(pixel, "p_f1max")[0]
        result["aupro"] = _aupro(pixel, n_regions, FPR_LIMIT, "aupro")
        averaged = IMAGE_METRICS + PIXEL_METRICS
    result["mad"] = float(np.mean([result[key] for key in averaged]))
    return result


def per_class(
    classes: Sequence[str] | np.ndarray,
    image_scores: np.ndarray,
    image_labels: np.ndarray,
    anomaly_maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
) -> list[dict]:
    """Multi-class protocol of DiAD/ADer: :func:`compute` per class, then averaged over the classes.

    One row ``{"class": name, **metrics}`` per class (sorted by name), then ``{"class": "mean", ...}`` holding
    for every key (``mad`` included) the NaN-ignoring mean over the class rows (NaN if all classes are NaN).
    """
    classes = np.asarray(classes)
    scores, labels = np.asarray(image_scores), np.asarray(image_labels)
    if classes.shape != scores.shape:
        raise ValueError(f"classes {classes.shape} and image_scores {scores.shape} differ in shape")
    with_pixels = _has_pixels(anomaly_maps, masks)
    if with_pixels:
        anomaly_maps, masks = _check_pixels(anomaly_maps, masks, n_images=len(scores))
    rows = []
    for name in np.unique(classes):
        index = np.flatnonzero(classes == name)
        maps_and_masks = (anomaly_maps[index], masks[index]) if with_pixels else (None, None)
        rows.append({"class": str(name), **compute(scores[index], labels[index], *maps_and_masks)})
    rows.append({"class": "mean", **{key: _nanmean([row[key] for row in rows]) for key in KEYS}})
    return rows


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (= ``sklearn.metrics.roc_auc_score``); label ``> 0`` is positive."""
    return _auroc(_label_curve(scores, labels), "auroc")


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision (= ``sklearn.metrics.average_precision_score``); label ``> 0`` is positive."""
    return _average_precision(_label_curve(scores, labels), "average_precision")


def f1_max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Best F1 over the precision-recall curve and its threshold (predict positive where ``score >= threshold``).

    Among equally good thresholds the highest is returned. ``(nan, nan)`` without positives.
    """
    return _f1_max(_label_curve(scores, labels), "f1_max")


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = FPR_LIMIT) -> float:
    """MVTec AU-PRO of ``(N, H, W)`` score maps against ``(N, H, W)`` masks (``> 0`` is defect).

    The area under PRO over FPR from 0 to ``fpr_limit``, divided by ``fpr_limit`` (1.0 is perfect).
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    maps, masks = _check_pixels(maps, masks)
    curve, n_regions = _pixel_curve(maps, masks)
    return _aupro(curve, n_regions, fpr_limit, "aupro")


def to_markdown(rows: Sequence[dict], digits: int = 3) -> str:
    """Markdown table of metric rows (from :func:`compute` or :func:`per_class`), one line per row."""
    header = ["Class", *COLUMNS.values()]
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * len(COLUMNS)]
    for row in rows:
        cells = [str(row.get("class", "")), *(f"{row[key]:.{digits}f}" for key in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_csv(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Write metric rows as CSV (columns ``class`` then the metrics), floats at full precision."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", *COLUMNS.values()])
        for row in rows:
            writer.writerow([row.get("class", ""), *(repr(float(row[key])) for key in COLUMNS)])


# ------------------------------------------------------------------------------------------- curve construction


def _label_curve(scores: np.ndarray, labels: np.ndarray) -> _Curve:
    """Curve of 1-D ``scores`` against ``labels`` (``> 0`` is positive)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be 1-D of equal length")
    positive = labels > 0
    return _curve(scores[~positive], scores[positive])


def _pixel_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[_Curve, int]:
    """Curve over all pixels with region weights for AU-PRO, and the number of defect regions."""
    negatives, positives, weights, n_regions = _pixel_samples(maps, masks)
    return _curve(negatives, positives, weights), n_regions


def _pixel_samples(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Normal-pixel scores, defect-pixel scores, defect-pixel weights ``1 / area(region)``, region count.

    Filled image by image into preallocated buffers so the only full-size allocation is the normal scores.
    """
    n_defect = sum(int(np.count_nonzero(mask > 0)) for mask in masks)
    negatives = np.empty(maps.size - n_defect, maps.dtype)
    positives = np.empty(n_defect, maps.dtype)
    weights = np.empty(n_defect, np.float64)
    n_regions = neg_at = pos_at = 0
    for score_map, mask in zip(maps, masks):
        defect = mask > 0
        count = int(np.count_nonzero(defect))
        normal = score_map[~defect] if count else score_map.ravel()
        negatives[neg_at : neg_at + normal.size] = normal
        neg_at += normal.size
        if count:
            n_labels, regions = cv2.connectedComponents(defect.view(np.uint8), connectivity=8)
            areas = np.bincount(regions.ravel(), minlength=n_labels)
            positives[pos_at : pos_at + count] = score_map[defect]
            weights[pos_at : pos_at + count] = 1.0 / areas[regions[defect]]
            pos_at += count
            n_regions += n_labels - 1
    return negatives, positives, weights, n_regions


def _curve(negatives: np.ndarray, positives: np.ndarray, weights: np.ndarray | None = None) -> _Curve:
    """Counts at the distinct positive scores; sorts ``negatives`` in place (pass a copy you own)."""
    negatives.sort()
    if weights is None:
        positives = np.sort(positives)
    else:
        order = np.argsort(positives, kind="stable")
        positives, weights = positives[order], weights[order]
    _reject_nan(negatives)
    _reject_nan(positives)
    is_first = np.ones(positives.size, bool)
    is_first[1:] = positives[1:] != positives[:-1]
    first = np.flatnonzero(is_first)  # where each distinct positive score starts, ascending
    thresholds = positives[first]
    fp = negatives.size - np.searchsorted(negatives, thresholds, side="left")
    fp_above = negatives.size - np.searchsorted(negatives, thresholds, side="right")
    pro = None if weights is None else np.cumsum(weights[::-1])[::-1][first][::-1]  # suffix sums
    return _Curve(
        thresholds=thresholds[::-1],
        tp=(positives.size - first)[::-1],
        fp=fp[::-1],
        fp_above=fp_above[::-1],
        n_pos=int(positives.size),
        n_neg=int(negatives.size),
        pro=pro,
    )


# ------------------------------------------------------------------------------------------ metrics of a curve


def _auroc(curve: _Curve, name: str) -> float:
    """ROC area: points (0,0), per threshold (fp_above, tp before) then (fp, tp), finally (n_neg, n_pos)."""
    if curve.n_pos == 0 or curve.n_neg == 0:
        return _undefined(name, f"needs both labels, got {curve.n_pos} positive and {curve.n_neg} negative samples")
    fp = np.concatenate(([0], _interleave(curve.fp_above, curve.fp), [curve.n_neg]))
    tp = np.concatenate(([0], _interleave(_previous(curve.tp, 0), curve.tp), [curve.n_pos]))
    twice_area = np.sum(np.diff(fp) * (tp[1:] + tp[:-1]))  # integer counts: exact
    return float(twice_area) / (2.0 * curve.n_neg * curve.n_pos)


def _average_precision(curve: _Curve, name: str) -> float:
    """``sum (R_k - R_{k-1}) * P_k``; recall only grows at the thresholds of the curve."""
    if curve.n_pos == 0:
        return _undefined(name, "needs positive samples, got none")
    new_positives = np.diff(curve.tp, prepend=0)
    precision = curve.tp / (curve.tp + curve.fp)
    return float(np.sum(new_positives * precision) / curve.n_pos)


def _f1_max(curve: _Curve, name: str) -> tuple[float, float]:
    """Best ``2TP / (TP + FP + n_pos)`` (= 2PR / (P + R)) and its threshold, the highest one on ties."""
    if curve.n_pos == 0:
        return _undefined(name, "needs positive samples, got none"), math.nan
    f1 = 2.0 * curve.tp / (curve.tp + curve.fp + curve.n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(curve.thresholds[best])


def _aupro(curve: _Curve, n_regions: int, fpr_limit: float, name: str) -> float:
    """Normalised area under the PRO-over-FPR curve up to ``fpr_limit``."""
    if n_regions == 0:
        return _undefined(name, "needs defect regions, the masks have none")
    if curve.n_neg == 0:
        return _undefined(name, "needs normal pixels, the masks have none")
    fpr = np.concatenate(([0], _interleave(curve.fp_above, curve.fp), [curve.n_neg])) / curve.n_neg
    pro = np.concatenate(([0.0], _interleave(_previous(curve.pro, 0.0), curve.pro), [n_regions])) / n_regions
    return _partial_area(fpr, pro, fpr_limit) / fpr_limit


def _partial_area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under ``y(x)`` (``x`` non-decreasing from 0) up to ``x_max``, interpolating linearly there."""
    end = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    area = np.sum(np.diff(x[:end]) * (y[1:end] + y[: end - 1])) / 2.0
    if end < x.size:
        x0, x1, y0, y1 = x[end - 1], x[end], y[end - 1], y[end]
        y_at_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += (x_max - x0) * (y0 + y_at_max) / 2.0
    return float(area)


# ---------------------------------------------------------------------------------------------------- helpers


def _has_pixels(anomaly_maps: np.ndarray | None, masks: np.ndarray | None) -> bool:
    """Whether pixel metrics are requested; maps and masks come together or not at all."""
    if (anomaly_maps is None) != (masks is None):
        raise ValueError("anomaly_maps and masks must be given together")
    return anomaly_maps is not None


def _check_pixels(maps: np.ndarray, masks: np.ndarray, n_images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H, W)`` maps and masks of equal shape (and ``N == n_images`` when given)."""
    maps, masks = np.asarray(maps), np.asarray(masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"anomaly_maps {maps.shape} and masks {masks.shape} must be (N, H, W) of equal shape")
    if n_images is not None and len(maps) != n_images:
        raise ValueError(f"{len(maps)} anomaly maps for {n_images} image scores")
    return maps, masks


def _reject_nan(sorted_scores: np.ndarray) -> None:
    """Raise on NaN scores (``np.sort`` puts them last)."""
    if sorted_scores.size and np.isnan(sorted_scores[-1]):
        raise ValueError("scores contain NaN")


def _interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a[0], b[0], a[1], b[1], ...``."""
    return np.stack((a, b), axis=1).ravel()


def _previous(values: np.ndarray, start: float) -> np.ndarray:
    """``values`` shifted one step later, ``start`` first: the value before each threshold is crossed."""
    return np.concatenate(([start], values[:-1]))


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values; NaN (without a warning) when there are none."""
    finite = [value for value in values if not math.isnan(value)]
    return float(np.mean(finite)) if finite else math.nan


def _undefined(name: str, reason: str) -> float:
    """Warn that metric ``name`` is undefined and return NaN."""
    warnings.warn(f"{name} is undefined ({reason}); returning NaN", UndefinedMetricWarning, stacklevel=4)
    return math.nan


def json_safe(value: Any) -> Any:
    """NaN (an undefined metric) as ``None``, recursively through dicts and lists, so the JSON is strict."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
