"""python -m runtime.stream: every kind of source end to end, JSON records, annotated outputs, faults (corrupt
frames, lost streams, missing sources and models), clean stops on SIGTERM / SIGINT, calibrated verdicts, and the
per-frame contract: every frame one verdict or error line, only the model or an output failing stops the run."""
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
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.model_folder import make_folder

from runtime import Detector
from runtime.annotation import display_size
from runtime.cli import run_cli
from runtime.manifest import Manifest, Thresholds
from runtime.records import summary_text
from runtime.sinks import PARTS
from runtime.sources import Source, open_source
from runtime.stream import main, stop_on_signals
from runtime.stream import log as stream_log
from runtime.stream_run import stream

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"preprocess", "encode", "steps", "decode", "score"}
LATENCY = {"capture_to_verdict", *PARTS}
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


def test_synthetic_feed_to_jsonl_and_video(tiny, tmp_path, capsys):
    out, video = tmp_path / "out.jsonl", tmp_path / "annotated.mp4"
    assert main(["--model", str(tiny), "--frames", "6", "--jsonl", str(out), "--save", str(video),
                 "--defect-rate", "0.5"]) == 0
    records = _lines(out.read_text())
    assert [r["frame"] for r in records] == list(range(6))
    for r in records:
        assert {"time", "source", "score", "pred_score", "label", "gt_label", "latency_ms", "class", "defect"} <= set(r)
        assert r["source"] == "synthetic" and r["gt_label"] in ("normal", "anomalous")
        assert r["label"] is None and r["pred_score"] is None  # uncalibrated
        assert set(r["latency_ms"]) == LATENCY and r["latency_ms"]["capture_to_verdict"] > 0
        assert set(r["stage_ms"]) == STAGES and r["stage_ms"]["steps"] > 0
        assert (r["gt_label"] == "normal") == (r["defect"] == "good")
    assert records[0]["time"].endswith("+00:00")
    assert _video_frames(video) == 6
    captured = capsys.readouterr()
    assert captured.out == ""  # records went to the file
    assert _summary(captured.err) == (6, 0, 0)


def test_the_vae_only_plan_streams_the_synthetic_feed(tiny, tmp_path, capsys, monkeypatch):
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    ran: list[str] = []
    real = OnnxRuntimeBackend.run_component
    monkeypatch.setattr(OnnxRuntimeBackend, "run_component", lambda self, name, *io: ran.append(name) or real(self, name, *io))
    out = tmp_path / "out.jsonl"
    assert main(["--model", str(tiny), "--steps", "0", "--frames", "4", "--jsonl", str(out)]) == 0
    records = _lines(out.read_text())
    assert [r["frame"] for r in records] == list(range(4)) and all(r["stage_ms"]["steps"] == 0 for r in records)
    assert "denoise_step" not in ran and "hint_encoder" not in ran and ran.count("vae_decoder") == 4
    err = capsys.readouterr().err
    assert _summary(err) == (4, 0, 0) and ", VAE-only (no DDIM steps), scorer " in err
    ran.clear()
    assert main(["--model", str(tiny), "--frames", "1", "--jsonl", str(out)]) == 0
    assert ran.count("denoise_step") == 3 and "DDIM 3 steps from t=399 x 1 noise draw(s)" in capsys.readouterr().err


def test_folder_with_a_corrupt_file_gives_an_error_record_and_goes_on(tiny, synthetic_data, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    pictures = sorted(synthetic_data.glob("fabric/test/*/*.png"))[:3]
    for name, picture in zip(("a.png", "c.png", "d.png"), pictures, strict=True):
        shutil.copy(picture, folder / name)
    (folder / "b.png").write_bytes(b"not a png at all")
    assert main(["--model", str(tiny), "--source", str(folder), "--save", str(tmp_path / "shown"),
                 "--time", "epoch_ms"]) == 0
    captured = capsys.readouterr()
    records = _lines(captured.out)  # standard output carries nothing but the records
    assert [r["name"] for r in records] == ["a.png", "b.png", "c.png", "d.png"]
    assert "b.png" in records[1]["error"] and "score" not in records[1]
    assert all("error" not in r and r["score"] > 0 for r in records[2:])
    assert isinstance(records[0]["time"], int) and abs(records[0]["time"] / 1000 - time.time()) < 300
    assert len(list((tmp_path / "shown").glob("*.png"))) == 4  # the error frame has a card, outputs stay in step
    assert _summary(captured.err) == (4, 1, 0)


def test_batches_score_like_single_frames_and_keep_order(tiny, synthetic_data, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for k, picture in enumerate(sorted(synthetic_data.glob("*/test/*/*.png"))[:5]):
        shutil.copy(picture, folder / f"{k}.png")
    (folder / "2b.png").write_bytes(b"")  # an empty file inside the second batch
    runs = {}
    for batch in ("1", "3"):
        assert main(["--model", str(tiny), "--source", str(folder), "--batch-size", batch, "--frames", "5"]) == 0
        captured = capsys.readouterr()
        runs[batch] = _lines(captured.out)
        assert _summary(captured.err) == (5, 1, 0)  # the frame limit counts the error frame too
    assert [r["name"] for r in runs["3"]] == ["0.png", "1.png", "2.png", "2b.png", "3.png"]
    assert "empty file" in runs["3"][3]["error"]
    for one, three in zip(runs["1"], runs["3"]):
        assert one["name"] == three["name"] and ("error" in one) == ("error" in three)
        if "score" in one:
            assert one["score"] == pytest.approx(three["score"], rel=1e-5)


def test_latency_splits_capture_to_verdict_into_its_parts(tiny_detector):
    """Issue 12.7: ``total`` mixed the frame's own time with waiting for its batch and for the frames written
    before it; now each part is its own field, and they add up to capture -> verdict."""
    records = Records()
    summary = stream(tiny_detector, open_source("synthetic", size=32), [records], frames=8, batch=4)
    for r in records:
        latency = r["latency_ms"]
        assert set(latency) == LATENCY and min(latency.values()) >= 0
        assert sum(latency[part] for part in PARTS) == pytest.approx(latency["capture_to_verdict"], rel=1e-4)
    for batch in (records[:4], records[4:]):
        assert len({r["latency_ms"]["model"] for r in batch}) == 1  # one model call per batch
        waits = [r["latency_ms"]["batch_wait"] for r in batch]
        outputs = [r["latency_ms"]["output"] for r in batch]
        assert waits == sorted(waits, reverse=True) and waits[0] > waits[-1]  # the first waits for the batch to fill
        assert outputs == sorted(outputs) and outputs[-1] > outputs[0]  # the last waits for the ones before it
    assert set(summary["parts_p50_ms"]) == set(PARTS)


def test_video_file_source_loops(tiny, tmp_path, capsys):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    for i in range(4):
        writer.write(np.full((64, 96, 3), (40 * i, 90, 160), np.uint8))
    writer.release()
    assert main(["--model", str(tiny), "--source", str(clip), "--loop", "--frames", "5"]) == 0
    records = _lines(capsys.readouterr().out)
    assert [r["frame"] for r in records] == list(range(5))
    assert all(r["source"] == str(clip) and r["gt_label"] is None for r in records)
    assert records[4]["score"] == pytest.approx(records[0]["score"], rel=1e-3)  # the replay scores alike


def test_missing_source_is_a_clear_error(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--model", str(tiny), "--source", str(tmp_path / "nothing.mp4")])
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


def test_signal_stops_cleanly_without_losing_a_verdict(tiny, tmp_path):
    """The command end to end, stopped by SIGTERM; SIGINT takes the same handler
    (``test_sigint_and_sigterm_set_the_stop_event_and_a_second_one_aborts``)."""
    sig = signal.SIGTERM
    out = tmp_path / "out.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.stream", "--model", str(tiny), "--source", "synthetic", "--jsonl",
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


def test_sigint_and_sigterm_set_the_stop_event_and_a_second_one_aborts():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # SIG_IGN in a background job
    for sig in (signal.SIGINT, signal.SIGTERM):
        stop = threading.Event()
        with stop_on_signals(stop) as received:
            signal.raise_signal(sig)
            assert stop.is_set() and received == [sig.name]
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(sig)
    assert {sig: signal.getsignal(sig) for sig in before} == before  # the handlers are put back


def test_stop_event_finishes_the_frame_in_flight(detector):
    stop = threading.Event()

    class StopAtThird(Records):
        def write(self, record: dict) -> None:
            self.append(record)
            if len(self) == 3:
                stop.set()

    records = StopAtThird()
    summary = stream(detector, open_source("synthetic"), [records], stop_event=stop)
    # the frames taken before the stop (the reader and the model work ahead of the writer) are all finished
    assert summary["stop_reason"] == "stop requested" and summary["errors"] == 0
    assert [r["frame"] for r in records] == list(range(summary["frames"])) and 3 <= summary["frames"] <= 3 + 4


class FlakyCamera:
    """Test double for ``cv2.VideoCapture``: connection ``i`` gives ``plan[i]`` small frames, then fails (and sets
    ``lost[i]``); later connections cannot be opened."""

    def __init__(self, plan: list[int]) -> None:
        self.plan, self.opened = list(plan), 0
        self.lost = [threading.Event() for _ in plan]

    def __call__(self, target):
        left = self.plan[self.opened] if self.opened < len(self.plan) else -1
        lost = self.lost[self.opened] if self.opened < len(self.plan) else threading.Event()
        self.opened += 1
        return _Connection(left, lost)


class _Connection:
    def __init__(self, left: int, lost: threading.Event) -> None:
        self.left, self.lost = left, lost

    def isOpened(self) -> bool:
        return self.left >= 0

    def read(self):
        if self.left <= 0:
            self.lost.set()
            return False, None
        self.left -= 1
        return True, np.full((48, 64, 3), 90, np.uint8)

    def release(self) -> None:
        self.left = min(self.left, 0)


def test_live_source_drops_stale_frames_reconnects_and_reports_loss(tiny_detector, caplog):
    caplog.set_level(logging.INFO, "runtime.stream")
    camera = FlakyCamera([40, 40])

    class SlowOutput(Records):
        """Writing the first record takes until the camera has delivered all 40 frames of its first connection:
        the pipeline holds a few of them, the latest-frame reader must drop the rest."""

        def write(self, record: dict) -> None:
            if not self:
                assert camera.lost[0].wait(60), "the camera's first connection never ended"
            self.append(record)

    source = open_source("0", capture_factory=camera, backoff=(0.01, 0.02), max_reconnects=2)
    records = SlowOutput()
    summary = stream(tiny_detector, source, [records], batch=2)
    assert summary["stop_reason"].startswith("source lost") and summary["errors"] == 0
    assert summary["frames"] == len(records) >= 1
    # while the first output waits, the writer, the scored queue, the backend's slot, the prepared queue and the
    # reader hold at most a batch of 2 each: of the first connection's 40 frames, 30 or more are dropped
    assert summary["dropped"] >= 30 and summary["frames"] + summary["dropped"] == 80  # every frame counted
    assert "reconnecting in" in caplog.text and "reconnected after 1 attempt" in caplog.text
    assert "gave up after 2 reconnect attempt(s)" in caplog.text


def test_calibrated_model_labels_frames(tiny, tiny_detector, tmp_path, capsys):
    frames = list(itertools.islice(open_source("synthetic", seed=5, defect_rate=0.5), 4))
    predictions = tiny_detector.predict([f.image for f in frames])
    scores = np.array([p.score for p in predictions])
    maps = np.stack([p.raw_map for p in predictions])
    calibrated = tmp_path / "calibrated"
    shutil.copytree(tiny, calibrated)
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
    # no frame is taken after the quit; those already taken are finished (window and records stay in step)
    assert summary["stop_reason"] == "viewer quit" and 2 <= summary["frames"] == viewer.frames <= 2 + 4


def test_annotated_frames_are_display_sized():
    assert display_size(np.zeros((128, 64, 3), np.uint8)).shape == (512, 256, 3)
    assert display_size(np.zeros((1080, 1920, 3), np.uint8)).shape == (540, 960, 3)
    image = np.zeros((600, 800, 3), np.uint8)
    assert display_size(image) is image


# ---------------------------------------------------------------------------- the per-frame contract (issue 11)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny real model folder of ``helpers.model_folder`` (8 x 8 images): contract tests in milliseconds."""
    return make_folder(tmp_path_factory.mktemp("tiny") / "model").root


@pytest.fixture
def tiny_detector(tiny):
    with Detector(tiny) as d:
        yield d


def _png_claiming(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose (valid) header claims ``width`` x ``height``."""
    data = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(data[12:29]).to_bytes(4, "big")
    return bytes(data)


def test_no_file_stops_the_stream_and_limits_are_error_lines(tiny, tmp_path, capsys):
    """Issue 11.1 / 11.2: a PNG header claiming 100000 x 100000 raised cv2.error out of the source (traceback,
    exit 1, the rest never scored); a multi-GB file was read whole."""
    folder = tmp_path / "images"
    folder.mkdir()
    good = cv2.imencode(".png", np.full((20, 30, 3), 90, np.uint8))[1].tobytes()
    (folder / "a.png").write_bytes(good)
    (folder / "b_bomb.png").write_bytes(_png_claiming(100_000, 100_000))
    with open(folder / "c_huge.png", "wb") as f:
        f.write(good)
        f.truncate(3 << 30)  # sparse
    (folder / "d_text.png").write_bytes(b"just text")
    (folder / "e.png").write_bytes(good)
    (folder / "f_large.png").write_bytes(cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1].tobytes())
    args = ["--model", str(tiny), "--source", str(folder), "--batch-size", "2", "--max-pixels", "1000"]
    assert main(args) == 0
    captured = capsys.readouterr()
    records = _lines(captured.out)
    assert [r["name"] for r in records] == ["a.png", "b_bomb.png", "c_huge.png", "d_text.png", "e.png", "f_large.png"]
    assert ["error" in r for r in records] == [False, True, True, True, False, True]
    bomb = "100000 x 100000 = 10,000,000,000 pixels, over the limit of 1,000 (raise it with --max-pixels"
    assert bomb in records[1]["error"]
    assert "c_huge.png: 3,221,225,472 bytes, over the file size limit" in records[2]["error"]
    assert "--max-file-mb" in records[2]["error"] and "not a PNG" in records[3]["error"]
    assert "40 x 40 = 1,600 pixels" in records[5]["error"]
    assert _summary(captured.err) == (6, 4, 0)

    assert main([*args[:-2], "--max-pixels", "1e12", "--max-side", "1000000"]) == 0  # past the limits
    records = _lines(capsys.readouterr().out)
    assert "b_bomb.png: corrupt PNG data" in records[1]["error"]  # OpenCV's own refusal, as an error line
    assert "error" not in records[5]


class Frames(Source):
    """A finite source of the given images (None: a frame the source could not read)."""

    def __init__(self, images: list) -> None:
        super().__init__("frames")
        self.images = images

    def _frames(self):
        for image in self.images:
            yield self._make(image=image) if image is not None else self._make(error="unreadable")


def test_whatever_a_frame_does_it_gives_one_line_and_the_run_goes_on(tiny_detector, monkeypatch, caplog):
    # The warning is read from the stream's own logger, whatever earlier tests did to logging's global state.
    monkeypatch.setattr(logging.root.manager, "disable", logging.NOTSET)
    monkeypatch.setattr(stream_log, "disabled", False)
    monkeypatch.setattr(stream_log, "propagate", True)
    caplog.set_level(logging.WARNING, logger=stream_log.name)
    images = [np.full((16, 16, 3), 40 * k, np.uint8) for k in range(6)]
    images[2] = None
    images[3] = np.zeros((16, 16), np.uint8)  # grayscale: explained
    prepare = tiny_detector.prepare

    def flaky_prepare(image, what="image"):
        if what.endswith("frame 4"):
            raise MemoryError("no room for this one")
        return prepare(image, what)

    def flaky_annotated(image, prediction):
        if prediction.score == pytest.approx(shown[5]):
            raise cv2.error("cannot draw")
        return np.zeros((512, 512, 3), np.uint8)

    shown = {5: tiny_detector.predict(images[5]).score}
    monkeypatch.setattr(tiny_detector, "prepare", flaky_prepare)
    monkeypatch.setattr("runtime.annotation.annotated", flaky_annotated)

    class Pictures:
        def __init__(self) -> None:
            self.count = 0

        def write(self, image) -> bool:
            self.count += 1
            return False

    records, pictures = Records(), Pictures()
    summary = stream(tiny_detector, Frames(images), [records], [pictures], batch=4)
    assert [r["frame"] for r in records] == list(range(6)) and pictures.count == 6
    errors = {r["frame"]: r["error"] for r in records if "error" in r}
    assert set(errors) == {2, 3, 4}
    assert errors[2] == "unreadable" and "grayscale" in errors[3]
    assert "frame 4: pre-processing failed (MemoryError: no room for this one)" in errors[4]
    assert "score" in records[5] and "cannot annotate" in caplog.text  # the verdict stands
    assert (summary["frames"], summary["errors"], summary["stop_reason"]) == (6, 3, "end of source")


def test_a_failing_model_or_output_stops_the_run_with_a_summary(tiny, tiny_detector, monkeypatch, capsys):
    calls = {"n": 0}
    run = tiny_detector.backend.run

    def failing_run(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return run(*args, **kwargs)

    monkeypatch.setattr(tiny_detector.backend, "run", failing_run)
    records = Records()
    summary = stream(tiny_detector, open_source("synthetic", size=32), [records], batch=2)
    assert summary["stop_reason"] == "model failed: RuntimeError: device lost"
    assert ["error" in r for r in records[:4]] == [False, False, True, True]  # the failed batch's frames: error lines
    assert all(r["error"] == "model failed: RuntimeError: device lost" for r in records[2:4])
    # frames the reader had already taken for the next batches (at most two) are error lines too, in order
    assert [r["frame"] for r in records] == list(range(len(records))) and len(records) <= 4 + 2 * 2
    assert all(r["error"] == "not scored: the stream stopped after model failed: RuntimeError: device lost"
               for r in records[4:])
    assert (summary["frames"], summary["errors"]) == (len(records), len(records) - 2)

    class BrokenDisk(Records):
        def write(self, record: dict) -> None:
            if len(self) == 3:
                raise OSError(28, "No space left on device")
            self.append(record)

    records = BrokenDisk()
    summary = stream(tiny_detector, open_source("synthetic", size=32), [records], batch=2)
    assert summary["stop_reason"] == "output failed: OSError: [Errno 28] No space left on device"
    assert summary["frames"] == len(records) == 3

    monkeypatch.setattr("runtime.backends.onnxruntime.OnnxRuntimeBackend.run", failing_run)
    calls["n"] = 1
    assert main(["--model", str(tiny), "--frames", "5"]) == 1  # the command's status says it
    err = capsys.readouterr().err
    frames, errors, _ = _summary(err)
    assert "model failed: RuntimeError: device lost" in err and 1 <= frames == errors <= 5


def test_the_summary_names_the_scorer_and_its_normal_statistics():
    model = {"preset": "tiny", "steps": 2, "start_t": 24, "draws": 2,
             "scorer": {"backbone": "tf_efficientnet_lite0", "layers": [1, 2, 3], "weights": "w.pth"}}
    summary = {"frames": 3, "errors": 0, "dropped": 0, "elapsed_s": 1.0, "fps": 3.0, "p50_ms": None,
               "image_auroc": None, "accuracy": None, "model": model, "stop_reason": "frame limit"}
    assert "scorer tf_efficientnet_lite0 layers [1, 2, 3] (ImageNet weights)" in summary_text(summary)
    model["scorer"]["statistics"] = {"kind": "joint", "scope": "shared", "channels": 64, "plan": {}}
    assert "(ImageNet weights, against joint/shared normal statistics)" in summary_text(summary)
