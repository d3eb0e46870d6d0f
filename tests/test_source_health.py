"""A live source's health: connected or reconnecting since when, the attempts, and the frames lost to outages."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import SourceError
from runtime.source_health import SourceHealth
from runtime.sources import open_source


def test_an_outage_counts_the_frames_the_source_did_not_give():
    now = [100.0]
    health = SourceHealth(clock=lambda: now[0])
    for _ in range(50):  # 10 frames a second
        health.frame()
        now[0] += 0.1
    assert health.snapshot()["fps"] == pytest.approx(10.0)
    now[0] += 0.3
    health.lost()  # noticed 0.4 s after the last frame
    lost_at = now[0]
    for _ in range(3):
        now[0] += 1.0
        health.attempt()
    state = health.snapshot()  # 3.4 s since the last frame: 33 frames missed so far
    assert (state["connected"], state["since"], state["attempts"], state["missed"]) == (False, lost_at, 3, 33)
    now[0] += 0.6
    health.frame()  # 4.0 s after the last one: 39 frames in between
    state = health.snapshot()
    assert (state["connected"], state["since"], state["attempts"]) == (True, now[0], 0)
    assert state["missed"] == 39 and state["reconnects"] == 1 and state["attempts_total"] == 3


def test_no_rate_no_estimate():
    now = [0.0]
    health = SourceHealth(clock=lambda: now[0])
    health.frame()
    health.lost()
    now[0] += 5.0
    health.frame()
    assert health.snapshot()["missed"] == 0 and health.snapshot()["reconnects"] == 1


class _Capture:
    """A capture that gives ``frames`` frames, then fails; one that cannot open has ``frames`` < 0."""

    def __init__(self, frames: int) -> None:
        self.left = frames

    def isOpened(self) -> bool:
        return self.left >= 0

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.zeros((8, 8, 3), np.uint8)

    def release(self) -> None:
        self.left = min(self.left, 0)


def test_a_camera_reports_its_outages_through_its_health():
    plan = iter([5, -1, 5])  # 5 frames, a failed reconnect, 5 frames, then gone
    source = open_source("0", capture_factory=lambda _: _Capture(next(plan, -1)), backoff=(0.001, 0.002),
                         max_reconnects=2)
    frames = []
    with pytest.raises(SourceError, match="gave up after 2"):
        for frame in source:
            frames.append(frame)
            if len(frames) == 5:
                assert source.health.snapshot()["connected"]
    state = source.health.snapshot()
    assert len(frames) == 10 and not state["connected"]
    assert state["reconnects"] == 1 and state["attempts_total"] == 4 and state["attempts"] == 2
