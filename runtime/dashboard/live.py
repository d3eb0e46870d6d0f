"""The dashboard's pictures: the live frame, drawn and JPEG-encoded in the dashboard's own thread, at most
:data:`MAX_FPS` times a second and only while a browser watches; rejects drawn and encoded when first asked for."""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np

from runtime.dashboard.state import DashboardState, Reject, Shot, jsonable
from runtime.detector import Prediction
from runtime.frames import Frame

log = logging.getLogger("runtime.dashboard")

MAX_FPS = 10.0  # live frames sent to browsers per second, at most
JPEG_QUALITY = 80
THUMB_WIDTH = 200
WAIT_S = 0.5  # how long the encoder waits for a watcher or a frame before looking again

Render = Callable[[Frame, Prediction | None], np.ndarray]  # the annotated RGB picture of a frame


def jpeg(picture: np.ndarray, width: int | None = None) -> bytes:
    """RGB ``picture`` as JPEG bytes, scaled down to ``width`` pixels wide when given."""
    if width is not None and picture.shape[1] > width:
        height = max(round(picture.shape[0] * width / picture.shape[1]), 1)
        picture = cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(picture), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"cannot encode a {picture.shape} picture as JPEG")
    return data.tobytes()


@dataclass(frozen=True)
class LiveFrame:
    """An encoded live frame: ``seq`` of its shot, the JPEG and its Server-Sent Event (``event: frame``)."""

    seq: int
    jpeg: bytes
    event: bytes


class LiveView:
    """Draws and encodes the newest frame for the watchers (:meth:`watching`), in a daemon thread."""

    def __init__(self, state: DashboardState, render: Render, max_fps: float = MAX_FPS) -> None:
        self.state, self.render, self.interval = state, render, 1.0 / max_fps
        self.current: LiveFrame | None = None
        self._encoded = threading.Condition()
        self._watchers = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard encoder", daemon=True)
        self._thread.start()

    def picture(self, shot: Shot) -> np.ndarray:
        """The annotated picture of ``shot`` (the stream's own, when it drew one)."""
        return shot.picture if shot.picture is not None else self.render(shot.frame, shot.prediction)

    def reject_jpeg(self, reject: Reject, thumb: bool) -> bytes:
        """A reject's picture as JPEG, full size or a thumbnail; encoded once."""
        size = "thumb" if thumb else "full"
        if size not in reject.jpegs:
            reject.jpegs[size] = jpeg(self.picture(reject.shot), THUMB_WIDTH if thumb else None)
        return reject.jpegs[size]

    def latest_jpeg(self) -> bytes | None:
        """The newest frame as JPEG (the encoded one when a browser watches), None before the first."""
        current, shot = self.current, self.state.latest
        if shot is None:
            return None
        return current.jpeg if current is not None and current.seq == shot.seq else jpeg(self.picture(shot))

    @contextmanager
    def watching(self) -> Iterator[None]:
        """While inside, the encoder keeps :attr:`current` up to date."""
        with self._encoded:
            self._watchers += 1
            self._encoded.notify_all()
        try:
            yield
        finally:
            with self._encoded:
                self._watchers -= 1

    def next_after(self, seq: int, timeout: float) -> LiveFrame | None:
        """The encoded frame after ``seq`` (the newest; frames encoded meanwhile are skipped), or None after
        ``timeout`` seconds or on close."""
        with self._encoded:
            self._encoded.wait_for(lambda: self._closed.is_set() or (self.current is not None
                                                                     and self.current.seq > seq), timeout)
            current = self.current
        return current if current is not None and current.seq > seq and not self._closed.is_set() else None

    def _run(self) -> None:
        done, due = 0, 0.0
        while not self._closed.is_set():
            with self._encoded:
                if not self._encoded.wait_for(lambda: self._watchers > 0 or self._closed.is_set(), WAIT_S):
                    continue
            if self.state.newer(done, WAIT_S) is None:
                continue
            if self._closed.wait(max(due - time.monotonic(), 0.0)):
                return
            shot = self.state.latest
            try:
                live = self._encode(shot)
            except Exception as exc:  # noqa: BLE001 (a picture that cannot be drawn is skipped; the next one comes)
                log.warning("dashboard: frame %s not shown (%s: %s)", shot.record.get("frame"), type(exc).__name__,
                            exc)
                done = shot.seq
                continue
            done, due = shot.seq, time.monotonic() + self.interval
            with self._encoded:
                self.current = live
                self._encoded.notify_all()

    def _encode(self, shot: Shot) -> LiveFrame:
        data = jpeg(self.picture(shot))
        record = shot.record
        fields = {key: record.get(key) for key in ("frame", "time", "label", "score", "pred_score", "error", "name")}
        fields.update({"seq": shot.seq, "class": record.get("pred_class") or record.get("class"),
                       "jpeg": base64.b64encode(data).decode("ascii")})
        event = f"event: frame\ndata: {json.dumps(jsonable(fields), allow_nan=False)}\n\n".encode()
        return LiveFrame(shot.seq, data, event)

    def close(self) -> None:
        self._closed.set()
        with self._encoded:
            self._encoded.notify_all()
        self._thread.join(timeout=5.0)
