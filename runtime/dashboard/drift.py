"""Score drift: a class's recent raw image scores against what calibration saw of its normal images.

Calibration (``python -m runtime.calibrate``) keeps, per class with ``--per-class`` or for all classes, the image
threshold and the span of the normal calibration scores (``image_min`` .. ``image_max``); under the FPR rule at
most the target rate (5 % in the demo) of those scores lies at or above the threshold, so the calibration set's
median lies between ``image_min`` and the threshold. A window of recent scores whose median leaves that range has
moved beyond what calibration saw: below its lowest normal score, or above the threshold (most recent parts
rejected, whether the parts or the camera changed). The window holds every scored frame of the class, defects
included: a line's defect rate far below one half leaves the median among the normal parts.
"""
from __future__ import annotations

from collections import deque

import numpy as np

WINDOW = 200  # recent scores per class
MIN_FRAMES = 30  # a window judged with fewer would warn on chance
BINS = 24  # the histogram the page draws
QUANTILES = (5, 25, 50, 75, 95)


class DriftWindow:
    """The last :data:`WINDOW` raw scores of one class and its calibration ``rule`` (threshold, min, max of the
    normal calibration scores; None when uncalibrated)."""

    def __init__(self, rule: tuple[float, float, float] | None, size: int = WINDOW) -> None:
        self.rule = rule
        self.scores: deque[float] = deque(maxlen=size)

    def add(self, score: float) -> None:
        self.scores.append(float(score))

    def copy(self) -> DriftWindow:
        """A copy to report from outside the lock that guards this one."""
        other = DriftWindow(self.rule, self.scores.maxlen or WINDOW)
        other.scores.extend(self.scores)
        return other

    def report(self) -> dict:
        """``frames``, ``quantiles`` (p5 .. p95), ``reference`` (the calibration rule), ``histogram`` (``low``,
        ``high``, ``counts`` over a range that holds both), ``status`` (``ok``, ``drift``, ``warming up`` or
        ``no reference``) and ``message``."""
        scores = np.asarray(self.scores, np.float64)
        reference = None if self.rule is None else dict(zip(("threshold", "min", "max"), self.rule, strict=True))
        out: dict = {"frames": int(scores.size), "reference": reference, "quantiles": None, "histogram": None}
        if scores.size:
            out["quantiles"] = {f"p{q}": float(v) for q, v in zip(QUANTILES, np.percentile(scores, QUANTILES))}
            out["histogram"] = _histogram(scores, reference)
        out["status"], out["message"] = _judge(out["quantiles"], reference, scores.size)
        return out


def _histogram(scores: np.ndarray, reference: dict | None) -> dict:
    """Counts of ``scores`` in :data:`BINS` bins over a range covering them and the calibration span."""
    low, high = float(scores.min()), float(scores.max())
    if reference is not None:
        low, high = min(low, reference["min"]), max(high, reference["max"], reference["threshold"])
    if not high > low:
        high = low + max(abs(low) * 1e-3, 1e-6)
    counts, _ = np.histogram(scores, BINS, (low, high))
    return {"low": low, "high": high, "counts": counts.tolist()}


def _judge(quantiles: dict | None, reference: dict | None, frames: int) -> tuple[str, str]:
    if reference is None:
        return "no reference", "uncalibrated: nothing to compare with (python -m runtime.calibrate)"
    if quantiles is None or frames < MIN_FRAMES:
        return "warming up", f"{frames} of {MIN_FRAMES} frames needed to judge"
    median = quantiles["p50"]
    if median > reference["threshold"]:
        return "drift", (f"median score {median:.4g} above the threshold {reference['threshold']:.4g}: most recent "
                         "frames score beyond what calibration passed")
    if median < reference["min"]:
        return "drift", (f"median score {median:.4g} below the lowest calibration score {reference['min']:.4g}: "
                         "the frames no longer look like the calibration images")
    return "ok", f"median score {median:.4g} within calibration's normal range"
