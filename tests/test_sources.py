"""runtime.sources: each kind of source, ground truth, throttling, reconnects and the latest-frame reader."""
from __future__ import annotations

import itertools
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import calibration_images
from runtime.errors import SourceError
from runtime.files import image_files
from runtime.limits import Limits
from runtime.sources import LatestFrameReader, LiveCapture, Source, open_source
from runtime.visualize import write_rgb
from helpers.gif import OPENCV_READS_GIF, write_gif

FAST = (0.01, 0.04)  # backoff in tests: 10 ms doubling to 40 ms


class FakeDevice:
    """Test double for ``cv2.VideoCapture`` (there is no camera here): connection ``i`` delivers ``plan[i]``
    frames and then fails to read; ``-1`` (or a connection past the plan) cannot be opened."""

    def __init__(self, plan, frame=None, read_delay=0.0):
        self.plan, self.opened, self.targets = list(plan), 0, []
        self.frame = np.zeros((4, 6, 3), np.uint8) if frame is None else frame  # ...: reads decode to None
        self.read_delay = read_delay

    def __call__(self, target):
        self.targets.append(target)
        frames = self.plan[self.opened] if self.opened < len(self.plan) else -1
        self.opened += 1
        return _Connection(self, frames)


class _Connection:
    def __init__(self, device, frames):
        self.device, self.left, self.released = device, frames, False

    def isOpened(self):
        return self.left >= 0 and not self.released

    def read(self):
        time.sleep(self.device.read_delay)
        if self.left <= 0 or self.released:
            return False, None
        self.left -= 1
        return True, None if self.device.frame is ... else self.device.frame.copy()

    def release(self):
        self.released = True


class Burst(Source):
    """A finite source of ``n`` tiny frames, as fast as possible (or ``delay`` apart); ``finished`` is set at its
    end; ``fail`` raises after the last frame."""

    def __init__(self, n, delay=0.0, fail=None):
        super().__init__("burst")
        self.n, self.delay, self.fail = n, delay, fail
        self.finished = threading.Event()

    def _frames(self):
        for _ in range(self.n):
            time.sleep(self.delay)
            yield self._make(image=np.zeros((2, 2, 3), np.uint8))
        self.finished.set()
        if self.fail is not None:
            raise self.fail


def _images(tmp_path, names, sub="."):
    folder = tmp_path / sub
    folder.mkdir(parents=True, exist_ok=True)
    pictures = {}
    for i, name in enumerate(names):
        pictures[name] = np.full((8, 10, 3), (i * 30, 255 - i * 30, 7), np.uint8)
        write_rgb(str(folder / name), pictures[name])
    return folder, pictures


# ---------------------------------------------------------------------------------------------- finite sources


def test_synthetic_frames_carry_ground_truth_and_repeat_per_seed():
    def take(seed):
        with open_source("synthetic", seed=seed, size=64, defect_rate=0.5) as source:
            assert not source.live
            return list(itertools.islice(source, 6))

    frames = take(3)
    assert [f.index for f in frames] == list(range(6))
    assert {f.label for f in frames} == {0, 1}
    for f in frames:
        assert f.image.shape == (64, 64, 3) and f.image.dtype == np.uint8 and f.error is None
        assert f.mask.shape == (64, 64) and f.label == int(f.mask.any()) == int(f.defect != "good")
        assert f.class_name in ("fabric", "wood", "nut", "capsule") and f.source == "synthetic"
    again, other = take(3), take(4)
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(frames, again))
    assert not np.array_equal(frames[0].image, other[0].image)


def test_folder_is_read_in_order_and_a_corrupt_file_is_an_error_frame(tmp_path):
    folder, pictures = _images(tmp_path, ["b.png", "a.png", "d.jpg", "C.PNG"], sub="test/good")
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("ignored")
    with open_source(str(folder)) as source:
        frames = list(source)
    assert [f.name for f in frames] == ["C.PNG", "a.png", "b.png", "broken.png", "d.jpg"]
    assert [f.index for f in frames] == list(range(5))
    broken = frames[3]
    assert broken.image is None and "broken.png" in broken.error
    for f in frames[:3]:
        assert f.error is None and np.array_equal(f.image, pictures[f.name])
    assert frames[4].image.shape == (8, 10, 3)  # JPEG: lossy, but decoded
    assert {f.label for f in frames} == {0}  # under a "good" folder


def test_glob_matches_in_sorted_order_and_loop_repeats(tmp_path):
    _images(tmp_path, ["x2.png", "y.png"], sub="one")
    _images(tmp_path, ["x1.png"], sub="two")
    frames = list(open_source(str(tmp_path / "*" / "x*.png")))
    assert [f.name for f in frames] == ["x2.png", "x1.png"]  # sorted by full path: one/ before two/
    assert all(f.label is None and f.image is not None for f in frames)
    looped = list(itertools.islice(open_source(str(tmp_path / "one" / "*.png"), loop=True), 5))
    assert [f.name for f in looped] == ["x2.png", "y.png"] * 2 + ["x2.png"]
    with pytest.raises(SourceError, match="matches no files"):
        open_source(str(tmp_path / "*.bmp"))


def test_video_file_is_read_to_its_end_in_rgb_and_loops(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 32))
    for _ in range(7):
        writer.write(np.full((32, 48, 3), (30, 30, 220), np.uint8))  # BGR: red
    writer.release()
    with open_source(str(path)) as source:
        frames = list(source)
    assert len(frames) == 7 and [f.index for f in frames] == list(range(7))
    assert frames[0].image.shape == (32, 48, 3) and frames[0].image[..., 0].mean() > 150 > frames[0].image[..., 2].mean()
    with open_source(str(path), loop=True) as source:
        assert len(list(itertools.islice(source, 16))) == 16


def test_unknown_specs_raise_naming_the_spec(tmp_path):
    missing = tmp_path / "nowhere.mp4"
    with pytest.raises(SourceError, match="nowhere.mp4") as info:
        open_source(str(missing))
    assert "camera index" in str(info.value) and "glob" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image files"):
        open_source(str(tmp_path / "empty"))
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 64)
    with pytest.raises(SourceError, match="junk.mp4"):
        open_source(str(tmp_path / "junk.mp4"))


def test_max_fps_spaces_finite_frames():
    with Burst(6) as source:
        source.max_fps = 50
        times = [f.time for f in source]
    assert len(times) == 6 and np.diff(times).min() >= 0.018


def test_max_fps_discards_early_live_frames():
    device = FakeDevice([30], read_delay=0.01)
    with open_source("0", max_fps=10, reconnect=False, capture_factory=device) as source:
        frames = list(source)
    assert source.live and source.skipped > 0 and len(frames) >= 2
    assert len(frames) + source.skipped == 30


# ---------------------------------------------------------------------------------------------- live sources


def test_camera_reconnects_with_backoff_then_gives_up(caplog):
    blue = np.zeros((4, 6, 3), np.uint8)
    blue[..., 0] = 255  # BGR
    device = FakeDevice([2, -1, -1, 3], frame=blue)
    caplog.set_level(logging.INFO, logger="runtime.stream")
    frames = []
    source = open_source("0", max_reconnects=3, backoff=FAST, capture_factory=device)
    with source, pytest.raises(SourceError, match=r"camera:0: lost; gave up after 3"):
        frames.extend(source)
    assert len(frames) == 5 and [f.index for f in frames] == list(range(5))
    assert frames[0].image[0, 0].tolist() == [0, 0, 255]  # converted to RGB
    assert device.targets == [0] * 7  # the first open and 6 reconnects
    lost = [r for r in caplog.records if "reconnecting in" in r.getMessage()]
    assert [r.args[2] for r in lost] == [1, 2, 3, 1, 2, 3]
    assert [r.args[1] for r in lost] == [0.01, 0.02, 0.04] * 2
    assert lost[0].getMessage() == "camera:0 lost, reconnecting in 0.0 s (attempt 1)"
    assert any("reconnected after 3 attempt(s)" in r.getMessage() for r in caplog.records)


def test_live_source_without_reconnect_ends_and_bad_frames_are_errors():
    device = FakeDevice([3], frame=...)  # frames that decode to None
    with open_source("rtsp://user:secret@cam.local:554/live", reconnect=False, capture_factory=device) as source:
        frames = list(source)
    assert device.targets == ["rtsp://user:secret@cam.local:554/live"]
    assert source.name == "rtsp://user:***@cam.local:554/live"
    assert len(frames) == 3 and all(f.image is None and "empty image" in f.error for f in frames)
    with pytest.raises(SourceError, match="camera:1: cannot open"):
        open_source("1", capture_factory=FakeDevice([-1]))


# ---------------------------------------------------------------------------------------------- reader


def test_reader_keeps_the_newest_frames_and_counts_drops():
    source = Burst(20)
    with LatestFrameReader(source, capacity=3) as reader:
        assert source.finished.wait(30)
        frames = list(reader)
    assert [f.index for f in frames] == [17, 18, 19]
    assert reader.received == 20 and reader.dropped == 17


class Lockstep(Source):
    """A source that delivers ``groups`` groups of ``size`` frames, each group only after the consumer took a frame
    of the one before (``delivered``: a group is in the reader's buffer; ``taken``: the consumer took a frame)."""

    def __init__(self, groups, size):
        super().__init__("lockstep")
        self.groups, self.size = groups, size
        self.delivered, self.taken = threading.Event(), threading.Event()

    def _frames(self):
        for _ in range(self.groups):
            for _ in range(self.size):
                yield self._make(image=np.zeros((2, 2, 3), np.uint8))
            self.delivered.set()  # resumed for the next frame: the group's last one is in the buffer
            assert self.taken.wait(30)
            self.taken.clear()


def test_slow_consumer_drops_frames_and_accounting_is_exact():
    source = Lockstep(groups=20, size=3)  # the consumer takes one frame while the source delivers three
    consumed = []
    with LatestFrameReader(source) as reader:
        for _ in range(source.groups):
            assert source.delivered.wait(30)
            source.delivered.clear()
            consumed.append(next(reader).index)
            source.taken.set()
        assert list(reader) == []  # the end of the source
    assert consumed == list(range(2, 60, 3))  # the newest frame of each group
    assert reader.dropped == 40 and reader.received == 60


def test_reader_hands_source_errors_to_the_consumer():
    source = LiveCapture(0, "camera:0", max_reconnects=0, capture_factory=FakeDevice([2]))
    with LatestFrameReader(source) as reader, pytest.raises(SourceError, match="gave up after 0"):
        for _ in reader:
            pass
    with LatestFrameReader(Burst(2, fail=RuntimeError("boom"))) as reader:
        with pytest.raises(RuntimeError, match="boom"):
            list(reader)
        assert list(reader) == []  # ended


def test_reader_close_interrupts_a_reconnect_wait():
    device = FakeDevice([1])
    reader = LatestFrameReader(open_source("0", backoff=(30.0, 30.0), capture_factory=device))
    assert next(reader).index == 0
    time.sleep(0.05)  # the thread is now waiting 30 s to reconnect
    start = time.monotonic()
    reader.close()
    assert time.monotonic() - start < 1.0
    assert list(reader) == [] and device.opened == 1


def test_captured_frames_of_any_layout_become_rgb_or_error_frames():
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 0] = 255  # blue
    cases = {
        "bgr": (bgr, [0, 0, 255]),
        "bgra": (np.dstack([bgr, np.full((4, 6), 7, np.uint8)]), [0, 0, 255]),
        "gray": (np.full((4, 6), 9, np.uint8), [9, 9, 9]),
        "16-bit": (bgr.astype(np.uint16), "uint16 pixels, expected 8-bit frames"),
        "5 channels": (np.zeros((4, 6, 5), np.uint8), r"captured shape \(4, 6, 5\)"),
        "over the limit": (np.zeros((40, 60, 3), np.uint8), "60 x 40 = 2,400 pixels, over the limit of 100"),
    }
    for name, (picture, expected) in cases.items():
        with open_source("0", reconnect=False, capture_factory=FakeDevice([1], frame=picture),
                         limits=Limits(max_pixels=100)) as source:
            (frame,) = list(source)
        if isinstance(expected, list):
            assert frame.error is None and frame.image[0, 0].tolist() == expected, name
        else:
            assert frame.image is None and re.search(f"camera:0: frame 0: .*{expected}", frame.error), name


def test_links_pipes_and_hostile_files_in_a_folder_are_error_frames(tmp_path):
    folder, _ = _images(tmp_path, ["a.png"], sub="images")
    (folder / "passwd.png").symlink_to("/etc/passwd")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "sub.png").mkdir()  # a folder is no frame
    frames = list(open_source(str(folder)))
    assert [f.name for f in frames] == ["a.png", "gone.png", "passwd.png", "pipe.png", "zero.png"]
    errors = {f.name: f.error for f in frames[1:]}
    assert "No such file" in errors["gone.png"] and "not a PNG" in errors["passwd.png"]
    assert "not a regular file" in errors["pipe.png"] and "not a regular file" in errors["zero.png"]


def test_the_product_runtime_does_not_import_the_demo_generator():
    code = ("import sys, runtime.stream, runtime.calibrate, runtime.detector; "
            "assert not {'runtime.synthetic', 'runtime.scenes'} & set(sys.modules), 'imported at start'; "
            "from runtime.sources import open_source; open_source('synthetic').close(); "
            "assert 'runtime.synthetic' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr


def test_one_image_listing_for_the_stream_calibration_and_datasets(tmp_path):
    for name in ("b.PNG", "a.jpg", ".hidden.png", "notes.txt", "c.tiff"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()  # a folder named like an image is no image
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")  # listed: reading it says what is wrong
    expected = [tmp_path / n for n in ("a.jpg", "b.PNG", "c.tiff", "dangling.png")]
    assert image_files(tmp_path) == expected
    assert image_files(tmp_path / "absent") == []
    assert calibration_images.list_images(tmp_path) == expected
    assert calibration_images.list_images(f"{tmp_path}/*") == expected  # a glob: image files only, no folders


def test_a_folder_reads_webp_and_the_first_gif_frame_and_names_the_files_it_skips(tmp_path, caplog):
    folder, pictures = _images(tmp_path, ["a.png", "b.webp"], sub="frames")
    first, second = np.full((6, 9, 3), 40, np.uint8), np.full((6, 9, 3), 200, np.uint8)
    write_gif(folder / "c.gif", [first, second])  # an animation: its first frame is read (or reported)
    (folder / "cut.webp").write_bytes((folder / "b.webp").read_bytes()[:20])
    (folder / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (folder / "notes.txt").write_text("not a frame")
    with caplog.at_level(logging.WARNING, logger="runtime.stream"), open_source(str(folder)) as source:
        frames = list(source)
    assert [f.name for f in frames] == ["a.png", "b.webp", "c.gif", "cut.webp"]
    assert np.array_equal(frames[0].image, pictures["a.png"]) and np.array_equal(frames[1].image, pictures["b.webp"])
    if OPENCV_READS_GIF:
        assert frames[2].error is None and np.array_equal(frames[2].image, first)
    else:
        assert frames[2].image is None and "without a GIF decoder" in frames[2].error
    assert frames[3].image is None and "cut.webp: not a valid WebP file" in frames[3].error
    assert f"{folder}: 2 file(s) that are not images skipped (notes.txt, photo.heic)" in caplog.text
