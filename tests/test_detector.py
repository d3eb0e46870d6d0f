"""Detector.predict on the tiny real model folder of ``helpers.model_folder``: what it accepts, and bad arrays
explained by name and expectation (issue 11.5)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.model_folder import make_folder

from runtime import Detector
from runtime.errors import FrameError, LimitError, ModelFolderError
from runtime.limits import Limits


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    with Detector(make_folder(tmp_path_factory.mktemp("tiny") / "model").root, limits=Limits(max_pixels=10_000)) as d:
        yield d


def _frame(h: int = 10, w: int = 14, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def test_one_image_a_list_and_a_batch_array_agree(detector):
    frames = [_frame(seed=k) for k in range(3)]
    one = detector.predict(frames[0])
    listed = detector.predict(frames)
    stacked = detector.predict(np.stack(frames))
    assert np.isfinite(one.score) and len(listed) == len(stacked) == 3
    assert [p.score for p in listed] == pytest.approx([p.score for p in stacked])
    assert listed[0].score == pytest.approx(one.score)
    assert detector.predict([]) == []


BAD = {
    "empty image": (np.zeros((0, 0, 3), np.uint8), FrameError, r"image: .*got an empty image of shape \(0, 0, 3\)"),
    "grayscale 2-D": (np.zeros((16, 12), np.uint8), FrameError, r"image: .*got shape \(16, 12\) \(grayscale: convert"),
    "RGBA": (np.zeros((16, 12, 4), np.uint8), FrameError, r"got shape \(16, 12, 4\) \(RGBA: drop the alpha"),
    "float pixels": (np.zeros((16, 12, 3), np.float32), FrameError, "got dtype float32"),
    "string path": ("part.png", FrameError, "got str; read image files with runtime.preprocess.read_image"),
    "Path": (Path("part.png"), FrameError, "got PosixPath|got WindowsPath"),
    "number": (3, FrameError, "got int"),
    "5-D array": (np.zeros((1, 1, 4, 4, 3), np.uint8), FrameError, r"got shape \(1, 1, 4, 4, 3\)"),
    "one bad item in a list": ([_frame(), _frame(), np.zeros((4, 4), np.uint8)], FrameError,
                               r"images\[2\]: expected an RGB uint8 array"),
    "None in a list": ([_frame(), None], FrameError, r"images\[1\]: .*got NoneType"),
    "over max_pixels": (_frame(101, 100), LimitError, r"image: 100 x 101 = 10,100 pixels, over the limit of 10,000"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_frames_are_explained(detector, case):
    images, error, message = BAD[case]
    with pytest.raises(error, match=message):
        detector.predict(images)


def test_an_impossible_plan_is_a_model_folder_error(tmp_path):
    root = make_folder(tmp_path / "model").root
    with pytest.raises(ModelFolderError, match="cannot run DDIM steps=500, start_t=None"):
        Detector(root, steps=500)


def test_submitted_batches_come_back_in_order_whatever_their_chunks(detector):
    """``submit`` / ``collect`` over the backend's pipeline (ONNX Runtime: one slot, run at submit): a batch over
    ``max_batch`` is chunked, the oldest chunk collected when the slots are full, batches returned in order."""
    batches = [detector.preprocess([_frame(seed=10 * b + k) for k in range(n)]) for b, n in enumerate((6, 1, 9))]
    expected = [detector.run(batch).score for batch in batches]
    for batch in batches:
        detector.submit(batch)
    assert detector.pending == 3
    for batch, scores in zip(batches, expected):
        out = detector.collect()
        assert len(out.score) == len(batch) and out.score == pytest.approx(scores)
    with pytest.raises(RuntimeError, match="without a submitted batch"):
        detector.collect()
