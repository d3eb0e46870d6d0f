"""python -m runtime.stream: every kind of source end to end, JSON records, annotated outputs, faults (corrupt
frames, lost streams, missing sources and models), clean stops on SIGTERM / SIGINT, and calibrated verdicts."""
from __future__ import annotations

import itertools
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import Detector
from runtime.cli import run_cli
from runtime.manifest import Manifest, Thresholds
from runtime.sources import open_source
from runtime.stream import display_size, main, stream

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"preprocess", "encode", "steps", "decode", "score", "total"}
SUMMARY = re.compile(r"summary: (\d+) frames \((\d+) errors, (\d+) dropped\)")


class Records(list):
    """A record sink that keeps the records."""

    write = list.append


@pytest.fixture(scope="module")
def detector(model_dir):
    with Detector(model_dir) as d:
        yield d


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def _summary(stderr: str) -> tuple[int, int, int]:
    match = SUMMARY.search(stderr)
    assert match, stderr
    return tuple(int(g) for g in match.groups())


def _video_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_synthetic_feed_to_jsonl_and_video(model_dir, tmp_path, capsys):
    out, video = tmp_path / "out.jsonl", tmp_path / "annotated.mp4"
    assert main(["--model", str(model_dir), "--frames", "6", "--jsonl", str(out), "--save", str(video),
                 "--defect-rate", "0.5"]) == 0
    records = _lines(out.read_text())
    assert [r["frame"] for r in records] == list(range(6))
    for r in records:
        assert {"time", "source", "score", "pred_score", "label", "gt_label", "latency_ms", "class", "defect"} <= set(r)
        assert r["source"] == "synthetic" and r["gt_label"] in ("normal", "anomalous")
        assert r["label"] is None and r["pred_score"] is None  # uncalibrated
        assert set(r["latency_ms"]) == STAGES and r["latency_ms"]["total"] > 0
        assert (r["gt_label"] == "normal") == (r["defect"] == "good")
    assert records[0]["time"].endswith("+00:00")
    assert _video_frames(video) == 6
    captured = capsys.readouterr()
    assert captured.out == ""  # records went to the file
    assert _summary(captured.err) == (6, 0, 0)


def test_folder_with_a_corrupt_file_gives_an_error_record_and_goes_on(model_dir, synthetic_data, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    pictures = sorted(synthetic_data.glob("fabric/test/*/*.png"))[:3]
    for name, picture in zip(("a.png", "c.png", "d.png"), pictures, strict=True):
        shutil.copy(picture, folder / name)
    (folder / "b.png").write_bytes(b"not a png at all")
    assert main(["--model", str(model_dir), "--source", str(folder), "--save", str(tmp_path / "shown"),
                 "--time", "epoch_ms"]) == 0
    captured = capsys.readouterr()
    records = _lines(captured.out)  # standard output carries nothing but the records
    assert [r["name"] for r in records] == ["a.png", "b.png", "c.png", "d.png"]
    assert "b.png" in records[1]["error"] and "score" not in records[1]
    assert all("error" not in r and r["score"] > 0 for r in records[2:])
    assert isinstance(records[0]["time"], int) and abs(records[0]["time"] / 1000 - time.time()) < 300
    assert len(list((tmp_path / "shown").glob("*.png"))) == 4  # the error frame has a card, outputs stay in step
    assert _summary(captured.err) == (4, 1, 0)


def test_batches_score_like_single_frames_and_keep_order(model_dir, synthetic_data, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for k, picture in enumerate(sorted(synthetic_data.glob("*/test/*/*.png"))[:5]):
        shutil.copy(picture, folder / f"{k}.png")
    (folder / "2b.png").write_bytes(b"")  # an empty file inside the second batch
    runs = {}
    for batch in ("1", "3"):
        assert main(["--model", str(model_dir), "--source", str(folder), "--batch", batch, "--frames", "5"]) == 0
        captured = capsys.readouterr()
        runs[batch] = _lines(captured.out)
        assert _summary(captured.err) == (5, 1, 0)  # the frame limit counts the error frame too
    assert [r["name"] for r in runs["3"]] == ["0.png", "1.png", "2.png", "2b.png", "3.png"]
    assert "empty file" in runs["3"][3]["error"]
    for one, three in zip(runs["1"], runs["3"]):
        assert one["name"] == three["name"] and ("error" in one) == ("error" in three)
        if "score" in one:
            assert one["score"] == pytest.approx(three["score"], rel=1e-5)


def test_video_file_source_loops(model_dir, tmp_path, capsys):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    for i in range(4):
        writer.write(np.full((64, 96, 3), (40 * i, 90, 160), np.uint8))
    writer.release()
    assert main(["--model", str(model_dir), "--source", str(clip), "--loop", "--frames", "5"]) == 0
    records = _lines(capsys.readouterr().out)
    assert [r["frame"] for r in records] == list(range(5))
    assert all(r["source"] == str(clip) and r["gt_label"] is None for r in records)
    assert records[4]["score"] == pytest.approx(records[0]["score"], rel=1e-3)  # the replay scores alike


def test_missing_source_is_a_clear_error(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--model", str(model_dir), "--source", str(tmp_path / "nothing.mp4")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "nothing.mp4: no such file" in err and "camera index" in err


def test_missing_model_folder_says_how_to_build_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--frames", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "models/tiny" in err and "make demo" in err and "python -m export --run RUN" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_without_losing_a_verdict(model_dir, tmp_path, sig):
    out = tmp_path / "out.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.stream", "--model", str(model_dir), "--source", "synthetic", "--jsonl",
         str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not (out.exists() and out.read_text().count("\n") >= 2):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(sig)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    frames, errors, _ = _summary(err)
    records = _lines(out.read_text())  # every line complete
    assert len(records) == frames >= 2 and errors == 0
    assert f"stopped by {sig.name}" in err and "stop requested" in err
    assert "no thresholds" in err  # logs reach standard error


def test_stop_event_finishes_the_frame_in_flight(detector):
    stop = threading.Event()

    class StopAtThird(Records):
        def write(self, record: dict) -> None:
            self.append(record)
            if len(self) == 3:
                stop.set()

    records = StopAtThird()
    summary = stream(detector, open_source("synthetic"), [records], stop_event=stop)
    assert len(records) == summary["frames"] == 3 and summary["stop_reason"] == "stop requested"


class FlakyCamera:
    """Test double for ``cv2.VideoCapture``: connection ``i`` gives ``plan[i]`` small frames, ``delay`` s apart,
    then fails; later connections cannot be opened."""

    def __init__(self, plan: list[int], delay: float = 0.005) -> None:
        self.plan, self.delay, self.opened = list(plan), delay, 0

    def __call__(self, target):
        left = self.plan[self.opened] if self.opened < len(self.plan) else -1
        self.opened += 1
        return _Connection(left, self.delay)


class _Connection:
    def __init__(self, left: int, delay: float) -> None:
        self.left, self.delay = left, delay

    def isOpened(self) -> bool:
        return self.left >= 0

    def read(self):
        time.sleep(self.delay)
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.full((48, 64, 3), 90, np.uint8)

    def release(self) -> None:
        self.left = min(self.left, 0)


def test_live_source_drops_stale_frames_reconnects_and_reports_loss(detector, caplog):
    caplog.set_level(logging.INFO, "runtime.stream")
    source = open_source("0", capture_factory=FlakyCamera([40, 40]), backoff=(0.01, 0.02), max_reconnects=2)
    records = Records()
    summary = stream(detector, source, [records])
    assert summary["stop_reason"].startswith("source lost") and summary["errors"] == 0
    assert summary["frames"] == len(records) >= 1
    assert summary["dropped"] > 0 and summary["frames"] + summary["dropped"] == 80  # every frame accounted for
    assert "reconnecting in" in caplog.text and "reconnected after 1 attempt" in caplog.text
    assert "gave up after 2 reconnect attempt(s)" in caplog.text


def test_calibrated_model_labels_frames(model_dir, detector, tmp_path, capsys):
    frames = list(itertools.islice(open_source("synthetic", seed=5, defect_rate=0.5), 4))
    predictions = detector.predict([f.image for f in frames])
    scores = np.array([p.score for p in predictions])
    maps = np.stack([p.raw_map for p in predictions])
    calibrated = tmp_path / "calibrated"
    shutil.copytree(model_dir, calibrated)
    thresholds = Thresholds(image=float(np.median(scores)), pixel=float(np.median(maps)),
                            image_min=float(scores.min()), image_max=float(scores.max()),
                            pixel_min=float(maps.min()), pixel_max=float(maps.max()), method="test")
    Manifest.load(calibrated).set_thresholds(thresholds)

    out = tmp_path / "out.jsonl"
    assert main(["--model", str(calibrated), "--seed", "5", "--defect-rate", "0.5", "--frames", "4",
                 "--jsonl", str(out), "--save", str(tmp_path / "shown")]) == 0
    records = _lines(out.read_text())
    assert [r["score"] for r in records] == pytest.approx(scores.tolist(), rel=1e-4)
    for r, score in zip(records, scores, strict=True):
        assert r["label"] == ("anomalous" if score >= thresholds.image else "normal")
        assert 0.0 <= r["pred_score"] <= 1.0 and (r["pred_score"] >= 0.5) == (r["label"] == "anomalous")
    assert {r["label"] for r in records} == {"anomalous", "normal"}
    assert len(list((tmp_path / "shown").glob("*.png"))) == 4

    err = capsys.readouterr().err
    accuracy = np.mean([r["label"] == r["gt_label"] for r in records])
    assert f"verdict accuracy {accuracy:.3f}" in err
    assert ("image AUROC" in err) == ({r["gt_label"] for r in records} == {"anomalous", "normal"})


def test_viewer_quit_stops_the_stream(detector):
    class QuitOnSecond:  # stands in for a WindowSink where q is pressed on the second frame
        def __init__(self) -> None:
            self.frames = 0

        def write(self, image: np.ndarray) -> bool:
            self.frames += 1
            assert image.shape == (512, 512, 3)
            return self.frames == 2

    viewer = QuitOnSecond()
    summary = stream(detector, open_source("synthetic"), frame_sinks=[viewer])
    assert summary["frames"] == viewer.frames == 2 and summary["stop_reason"] == "viewer quit"


def test_annotated_frames_are_display_sized():
    assert display_size(np.zeros((128, 64, 3), np.uint8)).shape == (512, 256, 3)
    assert display_size(np.zeros((1080, 1920, 3), np.uint8)).shape == (540, 960, 3)
    image = np.zeros((600, 800, 3), np.uint8)
    assert display_size(image) is image
