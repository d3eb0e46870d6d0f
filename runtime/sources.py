"""Frame sources for the stream: cameras, network streams, video files, image folders and the synthetic conveyor.

:func:`open_source` turns a command-line spec into a :class:`Source`, an iterator of :class:`Frame` records that
is also a context manager. Finite sources (files, folders, synthetic) are read frame by frame; live sources
(cameras, URLs) reconnect with exponential backoff and are meant to be read through :class:`LatestFrameReader`,
which keeps only the newest frames when the consumer falls behind.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from runtime.errors import DiadError, SourceError
from runtime.files import GOOD, IMAGE_EXTENSIONS, image_files, is_pattern, matching_files, other_files
from runtime.frames import Frame, Source
from runtime.limits import Limits
from runtime.preprocess import read_image
from runtime.source_health import SourceHealth

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger("runtime.stream")

URL_SCHEMES = ("rtsp", "http", "https", "rtmp")
ACCEPTED = (
    "a camera index (0), 'synthetic', a stream URL (rtsp://, http://, https://, rtmp://), a folder of images, "
    "an image or video file, or a glob pattern (images/*.png)"
)


class Capture(Protocol):
    """What sources use of ``cv2.VideoCapture``."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def isOpened(self) -> bool: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[int | str], Capture]


class ImageFiles(Source):
    """Image files in order; a file that cannot be read or decoded, or is over ``limits``, gives an error frame.
    Files under a ``good`` folder (:data:`runtime.files.GOOD`) get label 0."""

    def __init__(self, files: list[Path], name: str, loop: bool = False, max_fps: float | None = None,
                 limits: Limits | None = None):
        super().__init__(name, max_fps, limits)
        self.files, self.loop = files, loop

    def _frames(self) -> Iterator[Frame]:
        while True:
            for path in self.files:
                label = 0 if GOOD in path.parent.parts else None
                try:
                    image = read_image(path, self.limits)
                except DiadError as exc:
                    yield self._make(error=str(exc), label=label, name=path.name)
                except Exception as exc:  # noqa: BLE001 (one bad file must not end the source)
                    yield self._make(error=f"{path}: cannot decode ({type(exc).__name__}: {exc})", label=label,
                                     name=path.name)
                else:
                    yield self._make(image=image, label=label, name=path.name)
                    del image  # the consumer alone holds the pixels now, and frees them with the frame
            if not self.loop:
                return


class _CaptureSource(Source):
    """A source read through an OpenCV capture (``self._capture``), released on close."""

    _capture: Capture

    def close(self) -> None:
        super().close()
        self._capture.release()


class VideoFile(_CaptureSource):
    """A video file, BGR decoded to RGB; the end of the file ends the source, or rewinds it with ``loop``."""

    def __init__(self, path: str, loop: bool = False, max_fps: float | None = None,
                 capture_factory: CaptureFactory = cv2.VideoCapture, limits: Limits | None = None):
        super().__init__(path, max_fps, limits)
        self.loop, self._open = loop, lambda: capture_factory(path)
        self._capture = self._open()
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"{path}: not a video file that OpenCV can open; expected {ACCEPTED}")

    def _frames(self) -> Iterator[Frame]:
        try:
            while True:
                read = 0
                while True:
                    ok, image = self._capture.read()
                    if not ok:
                        break
                    read += 1
                    yield self._from_bgr(image)
                if not (self.loop and read):
                    return
                self._capture.release()
                self._capture = self._open()
        finally:
            self._capture.release()


class LiveCapture(_CaptureSource):
    """A camera or network stream. When reading fails it reconnects after ``backoff[0]`` seconds, doubling up to
    ``backoff[1]``, logs each attempt, and raises :class:`SourceError` after ``max_reconnects`` failed attempts
    in a row (None: never). With ``reconnect=False`` a lost stream ends the source. :attr:`health` tells
    monitoring whether it is connected, since when, the attempts and the frames lost to outages."""

    live = True

    def __init__(self, target: int | str, name: str, *, reconnect: bool = True, max_reconnects: int | None = None,
                 backoff: tuple[float, float] = (0.5, 8.0), max_fps: float | None = None,
                 capture_factory: CaptureFactory = cv2.VideoCapture, limits: Limits | None = None):
        super().__init__(name, max_fps, limits)
        self.reconnect, self.max_reconnects, self.backoff = reconnect, max_reconnects, backoff
        self._open = lambda: capture_factory(target)
        self._capture = self._open()
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"{name}: cannot open (no such device, busy, or unreachable)")
        self.health = SourceHealth()

    def _frames(self) -> Iterator[Frame]:
        attempt = 0
        try:
            while True:
                ok, image = self._capture.read() if self._capture.isOpened() else (False, None)
                if ok:
                    if attempt:
                        log.info("%s reconnected after %d attempt(s)", self.name, attempt)
                        attempt = 0
                    self.health.frame()
                    yield self._from_bgr(image)
                    continue
                self._capture.release()
                self.health.lost()
                if not self.reconnect:
                    log.warning("%s lost; reconnecting is off, the stream ends", self.name)
                    return
                if self.max_reconnects is not None and attempt >= self.max_reconnects:
                    raise SourceError(f"{self.name}: lost; gave up after {attempt} reconnect attempt(s)")
                attempt += 1
                delay = min(self.backoff[0] * 2 ** (attempt - 1), self.backoff[1])
                log.warning("%s lost, reconnecting in %.1f s (attempt %d)", self.name, delay, attempt)
                if self._stop.wait(delay):
                    return
                self.health.attempt()
                self._capture = self._open()
        finally:
            self._capture.release()


def _printable_url(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def open_source(
    spec: str,
    *,
    loop: bool = False,
    size: int = 256,
    seed: int = 0,
    defect_rate: float = 0.3,
    reconnect: bool = True,
    max_reconnects: int | None = None,
    backoff: tuple[float, float] = (0.5, 8.0),
    max_fps: float | None = None,
    capture_factory: CaptureFactory = cv2.VideoCapture,
    limits: Limits | None = None,
) -> Source:
    """The source named by ``spec``: a camera index, ``synthetic``, a URL, a folder, a file or a glob pattern.

    ``loop`` replays folders and video files; ``size``, ``seed`` and ``defect_rate`` shape the synthetic
    conveyor; ``reconnect``, ``max_reconnects`` and ``backoff`` apply to cameras and URLs; ``limits`` to image
    files and captured frames. Raises :class:`SourceError` naming ``spec`` when it is none of the accepted kinds
    or cannot be opened.
    """
    live = {"reconnect": reconnect, "max_reconnects": max_reconnects, "backoff": backoff, "max_fps": max_fps,
            "capture_factory": capture_factory, "limits": limits}
    path = Path(spec)
    if spec.strip().isdigit():
        return LiveCapture(int(spec), f"camera:{int(spec)}", **live)
    if spec == "synthetic":
        from runtime.synthetic_source import SyntheticSource  # the demo's generator, only when asked for

        return SyntheticSource(seed, defect_rate, size, max_fps)
    if urlsplit(spec).scheme.lower() in URL_SCHEMES:
        return LiveCapture(spec, _printable_url(spec), **live)
    if path.is_dir():
        files, others = image_files(path), other_files(path)
        if others:
            log.warning("%s: %d file(s) that are not images skipped (%s); image files end in %s", spec, len(others),
                        ", ".join(p.name for p in others[:5]) + (", ..." if len(others) > 5 else ""),
                        ", ".join(IMAGE_EXTENSIONS))
        if not files:
            raise SourceError(f"{spec}: folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return ImageFiles(files, spec, loop, max_fps, limits)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return ImageFiles([path], spec, loop, max_fps, limits)
        return VideoFile(spec, loop, max_fps, capture_factory, limits)
    if is_pattern(spec):
        files = matching_files(spec)
        if not files:
            raise SourceError(f"{spec}: glob pattern matches no files")
        return ImageFiles(files, spec, loop, max_fps, limits)
    raise SourceError(f"{spec}: no such file, folder or source; expected {ACCEPTED}")


class LatestFrameReader:
    """Reads a (live) source in a background thread as fast as frames come, keeping the newest ``capacity``.

    Iterate it to consume frames: older frames that the consumer did not take in time are dropped and counted in
    :attr:`dropped`. A source exception is raised to the consumer after the frames read before it; the end of
    the source ends the iteration. :meth:`close` stops the thread and closes the source.
    """

    def __init__(self, source: Source, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.source = source
        self._buffer: deque[Frame] = deque(maxlen=capacity)
        self._cond = threading.Condition()
        self._received = self._dropped = 0
        self._error: BaseException | None = None
        self._done = False
        self._thread = threading.Thread(target=self._run, name=f"reader {source.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for frame in self.source:
                with self._cond:
                    if len(self._buffer) == self._buffer.maxlen:
                        self._dropped += 1
                    self._buffer.append(frame)
                    self._received += 1
                    self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 (handed to the consumer)
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    @property
    def dropped(self) -> int:
        """Frames read but replaced by newer ones before the consumer took them."""
        with self._cond:
            return self._dropped

    @property
    def received(self) -> int:
        """Frames read from the source so far."""
        with self._cond:
            return self._received

    def __iter__(self) -> LatestFrameReader:
        return self

    def __next__(self) -> Frame:
        with self._cond:
            self._cond.wait_for(lambda: self._buffer or self._done)
            if self._buffer:
                return self._buffer.popleft()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise StopIteration

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading, wait up to ``timeout`` seconds for the thread, and close the source once it has ended."""
        self.source.stop()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.source.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
