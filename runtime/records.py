"""The stream's per-frame records (a verdict or an error), its ground-truth tally and its summary line."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from runtime.detector import Prediction
from runtime.frames import Frame
from runtime.manifest import Thresholds
from runtime.metrics import auroc
from runtime.schedule import plan_label
from runtime.scoring import threshold_margin
from runtime.sinks import format_summary

LABELS = {True: "anomalous", False: "normal"}
TIME_FORMATS = ("iso", "epoch_ms")  # JSON sinks keep 6 significant digits of floats, so epoch time is integer ms


def _timestamp(seconds: float, time_format: str) -> str | int:
    """ISO 8601 UTC with milliseconds, or integer milliseconds since the Unix epoch."""
    if time_format == "epoch_ms":
        return round(seconds * 1000)
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def _base_record(frame: Frame, time_format: str) -> dict:
    """The fields every record has: time, frame id, source, what is known of the frame, ground truth."""
    record = {"time": _timestamp(frame.time, time_format), "frame": frame.index, "source": frame.source}
    known = {"name": frame.name, "class": frame.class_name, "defect": frame.defect}
    record.update({key: value for key, value in known.items() if value is not None})
    record["gt_label"] = None if frame.label is None else LABELS[bool(frame.label)]
    return record


def verdict_of(prediction: Prediction) -> str | None:
    """``"anomalous"`` / ``"normal"``, or None when the model is uncalibrated."""
    return None if prediction.pred_label is None else LABELS[bool(prediction.pred_label)]


def prediction_record(frame: Frame, prediction: Prediction, latency: dict[str, float], stages: dict[str, float],
                      time_format: str = "iso") -> dict:
    """A scored frame: raw ``score``, ``pred_score`` / ``label`` (None uncalibrated), ``pred_class`` (per-class
    thresholds only), its time line ``latency`` and its ``stages`` cost (seconds, written in ms)."""
    return {
        **_base_record(frame, time_format),
        "score": prediction.score,
        "pred_score": prediction.pred_score,
        "label": verdict_of(prediction),
        **({"pred_class": prediction.pred_class} if prediction.pred_class is not None else {}),
        "latency_ms": {key: value * 1000.0 for key, value in latency.items()},
        "stage_ms": {key: value * 1000.0 for key, value in stages.items()},
    }


def error_record(frame: Frame, time_format: str = "iso") -> dict:
    """A frame that could not be scored; ``error`` says why."""
    return {**_base_record(frame, time_format), "error": frame.error or "the source gave no image"}


@dataclass
class GroundTruth:
    """Ground truth seen so far with the scores and (calibrated) verdicts, for AUROC and accuracy. Calibrated, the
    AUROC ranks each score's margin over the threshold that judged it (its class's, with per-class thresholds),
    as the verdicts do; uncalibrated, or through a server (which applies thresholds the client does not know),
    the raw scores."""

    thresholds: Thresholds
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)

    def add(self, frame: Frame, prediction: Prediction) -> None:
        if frame.label is None:
            return
        self.labels.append(int(frame.label))
        t = self.thresholds
        rule = t.image_rule(prediction.pred_class) if t.calibrated else None
        known = rule is not None and None not in rule  # a server's client knows only that it is calibrated
        self.scores.append(float(threshold_margin(prediction.score, *rule)) if known else prediction.score)
        if prediction.pred_label is not None:
            self.correct.append(bool(prediction.pred_label) == bool(frame.label))

    def summary(self) -> dict:
        """``labelled`` frames, ``image_auroc`` (both labels seen) and ``accuracy`` (calibrated), else None."""
        both = len(set(self.labels)) == 2
        return {
            "labelled": len(self.labels),
            "image_auroc": auroc(np.asarray(self.scores), np.asarray(self.labels)) if both else None,
            "accuracy": float(np.mean(self.correct)) if self.correct else None,
        }


def summary_text(summary: dict) -> str:
    """:func:`format_summary` of a stream's summary plus image AUROC / accuracy when known, the model and why the
    stream stopped."""
    parts = [format_summary(summary)]
    if summary["image_auroc"] is not None:
        parts.append(f"image AUROC {summary['image_auroc']:.3f} over {summary['labelled']} labelled frames")
    if summary["accuracy"] is not None:
        parts.append(f"verdict accuracy {summary['accuracy']:.3f}")
    model = summary["model"]
    scorer = model["scorer"]
    weights = "RANDOM weights" if scorer.get("weights") == "random" else "ImageNet weights"
    draws = "" if model["steps"] == 0 else f" x {model.get('draws', 1)} noise draw(s)"
    statistics = scorer.get("statistics")
    scoring = f", against {statistics['kind']}/{statistics['scope']} normal statistics" if statistics else ""
    parts.append(
        f"model {model['preset']}, {plan_label(model['steps'], model['start_t'])}{draws}, scorer "
        f"{scorer.get('backbone')} layers {scorer.get('layers')} ({weights}{scoring})"
    )
    return "; ".join(parts) + f" ({summary['stop_reason']})"
