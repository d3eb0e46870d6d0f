"""The runtime runs where torch cannot be imported: in a fresh interpreter that refuses torch and the training /
export packages, a Detector scores a frame and ``python -m runtime.stream`` streams two."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import importlib.abc
import sys

BLOCKED = {"torch", "torchvision", "diffusers", "transformers", "timm", "safetensors", "training", "export",
           "benchmarks"}


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)
        return None


sys.meta_path.insert(0, Refuse())
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


def test_detector_and_stream_run_with_torch_blocked(model_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(model_dir), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("score ")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1] and all(r["score"] > 0 for r in records)
    assert "summary: 2 frames" in done.stderr
