"""The stream's first two stages, each in a thread: capture and pre-processing, then the model.

Frames are pre-processed as soon as they are taken (:func:`prepare_frame`), gathered into batches
(:class:`Batch`) and scored in order, up to the detector's slots in flight (:mod:`runtime.inflight`);
:class:`Pipeline` hands the scored batches to the writer (:mod:`runtime.stream_run`).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from runtime.annotation import display_size
from runtime.detector import FrameScorer, Prediction
from runtime.errors import DiadError, ServerError
from runtime.frames import Frame, Source
from runtime.inflight import full
from runtime.sources import LatestFrameReader

log = logging.getLogger("runtime.stream")

STOP_POLL_S = 0.1  # how often a waiting thread looks whether the stream stopped


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
class Batch:
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


class Pipeline:
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
        self.prepared: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self.scored: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
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
                    if not self._put(self.prepared, Batch(batch)):
                        return
                    batch = []
        finally:
            try:
                self._close_source()
            except Exception as exc:  # noqa: BLE001 (the frames taken are still scored and written)
                log.warning("%s: closing the source failed (%s: %s)", self.source.name, type(exc).__name__, exc)
            if batch:
                self._put(self.prepared, Batch(batch))
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
        inflight: deque[Batch] = deque()
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

    def _collect_now(self, oldest: Batch) -> bool:
        """Whether to wait for the oldest batch rather than submit another first: it was not submitted, every
        slot is busy, or no next batch is ready to overlap with."""
        return oldest.submitted is None or full(self.detector) or self.prepared.empty()

    def _submit(self, batch: Batch) -> None:
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

    def _collect(self, batch: Batch) -> None:
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

    def _server_failed(self, batch: Batch, exc: ServerError) -> None:
        log.warning("%s", exc)
        batch.submitted = None
        batch.refuse(str(exc))

    def _fail(self, batch: Batch, exc: Exception) -> None:
        self.failure = f"model failed: {type(exc).__name__}: {exc}"
        log.error("%s", self.failure)
        batch.refuse(self.failure)
        self.halt()

    # ------------------------------------------------------------------------------------- plumbing
    def _put(self, where: queue.Queue, batch: Batch | None) -> bool:
        """Queue ``batch`` unless the pipeline is abandoned meanwhile (then False)."""
        while not self.abandoned.is_set():
            try:
                where.put(batch, timeout=STOP_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, where: queue.Queue) -> Batch | None:
        """The next batch; None at the end or once abandoned."""
        while not self.abandoned.is_set():
            try:
                return where.get(timeout=STOP_POLL_S)
            except queue.Empty:
                continue
        return None

    def next_batch(self) -> Batch | None:
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

