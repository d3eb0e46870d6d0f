"""The runtime runs where torch cannot be imported: in a fresh interpreter that refuses torch, the training /
export packages and onnx, a Detector scores a frame and ``python -m runtime.stream`` streams two, on the tiny DiAD's
export and on a folder of tiny ONNX graphs written without torch (what the torch-free run can build)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.model_folder import make_folder

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import sys

sys.path.insert(0, sys.argv[3])
from helpers.torch_free import BLOCKED, block

BLOCKED = BLOCKED | {"onnx"}  # the runtime reads ONNX files through onnxruntime alone
block(BLOCKED, allowed=())
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("torch imported despite the block")

import numpy as np

from runtime import Detector
from runtime.synthetic import render
from runtime.stream import main

model_dir, out = sys.argv[1], sys.argv[2]
image, _ = render("nut", np.random.default_rng(0), "scratch", 256)
with Detector(model_dir) as detector:
    prediction = detector.predict(image)
assert np.isfinite(prediction.score) and prediction.raw_map.ndim == 2, prediction
status = main(["--model", model_dir, "--frames", "2", "--jsonl", out])
loaded = sorted({name.split(".")[0] for name in sys.modules} & BLOCKED)
assert not loaded, loaded
print("score", prediction.score, "status", status)
raise SystemExit(status)
'''


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory):
    """A model folder of tiny ONNX graphs (tests/helpers/model_folder.py), built without torch."""
    return make_folder(tmp_path_factory.mktemp("tiny") / "model").root


@pytest.mark.parametrize("folder", [pytest.param("model_dir", marks=pytest.mark.torch), "onnx_folder"])
def test_detector_and_stream_run_with_torch_blocked(folder, request, tmp_path):
    out = tmp_path / "out.jsonl"
    model = request.getfixturevalue(folder)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(model), str(out), str(ROOT / "tests")], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("score ")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1] and all(r["score"] > 0 for r in records)
    assert "summary: 2 frames" in done.stderr
