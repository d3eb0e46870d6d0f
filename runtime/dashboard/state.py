"""What the dashboard knows of a running stream, fed by the stream's writer thread.

:meth:`DashboardState.observe` is all the writer does for the dashboard: under a lock that readers hold only to
copy small structures, it counts the record, keeps the frame as the newest (replacing the one before) and, for a
reject, in a deque of the last :data:`REJECTS`. Pictures are neither drawn nor encoded here: the frames keep their
display-size pixels and predictions, and the dashboard's own threads annotate and encode what a browser asks for.
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from runtime.dashboard.drift import DriftWindow
from runtime.detector import Prediction
from runtime.frames import Frame
from runtime.manifest import Thresholds

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds, capture to verdict
WINDOW_S = 60.0  # frames/s and latency percentiles over this many recent seconds
WINDOW_FRAMES = 16384  # ... and at most this many recent frames
REJECTS = 12
NO_CLASS = "-"  # the class of frames whose class nobody knows
# An error record's kind, by what its message says (runtime.limits, the stream's model failure, a server's URL);
# anything else is a frame that could not be read, decoded or pre-processed.
ERROR_KINDS = (("limit", ("over the limit", "over the file size limit", "to decode, over")),
               ("not_scored", ("not scored",)), ("server", ("grpc://",)))
DEFAULT_ERROR_KIND = "unreadable"


def error_kind(message: str) -> str:
    """The kind of an error record's ``error`` (:data:`ERROR_KINDS`, else :data:`DEFAULT_ERROR_KIND`)."""
    for kind, markers in ERROR_KINDS:
        if any(marker in message for marker in markers):
            return kind
    return DEFAULT_ERROR_KIND


def jsonable(value: object) -> object:
    """``value`` for ``json.dumps`` with ``allow_nan=False``: numpy scalars and arrays as Python values, non-finite
    floats as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def class_key(record: dict) -> str:
    """The class a record counts under: the one whose threshold judged it, else the one the source named."""
    return record.get("pred_class") or record.get("class") or NO_CLASS


@dataclass
class Counts:
    frames: int = 0  # records, errors included
    rejects: int = 0
    errors: int = 0


@dataclass
class Shot:
    """A frame to show: its record, its frame (display-size pixels, or none for an error), its prediction, and
    its annotated picture when the stream drew one anyway (for ``--save`` or ``--show``)."""

    seq: int
    record: dict
    frame: Frame
    prediction: Prediction | None
    picture: np.ndarray | None


@dataclass
class Reject:
    """A rejected frame: ``info`` for the page, the ``shot`` to draw, and its JPEGs once encoded (by size)."""

    id: int
    info: dict
    shot: Shot
    jpegs: dict[str, bytes] = field(default_factory=dict)


class DashboardState:
    """Counters, recent latencies, drift windows, the newest frame and the last rejects of one stream."""

    def __init__(self, thresholds: Thresholds, clock: Callable[[], float] = time.monotonic) -> None:
        self.thresholds, self._clock = thresholds, clock
        self.changed = threading.Condition()  # notified on every record
        self.started = clock()
        self.seq = 0
        self.latest: Shot | None = None
        self.totals = Counts()
        self.classes: dict[str, Counts] = {}
        self.errors: dict[str, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket (not cumulative), the last one +Inf
        self.latency_sum = 0.0
        self.recent: deque[tuple[float, float | None]] = deque(maxlen=WINDOW_FRAMES)  # (clock, latency s | None)
        self.rejects: deque[Reject] = deque(maxlen=REJECTS)
        self.drift: dict[str, DriftWindow] = {}
        self.last_frame: int | None = None
        self.max_frame = -1

    def rule(self, record: dict) -> tuple[float, float, float] | None:
        """(threshold, min, max) of the raw image score that judged ``record``; None when unknown."""
        if self.thresholds.image_min is None:  # uncalibrated, or a server's (whose thresholds stay there)
            return None
        rule = self.thresholds.image_rule(record.get("pred_class"))
        return None if None in rule else rule

    def observe(self, record: dict, frame: Frame, prediction: Prediction | None,
                picture: np.ndarray | None = None) -> None:
        """Take one written record with its frame, prediction and (when drawn) annotated picture."""
        now, key = self._clock(), class_key(record)
        with self.changed:
            self.seq += 1
            shot = Shot(self.seq, record, frame, prediction, picture)
            counts = self.classes.setdefault(key, Counts())
            self.totals.frames += 1
            counts.frames += 1
            if "error" in record:
                self._error(record, counts, now)
            else:
                self._verdict(record, shot, key, counts, now)
            self.last_frame, self.max_frame = record["frame"], max(self.max_frame, record["frame"])
            self.latest = shot
            self.changed.notify_all()

    def _error(self, record: dict, counts: Counts, now: float) -> None:
        kind = error_kind(record["error"])
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.totals.errors += 1
        counts.errors += 1
        self.recent.append((now, None))

    def _verdict(self, record: dict, shot: Shot, key: str, counts: Counts, now: float) -> None:
        latency = record["latency_ms"]["capture_to_verdict"] / 1000.0
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        self.latency_sum += latency
        self.recent.append((now, latency))
        rule = self.rule(record)
        if key not in self.drift:
            self.drift[key] = DriftWindow(rule)
        self.drift[key].add(record["score"])
        if record.get("label") == "anomalous":
            self.totals.rejects += 1
            counts.rejects += 1
            info = {"id": shot.seq, "frame": record["frame"], "class": key, "score": record["score"],
                    "pred_score": record["pred_score"], "threshold": None if rule is None else rule[0],
                    "time": record["time"], "name": record.get("name")}
            self.rejects.append(Reject(shot.seq, info, shot))

    def newer(self, seq: int, timeout: float) -> Shot | None:
        """The newest frame once it is newer than ``seq`` (waiting up to ``timeout`` seconds), else None."""
        with self.changed:
            if self.changed.wait_for(lambda: self.seq > seq, timeout):
                return self.latest
            return None

    def reject(self, reject_id: int) -> Reject | None:
        """The reject of that id while it is among the last :data:`REJECTS`."""
        with self.changed:
            return next((r for r in self.rejects if r.id == reject_id), None)

    def snapshot(self) -> dict:
        """Plain values for the page and the metrics: ``totals``, ``classes``, ``errors`` by kind, ``gaps`` (frame
        ids the stream never wrote), ``last_frame``, ``window`` (frames/s and latency percentiles of the last
        minute), ``latency`` (histogram), ``rejects`` (newest first) and ``drift`` per class."""
        with self.changed:
            totals, classes = asdict(self.totals), {k: asdict(v) for k, v in sorted(self.classes.items())}
            errors, buckets, latency_sum = dict(self.errors), list(self.buckets), self.latency_sum
            recent, full = list(self.recent), len(self.recent) == WINDOW_FRAMES
            rejects = [r.info for r in reversed(self.rejects)]
            drift = {k: w.copy() for k, w in sorted(self.drift.items())}
            last, gaps = self.last_frame, self.max_frame + 1 - self.totals.frames
        return {
            "totals": totals, "classes": classes, "errors": errors, "gaps": max(gaps, 0), "last_frame": last,
            "window": self._window(recent, full), "rejects": rejects,
            "latency": {"buckets": buckets, "bounds": list(LATENCY_BUCKETS), "sum": latency_sum,
                        "count": sum(buckets)},
            "drift": {k: w.report() for k, w in drift.items()},
        }

    def _window(self, recent: list[tuple[float, float | None]], full: bool) -> dict:
        """Frames/s and capture-to-verdict percentiles (ms) over the last :data:`WINDOW_S` seconds (since the
        oldest frame kept, when ``recent`` is full)."""
        now = self._clock()
        start = max(now - WINDOW_S, self.started, recent[0][0] if full else -np.inf)
        inside = [latency for t, latency in recent if t >= start]
        latencies = np.asarray([latency for latency in inside if latency is not None]) * 1000.0
        percentiles = np.percentile(latencies, (50, 95, 99)).tolist() if latencies.size else [None] * 3
        return {"seconds": WINDOW_S, "frames": len(inside), "fps": len(inside) / (now - start) if now > start else 0.0,
                **dict(zip(("p50_ms", "p95_ms", "p99_ms"), percentiles, strict=True))}
