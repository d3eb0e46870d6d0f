"""One stream's run: :class:`~runtime.stream_pipeline.Pipeline`'s scored batches written, in order, as a record
per frame (and its picture) to the record and frame sinks and the observers, counted into the summary."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from runtime.annotation import frame_picture
from runtime.detector import FrameScorer, Prediction
from runtime.frames import Frame, Source
from runtime.manifest import Thresholds
from runtime.records import GroundTruth, error_record, prediction_record
from runtime.sinks import PARTS, FrameSink, LatencyStats
from runtime.stream_pipeline import STOP_POLL_S, Batch, Pipeline, PreparedFrame

log = logging.getLogger("runtime.stream")


class RecordSink(Protocol):
    """Where per-frame records go (:class:`runtime.sinks.JsonlSink`, or anything with ``write``)."""

    def write(self, record: dict) -> None: ...


class FrameObserver(Protocol):
    """Sees every written record with its frame (display-size pixels kept), prediction (None for an error) and
    annotated picture (None unless a frame sink drew it), from the writer thread: it must not block
    (:class:`runtime.dashboard.Dashboard`)."""

    def observe(self, record: dict, frame: Frame, prediction: Prediction | None,
                picture: np.ndarray | None) -> None: ...


def _relay_stop(stop_event: threading.Event, source: Source, finished: threading.Event) -> None:
    """Stop ``source`` once ``stop_event`` is set, ending a read blocked in a reconnect backoff or throttle wait."""
    while not finished.is_set():
        if stop_event.wait(STOP_POLL_S):
            source.stop()
            return


class StreamWriter:
    """One stream's outputs and counts: a record per frame of each scored batch, and its picture."""

    def __init__(self, records: Sequence[RecordSink], frame_sinks: Sequence[FrameSink], time_format: str,
                 thresholds: Thresholds, observers: Sequence[FrameObserver] = ()) -> None:
        self.records, self.frame_sinks, self.time_format = records, frame_sinks, time_format
        self.observers = observers
        self.stats, self.truth = LatencyStats(), GroundTruth(thresholds)

    def write(self, batch: Batch) -> str | None:
        """Write a record (and a picture) per frame of ``batch``, in order. Returns why the stream must stop:
        ``viewer quit`` or ``output failed: ...``; None to go on."""
        quit_ = False
        count = len(batch.ready()) if batch.collected is not None else 0
        share = {stage: seconds / count for stage, seconds in batch.seconds.items()} if count else {}
        for item in batch.items:
            frame, prediction = item.frame, item.prediction
            try:
                picture = frame_picture(frame, prediction) if self.frame_sinks else None
                if picture is not None:
                    quit_ = _write_frames(self.frame_sinks, picture) or quit_
                if prediction is None:
                    record, latency = error_record(frame, self.time_format), None
                else:
                    latency = _latency(item, batch, time.perf_counter())
                    record = prediction_record(frame, prediction, latency, {"preprocess": item.seconds, **share},
                                               self.time_format)
                for sink in self.records:
                    sink.write(record)
                for observer in self.observers:
                    observer.observe(record, frame, prediction, picture)
            except BrokenPipeError:
                raise  # the reader of standard output is gone (`| head`): nothing is left to report to
            except Exception as exc:  # noqa: BLE001 (a failure of the output stops the run, with a summary)
                log.error("output failed: %s: %s", type(exc).__name__, exc)
                return f"output failed: {type(exc).__name__}: {exc}"
            if latency is None:
                log.warning("frame %d: %s", frame.index, record["error"])
                self.stats.add_error()
            else:
                self.stats.add(latency["capture_to_verdict"], {k: v for k, v in latency.items() if k in PARTS})
                self.truth.add(frame, prediction)
        return "viewer quit" if quit_ else None


def _latency(item: PreparedFrame, batch: Batch, now: float) -> dict[str, float]:
    """A scored frame's time line in seconds: ``capture_to_verdict`` and its :data:`PARTS`, which sum to it."""
    return {
        "capture_to_verdict": now - item.frame.clock,
        "prepare": item.prepared - item.frame.clock,
        "batch_wait": batch.submitted - item.prepared,
        "model": batch.collected - batch.submitted,
        "output": now - batch.collected,
    }


def _write_frames(frame_sinks: Sequence[FrameSink], image: np.ndarray) -> bool:
    """Write ``image`` to every frame sink; True when one of them (a window) asks to quit."""
    quit_ = False
    for sink in frame_sinks:
        quit_ = sink.write(image) or quit_
    return quit_


def stream(
    detector: FrameScorer,
    source: Source,
    records: Sequence[RecordSink] = (),
    frame_sinks: Sequence[FrameSink] = (),
    *,
    frames: int | None = None,
    stop_event: threading.Event | None = None,
    time_format: str = "iso",
    batch: int = 1,
    observers: Sequence[FrameObserver] = (),
) -> dict:
    """Score ``source`` (a live one through a :class:`~runtime.sources.LatestFrameReader`) into ``records`` and
    annotated ``frame_sinks`` until it ends, ``frames`` frames were taken, ``stop_event`` is set or a window viewer
    quits; the frames in flight are always finished. The source is closed on return; the sinks are not. ``batch`` > 1
    scores a finite source's frames in batches (more throughput, each frame waits for its batch); a live source is
    always scored frame by frame, newest first. Capture and pre-processing, the model, and the outputs run
    concurrently (:class:`Pipeline`). ``observers`` see each record after the record sinks (a dashboard).

    Every frame taken gives one record, in order: a verdict, or an error (unreadable, over a limit, failed
    pre-processing) and the stream goes on. Only the model failing (``stop_reason`` ``model failed: ...``; frames
    taken after it are error records too), an output failing (``output failed: ...``; nothing more is written) or
    the source failing for good (``source lost: ...``) stop it early.

    Returns the summary: :meth:`LatencyStats.summary`'s fields (``frames`` = records written, ``dropped`` = live
    frames replaced by newer ones or left unread at the end) plus ``source``, ``stop_reason``, ``skipped`` (live
    frames discarded by ``max_fps``), ``calibrated``, ``labelled``, ``image_auroc`` and ``accuracy``.
    """
    writer = StreamWriter(records, frame_sinks, time_format, detector.thresholds, observers)
    finished = threading.Event()
    if stop_event is not None:
        threading.Thread(target=_relay_stop, args=(stop_event, source, finished), daemon=True).start()
    size = 1 if source.live else max(1, batch)
    pipeline = Pipeline(detector, source, size, frames, stop_event, bool(frame_sinks or observers))
    stopped = None
    try:
        while (scored := pipeline.next_batch()) is not None:
            stopped = writer.write(scored) or stopped
            if stopped is not None and stopped.startswith("output failed"):
                break
            if stopped is not None:
                pipeline.halt()  # viewer quit: finish what was taken
    finally:
        finished.set()
        pipeline.close()
    writer.stats.dropped = pipeline.dropped
    if stopped is None or not stopped.startswith("output failed"):
        stopped = pipeline.failure or stopped
    return {"source": source.name, "stop_reason": stopped or pipeline.reason, **writer.stats.summary(),
            "skipped": source.skipped, "calibrated": detector.thresholds.calibrated, "model": detector.summary,
            **writer.truth.summary()}
