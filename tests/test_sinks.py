"""runtime.sinks: JSON lines, video / PNG / window outputs, annotation and the latency summary."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from runtime.preprocess import read_image
from runtime.sinks import (
    PARTS,
    FolderSink,
    JsonlSink,
    LatencyStats,
    VideoSink,
    WindowSink,
    annotate,
    format_summary,
    open_frame_sink,
)

RECORD = {
    "frame": np.int64(3),
    "score": np.float32(0.123456789),
    "anomalous": np.bool_(True),
    "box": np.array([1.5, 2.25]),
    "nan": float("nan"),
    "nested": {"t": 1 / 3, "name": "a.png"},
}


def test_jsonl_lines_parse_with_plain_rounded_values(tmp_path, capsys):
    path = tmp_path / "out" / "results.jsonl"
    with JsonlSink(path) as sink:
        sink.write(RECORD)
        assert path.read_text().count("\n") == 1  # flushed at once
        sink.write({"frame": 4})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {
        "frame": 3,
        "score": 0.123457,
        "anomalous": True,
        "box": [1.5, 2.25],
        "nan": None,
        "nested": {"t": 0.333333, "name": "a.png"},
    }
    assert lines[1] == {"frame": 4}
    JsonlSink(None).write({"score": np.float64(2.0)})
    assert json.loads(capsys.readouterr().out) == {"score": 2.0}


@pytest.mark.parametrize("name", ["clip.avi", "clip.mp4"])
def test_video_sink_writes_every_frame_at_the_first_size(tmp_path, name):
    path = tmp_path / name
    sink = open_frame_sink(path, fps=5)
    assert isinstance(sink, VideoSink) and not path.exists()  # opened lazily
    with sink:
        for i in range(5):
            assert sink.write(np.full((40, 64, 3), (200, 20 * i, 20), np.uint8)) is False
        sink.write(np.zeros((20, 30, 3), np.uint8))  # another size: resized
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    capture.release()
    assert len(frames) == 6 and all(f.shape == (40, 64, 3) for f in frames)
    assert frames[0][..., 2].mean() > 150 > frames[0][..., 0].mean()  # RGB in, BGR red back


def test_folder_sink_numbers_pngs(tmp_path):
    sink = open_frame_sink(tmp_path / "frames")
    assert isinstance(sink, FolderSink)
    images = [np.full((6, 7, 3), (i, 2 * i, 3 * i), np.uint8) for i in range(3)]
    with sink:
        for image in images:
            sink.write(image)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert np.array_equal(read_image(tmp_path / "frames" / "000002.png"), images[2])


def test_window_sink_shows_bgr_and_reports_quit_keys(monkeypatch):
    shown, keys = [], iter([-1, ord("x"), ord("q"), 27])
    monkeypatch.setattr(cv2, "imshow", lambda name, image: shown.append((name, image)))
    monkeypatch.setattr(cv2, "waitKey", lambda delay: next(keys))
    sink = WindowSink("view")
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 255  # red
    assert [sink.write(image) for _ in range(4)] == [False, False, True, True]
    assert shown[0][0] == "view" and shown[0][1][0, 0].tolist() == [0, 0, 255]

    def no_gui(name, image):
        raise cv2.error("The function is not implemented")

    monkeypatch.setattr(cv2, "imshow", no_gui)
    with pytest.raises(OSError, match="cannot show a window"):
        sink.write(image)
    sink.close()


def test_annotate_overlays_the_map_and_colours_the_banner():
    image = np.full((128, 128, 3), 128, np.uint8)
    anomaly_map = np.zeros((32, 32), np.float32)
    anomaly_map[16:24, 16:24] = 1.0  # high at image rows/columns 64..96
    out = annotate(image, anomaly_map, "anomaly", 0.87)
    assert out.shape == image.shape and out.dtype == np.uint8 and (image == 128).all()
    high, low = out[70:90, 70:90].reshape(-1, 3).mean(0), out[30:50, 30:50].reshape(-1, 3).mean(0)
    assert high[0] > high[2] + 40 and low[2] > low[0] + 40  # red where high, blue where low
    assert (out[64:96, 64] == (255, 0, 0)).all() and (out[64:96, 63] != (255, 0, 0)).any(axis=1).all()  # contour

    black = np.zeros((128, 128, 3), np.uint8)
    plain = annotate(black, None, "good", None)
    assert (plain[20:] == 0).all() and plain[:15].any()  # only the banner
    text = plain[:15][plain[:15].max(axis=2) > 100]
    bad = annotate(black, None, "anomaly", 0.5)[:15]
    bad_text = bad[bad.max(axis=2) > 100]
    assert (text[:, 1] > text[:, 0]).all() and (bad_text[:, 0] > bad_text[:, 1]).all()  # green vs red


def test_latency_stats_match_numpy():
    ticks = iter(np.arange(0.0, 100.0, 0.5))
    stats = LatencyStats(clock=lambda: float(next(ticks)))
    assert stats.summary()["p50_ms"] is None and "0 frames" in format_summary(stats.summary())
    latencies = np.random.default_rng(0).uniform(0.005, 0.05, 40)
    for latency in latencies:
        stats.add(latency)
    stats.add_error()
    stats.dropped = 7
    summary = stats.summary()
    assert summary["p50_ms"] == pytest.approx(np.percentile(latencies * 1000, 50))
    assert summary["p95_ms"] == pytest.approx(np.percentile(latencies * 1000, 95))
    assert summary["mean_ms"] == pytest.approx(latencies.mean() * 1000)
    assert (summary["frames"], summary["errors"], summary["dropped"]) == (41, 1, 7)
    assert summary["elapsed_s"] == pytest.approx(41 * 0.5) and summary["fps"] == pytest.approx(2.0)
    text = format_summary(summary)
    assert text.startswith("41 frames (1 errors, 7 dropped) in 20.5 s, 2.0 fps")
    assert f"p95 {summary['p95_ms']:.1f} ms" in text
    assert summary["parts_p50_ms"] == {} and "capture to verdict" not in text


def test_latency_stats_summarise_each_part_of_a_frames_latency():
    stats = LatencyStats()
    rng = np.random.default_rng(1)
    parts = {part: rng.uniform(0.001, 0.1, 20) for part in PARTS}
    for k in range(20):
        frame = {part: float(values[k]) for part, values in parts.items()}
        stats.add(sum(frame.values()), frame)
    summary = stats.summary()
    for part, values in parts.items():
        assert summary["parts_p50_ms"][part] == pytest.approx(np.percentile(values * 1000, 50))
    text = format_summary(summary)
    assert f"batch wait {summary['parts_p50_ms']['batch_wait']:.1f}" in text and "capture to verdict" in text
