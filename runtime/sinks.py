"""Stream outputs: JSON lines, annotated frames (video, PNG folder, window) and the latency summary."""
from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import cv2
import numpy as np

from runtime.visualize import label, overlay, write_rgb

if TYPE_CHECKING:
    from typing_extensions import Self

VIDEO_FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
VERDICT_COLOURS = {"good": (0, 200, 0), "ok": (0, 200, 0), "anomaly": (255, 40, 40), "defect": (255, 40, 40)}
OTHER_COLOUR = (255, 200, 0)  # errors and unknown verdicts
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q or Esc
VIDEO_FPS = 10.0  # frame rate of a saved video without --max-fps
_DIGITS = 6  # significant digits of floats in JSON lines


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready Python: numpy types converted, floats rounded, non-finite floats as None, strings
    valid UTF-8 (undecodable bytes of file names as ``\\xff``)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(f"{value:.{_DIGITS}g}") if math.isfinite(value) else None
    if isinstance(value, (str, Path)):
        return _utf8(str(value))
    return value


def _utf8(text: str) -> str:
    """``text`` as valid UTF-8: a file name's undecodable bytes (surrogate escapes) become ``\\xff``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name gives
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class JsonlSink:
    """One JSON object per line, flushed at once, to ``path`` or to standard output when ``path`` is None."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = path
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = None if path is None else open(path, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict) -> None:
        out = self._file or sys.stdout
        out.write(json.dumps(_plain(record), ensure_ascii=False) + "\n")
        out.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FrameSink:
    """Where annotated RGB frames go; ``write`` returns True when the viewer asked to quit."""

    def write(self, image: np.ndarray) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """Release the output."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoSink(FrameSink):
    """A video file (mp4v for .mp4/.mov/.mkv, MJPG for .avi), sized by the first frame; later frames are resized."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path, self.fps = Path(path), fps
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, image: np.ndarray) -> bool:
        if self._writer is None:
            self._size = (image.shape[1], image.shape[0])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = VIDEO_FOURCC.get(self.path.suffix.lower(), "mp4v")
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*fourcc), self.fps, self._size)
            if not self._writer.isOpened():
                raise OSError(f"{self.path}: could not open a {fourcc} video writer")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
        self.frames += 1
        return False

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


class FolderSink(FrameSink):
    """Numbered PNGs (``000000.png``, ``000001.png``, ...) in a folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.frames = 0

    def write(self, image: np.ndarray) -> bool:
        write_rgb(str(self.path / f"{self.frames:06d}.png"), image)
        self.frames += 1
        return False


class WindowSink(FrameSink):
    """An OpenCV window; ``write`` returns True when the user pressed q or Esc."""

    def __init__(self, name: str = "diad") -> None:
        self.name = name

    def write(self, image: np.ndarray) -> bool:
        try:
            cv2.imshow(self.name, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
            key = cv2.waitKey(1)
        except cv2.error as exc:
            raise OSError(f"cannot show a window (no display, or OpenCV built without GUI support): {exc}") from None
        return key >= 0 and (key & 0xFF) in QUIT_KEYS

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.name)
        except cv2.error:  # never shown, or no GUI support
            pass


def open_frame_sink(path: str | Path, fps: float = VIDEO_FPS) -> FrameSink:
    """A :class:`VideoSink` for a video extension (.mp4, .avi, .mkv, .mov), otherwise a :class:`FolderSink`."""
    if Path(path).suffix.lower() in VIDEO_FOURCC:
        return VideoSink(path, fps)
    return FolderSink(path)


def annotate(
    image: np.ndarray,
    anomaly_map: np.ndarray | None,
    verdict: str,
    score: float | None,
    colour: tuple[int, int, int] | None = None,
    alpha: float = 0.4,
) -> np.ndarray:
    """RGB ``image`` with the heatmap of ``anomaly_map`` (normalised, 0.5 = threshold; outlined red above it)
    blended in, and a banner with the verdict and score in the verdict's colour (or ``colour``)."""
    out = image
    if anomaly_map is not None:
        out = overlay(image, anomaly_map, 0.0, 1.0, alpha=alpha, pred_mask=np.asarray(anomaly_map) > 0.5)
    text = verdict.upper() if score is None else f"{verdict.upper()}  {score:.3f}"
    return label(out, text, colour or VERDICT_COLOURS.get(verdict.lower(), OTHER_COLOUR))


PARTS = ("prepare", "batch_wait", "model", "output")  # a frame's time from capture to verdict, in order


class LatencyStats:
    """Per-frame latencies (capture to verdict, and its :data:`PARTS`) and counts, summarised as p50/p95 latency,
    the parts' p50 and throughput.

    ``fps`` is the frames processed (errors included) per second of wall time from creation to the last frame.
    Set :attr:`dropped` from the reader that drops frames.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._start = self._last = clock()
        self.latencies: list[float] = []
        self.parts: dict[str, list[float]] = {part: [] for part in PARTS}
        self.errors = 0
        self.dropped = 0

    def add(self, latency: float, parts: dict[str, float] | None = None) -> None:
        """One frame processed in ``latency`` seconds, of which ``parts`` (seconds per :data:`PARTS` name)."""
        self.latencies.append(float(latency))
        for part, seconds in (parts or {}).items():
            self.parts[part].append(float(seconds))
        self._last = self._clock()

    def add_error(self) -> None:
        """One frame that could not be processed."""
        self.errors += 1
        self._last = self._clock()

    def summary(self) -> dict:
        """``frames``, ``errors``, ``dropped``, ``elapsed_s``, ``fps``, ``p50_ms``, ``p95_ms``, ``mean_ms`` (latencies
        None before the first frame) and ``parts_p50_ms`` (each part's p50, for the parts given)."""
        frames = len(self.latencies) + self.errors
        elapsed = self._last - self._start
        ms = np.asarray(self.latencies) * 1000.0
        p50, p95 = (float(v) for v in np.percentile(ms, [50, 95])) if ms.size else (None, None)
        return {
            "frames": frames,
            "errors": self.errors,
            "dropped": self.dropped,
            "elapsed_s": elapsed,
            "fps": frames / elapsed if elapsed > 0 else 0.0,
            "p50_ms": p50,
            "p95_ms": p95,
            "mean_ms": float(ms.mean()) if ms.size else None,
            "parts_p50_ms": {part: float(np.percentile(values, 50)) * 1000.0
                             for part, values in self.parts.items() if values},
        }


def format_summary(summary: dict) -> str:
    """One line for people, e.g. ``120 frames (2 errors, 5 dropped) in 4.0 s, 30.0 fps; latency p50 ...``."""
    line = (
        f"{summary['frames']} frames ({summary['errors']} errors, {summary['dropped']} dropped) "
        f"in {summary['elapsed_s']:.1f} s, {summary['fps']:.1f} fps"
    )
    if summary["p50_ms"] is None:
        return line
    line += (f"; latency p50 {summary['p50_ms']:.1f} ms, p95 {summary['p95_ms']:.1f} ms, "
             f"mean {summary['mean_ms']:.1f} ms")
    parts = summary.get("parts_p50_ms")
    if parts:
        named = ", ".join(f"{part.replace('_', ' ')} {ms:.1f}" for part, ms in parts.items())
        line += f" capture to verdict (p50 ms: {named})"
    return line
