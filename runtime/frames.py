"""A captured frame and the base of every frame source: an iterator of :class:`Frame` records, throttled, stoppable
from another thread, and a context manager. :mod:`runtime.sources` has the kinds of source,
:mod:`runtime.synthetic_source` the demo's conveyor."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from runtime.errors import DiadError, FrameError
from runtime.limits import Limits

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass
class Frame:
    """One captured frame; ``error`` says why it is unusable, and then ``image`` is None."""

    index: int  # frame id, increasing (live sources may skip ids of frames discarded by max_fps)
    time: float  # time.time() at capture
    source: str
    image: np.ndarray | None = None  # RGB uint8 (H, W, 3)
    error: str | None = None
    label: int | None = None  # ground truth when known: 0 normal, 1 defective
    mask: np.ndarray | None = None  # ground-truth uint8 (H, W), > 0 = defect
    class_name: str | None = None
    name: str | None = None  # file name for folder sources
    defect: str | None = None  # defect type when known ("good" for a normal synthetic part)
    clock: float = field(default_factory=time.perf_counter)  # perf_counter() at capture, for latencies


class Source:
    """An iterator of :class:`Frame`, optionally throttled to ``max_fps``; close it (or use ``with``) when done.

    Subclasses implement :meth:`_frames` and build frames with :meth:`_make`. Throttling sleeps before reading
    a finite source; a live source keeps reading and discards (counts in ``skipped``) frames that come early.
    A frame that cannot be read, or is over ``limits``, becomes an error frame; the source goes on.
    """

    live = False

    def __init__(self, name: str, max_fps: float | None = None, limits: Limits | None = None) -> None:
        self.name = name
        self.max_fps = max_fps
        self.limits = limits or Limits()
        self.skipped = 0
        self._count = 0
        self._stop = threading.Event()
        self._iter: Iterator[Frame] | None = None

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def _make(self, **fields) -> Frame:
        frame = Frame(index=self._count, time=time.time(), source=self.name, **fields)
        self._count += 1
        return frame

    def _from_bgr(self, bgr: np.ndarray | None) -> Frame:
        """A frame from a captured BGR (BGRA, grayscale) picture; an empty, odd or too large one becomes an error
        frame."""
        what = f"{self.name}: frame {self._count}"
        if bgr is None or bgr.size == 0:
            return self._make(error=f"{what} decoded to an empty image")
        try:
            return self._make(image=_to_rgb(bgr, what, self.limits))
        except DiadError as exc:
            return self._make(error=str(exc))
        except Exception as exc:  # noqa: BLE001 (one odd frame must not end the source)
            return self._make(error=f"{what}: cannot convert ({type(exc).__name__}: {exc})")

    def _throttled(self) -> Iterator[Frame]:
        interval = 1.0 / self.max_fps if self.max_fps else 0.0
        due = 0.0
        frames = self._frames()
        try:
            while not self._stop.is_set():
                wait = due - time.monotonic()
                if not self.live and wait > 0 and self._stop.wait(wait):
                    return
                frame = next(frames, None)
                if frame is None or self._stop.is_set():
                    return
                now = time.monotonic()
                if self.live and now < due:
                    self.skipped += 1
                    continue
                due = now + interval
                yield frame
        finally:
            frames.close()

    def __iter__(self) -> Source:
        return self

    def __next__(self) -> Frame:
        if self._iter is None:
            self._iter = self._throttled()
        return next(self._iter)

    def stop(self) -> None:
        """Ask a running iteration (possibly in another thread) to end at the next frame or backoff wait."""
        self._stop.set()

    def close(self) -> None:
        """Stop and release what the source holds; call it from the thread that iterates (or after it ended)."""
        self.stop()
        if self._iter is not None:
            self._iter.close()  # type: ignore[attr-defined]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _to_rgb(picture: np.ndarray, what: str, limits: Limits) -> np.ndarray:
    """A captured 8-bit BGR, BGRA or grayscale picture within ``limits`` as RGB."""
    if picture.dtype != np.uint8:
        raise FrameError(f"{what}: {picture.dtype} pixels, expected 8-bit frames from the capture")
    channels = 1 if picture.ndim == 2 else picture.shape[2] if picture.ndim == 3 else 0
    codes = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}
    if channels not in codes:
        raise FrameError(f"{what}: captured shape {picture.shape}, expected (H, W), (H, W, 3) or (H, W, 4)")
    limits.check_frame(picture.shape[1], picture.shape[0], what)
    return cv2.cvtColor(picture, codes[channels])
