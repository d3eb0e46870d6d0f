"""``python -m runtime.stream``: score a camera, network stream, video, image folder or the synthetic conveyor.

    python -m runtime.stream [--source synthetic|0|rtsp://...|clip.mp4|folder|'*.png'] [--model models/tiny]
        [--frames N] [--jsonl PATH] [--save out.mp4|folder] [--show] [--server grpc://HOST:PORT]
        [--dashboard 127.0.0.1:8080 [--dashboard-token TOKEN]]

One JSON object per frame goes to standard output (or ``--jsonl``); logs and the summary go to standard error.
Live sources (cameras, URLs) are read in a background thread that keeps only the newest frame, so a slow model
drops stale frames (counted) instead of falling behind, and a lost stream reconnects with backoff. Files, folders
and the synthetic feed are scored frame by frame (or ``--batch-size`` at a time). The stream is a pipeline of three
threads: while the model scores batch N, the next batch is captured, decoded and pre-processed and the one before
is annotated and written (ONNX Runtime releases the GIL; TensorRT computes on its own streams, two batches in
flight). Every frame gives one record, in order: a verdict, or an error when it cannot be read or decoded, is over
a limit (``--max-pixels``, ``--max-side``, ``--max-file-mb``) or fails pre-processing, and the stream goes on. Only
the model or an output failing, or a live source lost for good, stops it early (status 1, with the summary; frames
already taken get error records). SIGINT / SIGTERM finish the frames in flight, close the outputs and print the
summary (status 0). With ``--server`` the frames are scored by a Triton server (``python -m runtime.serve``,
:class:`~runtime.serving.client.RemoteDetector`), which batches them with other cameras' frames; while it is down
or restarting, the frames get error records and the stream reconnects with backoff. With ``--dashboard`` a live
page and Prometheus ``/metrics`` are served beside the stream (:mod:`runtime.dashboard`, ``docs/dashboard.md``).

A record holds ``time`` (ISO 8601 UTC, or ``--time epoch_ms``), ``frame`` (id), ``source``, ``name`` / ``class`` /
``defect`` when the source knows them, ``gt_label`` (``"anomalous"`` / ``"normal"``, null when unknown), then
either ``score`` (raw), ``pred_score`` (0.5 = the calibrated threshold), ``label`` (null when the model folder is
uncalibrated), ``latency_ms`` and ``stage_ms``, or ``error``. ``latency_ms`` is the frame's own time line:
``capture_to_verdict``, the sum of ``prepare`` (capture to pre-processed), ``batch_wait`` (until its batch went to
the model: filling the batch and waiting for the model), ``model`` (its batch in the model) and ``output``
(annotating and writing it and the frames before it in its batch). ``stage_ms`` is what the frame cost:
its ``preprocess`` and its share of its batch's ``encode steps decode score``.
"""
from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from runtime.cli import add_backend_arguments, run_cli
from runtime.detector import Detector, FrameScorer, Prediction
from runtime.errors import DiadError, ModelFolderError, ServerError
from runtime.limits import Limits
from runtime.manifest import Thresholds
from runtime.metrics import auroc
from runtime.schedule import plan_label
from runtime.scoring import threshold_margin
from runtime.serving.client import RemoteDetector
from runtime.sinks import (
    OTHER_COLOUR,
    PARTS,
    VERDICT_COLOURS,
    FrameSink,
    JsonlSink,
    LatencyStats,
    WindowSink,
    annotate,
    format_summary,
    open_frame_sink,
)
from runtime.sources import Frame, LatestFrameReader, Source, open_source
from runtime.visualize import label, overlay

if TYPE_CHECKING:
    from runtime.dashboard import Address, Dashboard

log = logging.getLogger("runtime.stream")

DEFAULT_MODEL = "models/tiny"
LABELS = {True: "anomalous", False: "normal"}
COLOURS = {"anomalous": VERDICT_COLOURS["anomaly"], "normal": VERDICT_COLOURS["good"]}
DISPLAY = (512, 960)  # annotated frames: the longer side is scaled into this range
VIDEO_FPS = 10.0  # frame rate of a saved video without --max-fps
TIME_FORMATS = ("iso", "epoch_ms")  # JSON sinks keep 6 significant digits of floats, so epoch time is integer ms
STOP_POLL_S = 0.1
FAILURES = ("source lost", "model failed", "output failed")  # stop reasons that make the command exit 1


class RecordSink(Protocol):
    """Where per-frame records go (:class:`runtime.sinks.JsonlSink`, or anything with ``write``)."""

    def write(self, record: dict) -> None: ...


class FrameObserver(Protocol):
    """Sees every written record with its frame (display-size pixels kept), prediction (None for an error) and
    annotated picture (None unless a frame sink drew it), from the writer thread: it must not block
    (:class:`runtime.dashboard.Dashboard`)."""

    def observe(self, record: dict, frame: Frame, prediction: Prediction | None,
                picture: np.ndarray | None) -> None: ...


# ------------------------------------------------------------------------------------------------- model


def require_model_folder(model: str | Path) -> None:
    """Raise :class:`ModelFolderError` saying how to build ``model`` when it is not a folder."""
    if not Path(model).is_dir():
        raise ModelFolderError(
            f"{model}: no model folder here. Build one with `make demo`, or export a trained run with "
            f"`python -m export --run RUN --out {model}` and calibrate it with "
            f"`python -m runtime.calibrate --model {model} --images NORMAL_IMAGES`"
        )


def open_detector(
    model: str | Path,
    backend: str = "onnxruntime",
    device: str | None = None,
    steps: int | None = None,
    start_t: int | None = None,
    limits: Limits | None = None,
    provider: str | None = None,
) -> Detector:
    """The :class:`Detector` of ``model`` (see :func:`require_model_folder`)."""
    require_model_folder(model)
    detector = Detector(model, backend, device, steps, start_t, limits=limits, provider=provider)
    if not detector.thresholds.calibrated:
        log.warning("%s has no thresholds: label and pred_score are null (calibrate with runtime.calibrate)", model)
    return detector


# ----------------------------------------------------------------------------------------------- records


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


def _verdict(prediction: Prediction) -> str | None:
    return None if prediction.pred_label is None else LABELS[bool(prediction.pred_label)]


def prediction_record(frame: Frame, prediction: Prediction, latency: dict[str, float], stages: dict[str, float],
                      time_format: str = "iso") -> dict:
    """A scored frame: raw ``score``, ``pred_score`` / ``label`` (None uncalibrated), ``pred_class`` (per-class
    thresholds only), its time line ``latency`` and its ``stages`` cost (seconds, written in ms)."""
    return {
        **_base_record(frame, time_format),
        "score": prediction.score,
        "pred_score": prediction.pred_score,
        "label": _verdict(prediction),
        **({"pred_class": prediction.pred_class} if prediction.pred_class is not None else {}),
        "latency_ms": {key: value * 1000.0 for key, value in latency.items()},
        "stage_ms": {key: value * 1000.0 for key, value in stages.items()},
    }


def error_record(frame: Frame, time_format: str = "iso") -> dict:
    """A frame that could not be scored; ``error`` says why."""
    return {**_base_record(frame, time_format), "error": frame.error or "the source gave no image"}


# -------------------------------------------------------------------------------------------- annotation


def display_size(image: np.ndarray) -> np.ndarray:
    """``image`` scaled so that its longer side lies in :data:`DISPLAY` (small frames up, large ones down)."""
    h, w = image.shape[:2]
    longer = max(h, w)
    target = min(max(longer, DISPLAY[0]), DISPLAY[1])
    if target == longer:
        return image
    scale = target / longer
    size = (max(round(w * scale), 1), max(round(h * scale), 1))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def annotated(image: np.ndarray, prediction: Prediction) -> np.ndarray:
    """The frame at display size with the anomaly heatmap and the verdict. Uncalibrated: the raw map over its own
    range and the raw score."""
    shown = display_size(image)
    verdict = _verdict(prediction)
    if verdict is not None:
        return annotate(shown, prediction.anomaly_map, verdict, prediction.pred_score, COLOURS[verdict])
    raw = prediction.raw_map
    heat = overlay(shown, raw, float(raw.min()), float(raw.max()), alpha=0.4)
    return label(heat, f"UNCALIBRATED  raw {prediction.score:.4g}", OTHER_COLOUR)


def error_card(frame: Frame) -> np.ndarray:
    """A black display-size picture saying the frame could not be read (keeps saved videos in step)."""
    card = np.zeros((DISPLAY[0], DISPLAY[0], 3), np.uint8)
    return label(card, f"ERROR  frame {frame.index} {frame.name or ''}".rstrip(), OTHER_COLOUR)


# ------------------------------------------------------------------------------------------------ stream


@dataclass
class _Truth:
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


def _relay_stop(stop_event: threading.Event, source: Source, finished: threading.Event) -> None:
    """Stop ``source`` once ``stop_event`` is set, ending a read blocked in a reconnect backoff or throttle wait."""
    while not finished.is_set():
        if stop_event.wait(STOP_POLL_S):
            source.stop()
            return


@dataclass
class PreparedFrame:
    """A frame taken from the source, pre-processed at once (``tensor``, and ``seconds`` it took) or failed
    (``frame.error``); its pixels are dropped, or kept at display size for the frame sinks. ``prepared``:
    perf_counter() once pre-processed; ``prediction`` once scored."""

    frame: Frame
    tensor: np.ndarray | None = None
    seconds: float = 0.0
    prepared: float = 0.0
    prediction: Prediction | None = None


@dataclass
class _Batch:
    """Frames scored together; ``submitted`` / ``collected``: perf_counter() when handed to the model and back."""

    items: list[PreparedFrame]
    submitted: float | None = None
    collected: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # the model's stage seconds for the batch

    def ready(self) -> list[PreparedFrame]:
        return [item for item in self.items if item.tensor is not None]

    def refuse(self, error: str) -> None:
        """The frames still to score get ``error`` instead."""
        for item in self.ready():
            item.frame.error, item.tensor = error, None


def prepare_frame(detector: FrameScorer, frame: Frame, keep_picture: bool) -> PreparedFrame:
    """Pre-process ``frame``: whatever goes wrong becomes the frame's error."""
    item = PreparedFrame(frame)
    if frame.error is None and frame.image is None:
        frame.error = "the source gave no image"
    if frame.error is None:
        start = time.perf_counter()
        try:
            item.tensor = detector.prepare(frame.image, f"{frame.source}: frame {frame.index}")
            frame.image = display_size(frame.image) if keep_picture else None
        except DiadError as exc:
            frame.error = str(exc)
        except Exception as exc:  # noqa: BLE001 (the per-frame contract: one frame's failure is its error record)
            frame.error = f"{frame.source}: frame {frame.index}: pre-processing failed ({type(exc).__name__}: {exc})"
        item.seconds = time.perf_counter() - start
    if frame.error is not None:
        item.tensor, frame.image = None, None
    item.prepared = time.perf_counter()
    return item


def frame_picture(frame: Frame, prediction: Prediction | None) -> np.ndarray:
    """The annotated frame, or an error card for an error frame or a frame that cannot be annotated."""
    if prediction is None:
        return error_card(frame)
    try:
        return annotated(frame.image, prediction)
    except Exception as exc:  # noqa: BLE001 (the verdict stands; only the picture is lost)
        log.warning("frame %d: cannot annotate (%s: %s); an error card stands in", frame.index, type(exc).__name__, exc)
        return error_card(frame)


class _Pipeline:
    """The stream's first two stages, each in a thread: the reader takes frames (at most ``frames``) and
    pre-processes them into batches of ``size``; the scorer hands each batch to the model (up to the detector's
    slots in flight) and passes it on, scored, in order. :meth:`next_batch` gives them to the writer.

    The reader works one batch ahead: it starts a batch once the scorer took the one before (a finite source: it
    is prepared while that one runs), or for a live source once the scorer submitted it (so the frame it takes is
    the newest when the model is free, not one that aged while the model ran).

    :meth:`halt` stops taking frames; what was taken is still scored (a model failure turns it into error records).
    :meth:`close` abandons what is in flight (the writer is gone) and waits for both threads.
    """

    def __init__(self, detector: FrameScorer, source: Source, size: int, frames: int | None,
                 stop_event: threading.Event | None, keep_pictures: bool) -> None:
        self.detector, self.source, self.size, self.frames = detector, source, size, frames
        self.stop_event, self.keep_pictures = stop_event, keep_pictures
        self.live = LatestFrameReader(source) if source.live else None
        self.prepared: queue.Queue[_Batch | None] = queue.Queue(maxsize=1)
        self.scored: queue.Queue[_Batch | None] = queue.Queue(maxsize=1)
        self.halted, self.abandoned = threading.Event(), threading.Event()
        self._room = threading.Semaphore(1)  # the reader may start a batch
        self.reason = "end of source"  # why the reader stopped
        self.failure: str | None = None  # the model's, once it failed
        self.taken = self.dropped = 0
        self._threads = [threading.Thread(target=self._read, name="stream reader", daemon=True),
                         threading.Thread(target=self._score, name="stream scorer", daemon=True)]
        for thread in self._threads:
            thread.start()

    # -------------------------------------------------------------------------------- reader thread
    def _stop_requested(self) -> bool:
        return self.halted.is_set() or (self.stop_event is not None and self.stop_event.is_set())

    def _read(self) -> None:
        frames_in: Iterator[Frame] = self.live if self.live is not None else self.source
        batch: list[PreparedFrame] = []
        try:
            while True:
                if self.frames is not None and self.taken >= self.frames:
                    self.reason = "frame limit"
                    break
                if self._stop_requested():
                    self.reason = "stop requested"
                    break
                if not batch and not self._wait_for_room():
                    self.reason = "stop requested"
                    break
                try:
                    frame = next(frames_in)
                except StopIteration:
                    self.reason = "stop requested" if self._stop_requested() else "end of source"
                    break
                except Exception as exc:  # noqa: BLE001 (SourceError, or a source that broke: it cannot go on)
                    log.error("%s", exc)
                    self.reason = f"source lost: {exc}"
                    break
                self.taken += 1
                batch.append(prepare_frame(self.detector, frame, self.keep_pictures))
                if len(batch) == self.size:
                    if not self._put(self.prepared, _Batch(batch)):
                        return
                    batch = []
        finally:
            try:
                self._close_source()
            except Exception as exc:  # noqa: BLE001 (the frames taken are still scored and written)
                log.warning("%s: closing the source failed (%s: %s)", self.source.name, type(exc).__name__, exc)
            if batch:
                self._put(self.prepared, _Batch(batch))
            self._put(self.prepared, None)

    def _wait_for_room(self) -> bool:
        """Wait until the reader may start a batch; False when the stream stops meanwhile."""
        while not self._room.acquire(timeout=STOP_POLL_S):
            if self._stop_requested() or self.abandoned.is_set():
                return False
        return True

    def _close_source(self) -> None:
        if self.live is not None:
            self.live.close()
            self.dropped = self.live.received - self.taken
        else:
            self.source.close()

    # -------------------------------------------------------------------------------- scorer thread
    def _score(self) -> None:
        inflight: deque[_Batch] = deque()
        more = True
        while more or inflight:
            if more and not (inflight and self._collect_now(inflight[0])):
                batch = self._get(self.prepared)
                if batch is None:
                    more = False
                    continue
                if self.live is None:
                    self._room.release()
                self._submit(batch)
                if self.live is not None:
                    self._room.release()
                inflight.append(batch)
                continue
            batch = inflight.popleft()
            self._collect(batch)
            if not self._put(self.scored, batch):
                return
        self._put(self.scored, None)

    def _collect_now(self, oldest: _Batch) -> bool:
        """Whether to wait for the oldest batch rather than submit another first: it was not submitted, every
        slot is busy, or no next batch is ready to overlap with."""
        return oldest.submitted is None or self.detector.pending >= self.detector.slots or self.prepared.empty()

    def _submit(self, batch: _Batch) -> None:
        ready = batch.ready()
        if self.failure is not None:
            batch.refuse(f"not scored: the stream stopped after {self.failure}")
        elif ready:
            batch.submitted = time.perf_counter()
            try:
                self.detector.submit(np.stack([item.tensor for item in ready]))
            except ServerError as exc:  # a server down: these frames fail, the stream goes on (and reconnects)
                self._server_failed(batch, exc)
            except Exception as exc:  # noqa: BLE001 (a failure of the model itself stops the run, with a summary)
                self._fail(batch, exc)

    def _collect(self, batch: _Batch) -> None:
        if batch.submitted is None or not batch.ready():
            return
        if self.failure is not None:  # submitted before the failure: the detector is not asked again
            batch.refuse(f"not scored: the stream stopped after {self.failure}")
            return
        try:
            out = self.detector.collect()
        except ServerError as exc:
            self._server_failed(batch, exc)
            return
        except Exception as exc:  # noqa: BLE001 (as in _submit)
            self._fail(batch, exc)
            return
        batch.collected, batch.seconds = time.perf_counter(), out.seconds
        for item, prediction in zip(batch.ready(), self.detector.predictions(out), strict=True):
            item.prediction = prediction

    def _server_failed(self, batch: _Batch, exc: ServerError) -> None:
        log.warning("%s", exc)
        batch.submitted = None
        batch.refuse(str(exc))

    def _fail(self, batch: _Batch, exc: Exception) -> None:
        self.failure = f"model failed: {type(exc).__name__}: {exc}"
        log.error("%s", self.failure)
        batch.refuse(self.failure)
        self.halt()

    # ------------------------------------------------------------------------------------- plumbing
    def _put(self, where: queue.Queue, batch: _Batch | None) -> bool:
        """Queue ``batch`` unless the pipeline is abandoned meanwhile (then False)."""
        while not self.abandoned.is_set():
            try:
                where.put(batch, timeout=STOP_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, where: queue.Queue) -> _Batch | None:
        """The next batch; None at the end or once abandoned."""
        while not self.abandoned.is_set():
            try:
                return where.get(timeout=STOP_POLL_S)
            except queue.Empty:
                continue
        return None

    def next_batch(self) -> _Batch | None:
        """The next scored batch, in order; None when all are through."""
        while True:
            try:
                return self.scored.get(timeout=STOP_POLL_S)
            except queue.Empty:
                if not self._threads[1].is_alive() and self.scored.empty():
                    return None

    def halt(self) -> None:
        """Take no more frames (a live source's reconnect wait ends too)."""
        self.halted.set()
        self.source.stop()

    def close(self) -> None:
        self.abandoned.set()
        self.halt()
        for thread in self._threads:
            thread.join()


class _Run:
    """One stream's outputs and counts: a record per frame of each scored batch, and its picture."""

    def __init__(self, records: Sequence[RecordSink], frame_sinks: Sequence[FrameSink], time_format: str,
                 thresholds: Thresholds, observers: Sequence[FrameObserver] = ()) -> None:
        self.records, self.frame_sinks, self.time_format = records, frame_sinks, time_format
        self.observers = observers
        self.stats, self.truth = LatencyStats(), _Truth(thresholds)

    def write(self, batch: _Batch) -> str | None:
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


def _latency(item: PreparedFrame, batch: _Batch, now: float) -> dict[str, float]:
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
    """Score ``source`` (a live one through a :class:`LatestFrameReader`) into ``records`` and annotated
    ``frame_sinks`` until it ends, ``frames`` frames were taken, ``stop_event`` is set or a window viewer quits;
    the frames in flight are always finished. The source is closed on return; the sinks are not. ``batch`` > 1
    scores a finite source's frames in batches (more throughput, each frame waits for its batch); a live source is
    always scored frame by frame, newest first. Capture and pre-processing, the model, and the outputs run
    concurrently (:class:`_Pipeline`). ``observers`` see each record after the record sinks (a dashboard).

    Every frame taken gives one record, in order: a verdict, or an error (unreadable, over a limit, failed
    pre-processing) and the stream goes on. Only the model failing (``stop_reason`` ``model failed: ...``; frames
    taken after it are error records too), an output failing (``output failed: ...``; nothing more is written) or
    the source failing for good (``source lost: ...``) stop it early.

    Returns the summary: :meth:`LatencyStats.summary`'s fields (``frames`` = records written, ``dropped`` = live
    frames replaced by newer ones or left unread at the end) plus ``source``, ``stop_reason``, ``skipped`` (live
    frames discarded by ``max_fps``), ``calibrated``, ``labelled``, ``image_auroc`` and ``accuracy``.
    """
    run = _Run(records, frame_sinks, time_format, detector.thresholds, observers)
    finished = threading.Event()
    if stop_event is not None:
        threading.Thread(target=_relay_stop, args=(stop_event, source, finished), daemon=True).start()
    size = 1 if source.live else max(1, batch)
    pipeline = _Pipeline(detector, source, size, frames, stop_event, bool(frame_sinks or observers))
    stopped = None
    try:
        while (scored := pipeline.next_batch()) is not None:
            stopped = run.write(scored) or stopped
            if stopped is not None and stopped.startswith("output failed"):
                break
            if stopped is not None:
                pipeline.halt()  # viewer quit: finish what was taken
    finally:
        finished.set()
        pipeline.close()
    run.stats.dropped = pipeline.dropped
    if stopped is None or not stopped.startswith("output failed"):
        stopped = pipeline.failure or stopped
    return {"source": source.name, "stop_reason": stopped or pipeline.reason, **run.stats.summary(),
            "skipped": source.skipped, "calibrated": detector.thresholds.calibrated, "model": detector.summary,
            **run.truth.summary()}


def summary_text(summary: dict) -> str:
    """:func:`format_summary` plus image AUROC / accuracy when known and why the stream stopped."""
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


# ------------------------------------------------------------------------------------------------ command


@contextmanager
def stop_on_signals(stop_event: threading.Event) -> Iterator[list[str]]:
    """While inside, SIGINT and SIGTERM set ``stop_event`` (a second one aborts with KeyboardInterrupt); yields
    the names of the signals received. Outside the main thread it does nothing."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: object) -> None:
        if stop_event.is_set():
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)
        stop_event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime.stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="synthetic",
                        help="camera index, video file, RTSP/HTTP URL, image folder or glob, or 'synthetic' (default)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder (default {DEFAULT_MODEL}: make demo)")
    add_backend_arguments(parser)
    parser.add_argument("--server", metavar="grpc://HOST:PORT",
                        help="score through a Triton server (python -m runtime.serve) instead of a local model: "
                        "--model, --backend, --device, --provider, --steps and --start-t are the server's")
    parser.add_argument("--served-model", default="diad", help="with --server: the model's name there (diad)")
    parser.add_argument("--steps", type=int,
                        help="DDIM steps (default: the model folder's; 0: VAE-only plan (no diffusion))")
    parser.add_argument("--start-t", type=int, help="noising timestep (default: the model folder's)")
    parser.add_argument("--frames", type=int, help="stop after this many frames (default: the end of the source)")
    parser.add_argument("--max-fps", type=float, help="read at most this many frames per second")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="files and synthetic feed: score this many frames per call (default 1; live sources 1)")
    parser.add_argument("--loop", action="store_true", help="replay a video file or image folder")
    parser.add_argument("--seed", type=int, default=0, help="synthetic source: random seed (default 0)")
    parser.add_argument("--defect-rate", type=float, default=0.3, help="synthetic source: defective share (0.3)")
    parser.add_argument("--jsonl", help="write the JSON lines to this file instead of standard output")
    parser.add_argument("--time", choices=TIME_FORMATS, default="iso",
                        help="record time as ISO 8601 UTC (default) or integer milliseconds since the epoch")
    parser.add_argument("--save", help="annotated frames to a video (.mp4, .avi, .mkv, .mov) or a PNG folder")
    parser.add_argument("--show", action="store_true", help="show annotated frames in a window (q or Esc quits)")
    parser.add_argument("--dashboard", metavar="HOST:PORT",
                        help="serve a live page and Prometheus /metrics there (127.0.0.1:8080; port 0: any free "
                        "one); an address other than loopback needs a token")
    parser.add_argument("--dashboard-token", metavar="TOKEN",
                        help="the token the dashboard's requests must carry (default: $DIAD_DASHBOARD_TOKEN)")
    Limits.add_arguments(parser)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        parser.error("--frames must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.max_fps is not None and args.max_fps <= 0:
        parser.error("--max-fps must be positive")
    if not 0.0 <= args.defect_rate <= 1.0:
        parser.error("--defect-rate must lie in [0, 1]")
    if args.server and (args.steps is not None or args.start_t is not None):
        parser.error("--steps and --start-t are the server's with --server (python -m runtime.serve)")
    return args


def _open_model(args: argparse.Namespace, limits: Limits) -> FrameScorer:
    """The local detector of ``--model``, or the ``--server``'s model."""
    if not args.server:
        return open_detector(args.model, args.backend, args.device, args.steps, args.start_t, limits, args.provider)
    remote = RemoteDetector(args.server, args.served_model, limits, maps=bool(args.save or args.show))
    log.info("scoring through %s: model %s version %s (manifest sha256 %s)", args.server, remote.model,
             remote.version, remote.manifest_sha256)
    if not remote.calibrated:
        log.warning("the served model has no thresholds: label and pred_score are null")
    return remote


def _open_sinks(args: argparse.Namespace, stack: ExitStack) -> tuple[list[RecordSink], list[FrameSink]]:
    records: list[RecordSink] = [stack.enter_context(JsonlSink(args.jsonl))]
    frame_sinks: list[FrameSink] = []
    if args.save:
        frame_sinks.append(stack.enter_context(open_frame_sink(args.save, args.max_fps or VIDEO_FPS)))
    if args.show:
        frame_sinks.append(stack.enter_context(WindowSink()))
    return records, frame_sinks


def _dashboard_address(args: argparse.Namespace) -> Address | None:
    """``--dashboard``'s address, checked (a public one needs a token); None without the option."""
    if args.dashboard is None:
        return None
    try:
        from runtime.dashboard import dashboard_address  # prometheus-client: the runtime extra
    except ModuleNotFoundError as exc:
        raise DiadError(f"--dashboard needs {exc.name}: pip install 'diad-edge[runtime]'") from None
    return dashboard_address(args.dashboard, args.dashboard_token)


def _open_dashboard(address: Address, args: argparse.Namespace, detector: FrameScorer, source: Source) -> Dashboard:
    """The dashboard of this stream, serving at ``address``."""
    from runtime.dashboard import Dashboard, model_info

    model = model_info(detector, "triton" if args.server else args.backend)
    return Dashboard(address, thresholds=detector.thresholds, model=model, source=source, render=frame_picture)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    with stop_on_signals(stop) as received:
        if not args.server:
            require_model_folder(args.model)  # before a camera is opened
        dashboard = _dashboard_address(args)
        limits = Limits.from_args(args)
        source = open_source(args.source, loop=args.loop, seed=args.seed, defect_rate=args.defect_rate,
                             max_fps=args.max_fps, limits=limits)
        with ExitStack() as stack:
            try:
                detector = stack.enter_context(_open_model(args, limits))
                records, frame_sinks = _open_sinks(args, stack)
                observers: list[FrameObserver] = []
                if dashboard is not None:
                    observers.append(stack.enter_context(_open_dashboard(dashboard, args, detector, source)))
            except BaseException:
                source.close()
                raise
            summary = stream(detector, source, records, frame_sinks, frames=args.frames, stop_event=stop,
                             time_format=args.time, batch=args.batch_size, observers=observers)
    if received:
        log.info("stopped by %s after the frame in flight", received[0])
    print(f"summary: {summary_text(summary)}", file=sys.stderr)
    return 1 if summary["stop_reason"].startswith(FAILURES) else 0


if __name__ == "__main__":
    run_cli(main)
