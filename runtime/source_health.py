"""A live source's connection health for monitoring: connected or reconnecting since when, the attempts, and the
frames lost to outages (estimated from the frame rate measured while connected)."""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

RATE_FRAMES = 30  # the frame rate is measured over the last this many frame intervals of a connection


class SourceHealth:
    """Updated by the thread that reads the source (:meth:`frame`, :meth:`lost`, :meth:`attempt`), read from any
    thread (:meth:`snapshot`).

    A frame after an outage ends it: the frames missed are the gap since the last frame before the loss times the
    frame rate measured before it, less one (the gap between two consecutive frames is one interval).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.connected = True
        self.since = clock()  # when the current state (connected or not) began
        self.attempts = 0  # reconnect attempts in the current outage
        self.attempts_total = 0
        self.reconnects = 0  # outages ended by a frame
        self.missed = 0  # frames lost to outages that ended
        self.fps: float | None = None  # frame rate measured while connected
        self._times: deque[float] = deque(maxlen=RATE_FRAMES + 1)  # the connection's latest frame times

    def frame(self) -> None:
        """A frame arrived (ends an outage)."""
        now = self._clock()
        with self._lock:
            if not self.connected:
                self.missed += self._gap_frames(now)
                self.connected, self.since, self.attempts = True, now, 0
                self.reconnects += 1
                self._times.clear()
            self._times.append(now)
            if len(self._times) > 1 and now > self._times[0]:
                self.fps = (len(self._times) - 1) / (now - self._times[0])

    def _gap_frames(self, now: float) -> int:
        """Frames a source at the measured rate gave between the last frame and ``now`` (none without a rate)."""
        if not self._times or not self.fps:
            return 0
        return max(round((now - self._times[-1]) * self.fps) - 1, 0)

    def lost(self) -> None:
        """Reading failed: the source is down until the next frame."""
        with self._lock:
            if self.connected:
                self.connected, self.since = False, self._clock()

    def attempt(self) -> None:
        """A reconnect attempt starts."""
        with self._lock:
            self.attempts += 1
            self.attempts_total += 1

    def snapshot(self) -> dict:
        """The state as plain values; while down, ``missed`` includes the frames of the outage so far."""
        now = self._clock()
        with self._lock:
            missed = self.missed + (0 if self.connected else self._gap_frames(now))
            return {"connected": self.connected, "since": self.since, "attempts": self.attempts,
                    "attempts_total": self.attempts_total, "reconnects": self.reconnects, "missed": missed,
                    "fps": self.fps}
