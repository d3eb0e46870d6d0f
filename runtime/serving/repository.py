"""A Triton model repository for one model folder: ``<name>/config.pbtxt`` and ``<name>/<version>/model.py``.

The model is Triton's Python backend running :class:`runtime.serving.triton_model.TritonPythonModel`, which
scores with a :class:`~runtime.detector.Detector` on the model folder given in the config's parameters. The
version directory is named by the manifest's SHA-256 (its first 12 hex digits as a number), so a re-exported or
recalibrated model folder is a new version, and clients can tell which one scored them (``manifest_sha256`` in
the config's parameters).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runtime.limits import Limits
from runtime.manifest import MANIFEST, Manifest, sha256

INPUT = "frames"
OUTPUTS = ("score", "pred_score", "pred_label")  # always computed
MAP_OUTPUTS = ("anomaly_map", "pred_mask", "raw_map")  # sent when asked for
VERSION_DIGITS = 12
MODEL_PY = """\
# Written by runtime.serving.repository: Triton's Python backend stub ignores PYTHONPATH, so the serving
# environment's import path is set here.
import sys

sys.path[:0] = [path for path in {paths!r} if path not in sys.path]

from runtime.serving.triton_model import TritonPythonModel  # noqa: E402,F401 (Triton loads this class)
"""


def manifest_version(manifest: Manifest) -> tuple[int, str]:
    """``(Triton version, manifest SHA-256)``: the version is the hash's first :data:`VERSION_DIGITS` hex digits."""
    digest = sha256(manifest.root / MANIFEST)
    return int(digest[:VERSION_DIGITS], 16), digest


@dataclass(frozen=True)
class ServedModel:
    """What one Triton model serves: the model folder on its backend, and how Triton batches and replicates it."""

    model_dir: Path
    backend: str = "onnxruntime"
    device: str | None = None
    provider: str | None = None
    max_batch: int = 4
    max_queue_delay_us: int = 2000
    instances: int = 1
    limits: Limits = Limits()
    name: str = "diad"
    steps: int | None = None  # the DDIM plan (None: the manifest's; 0: the VAE-only plan)
    start_t: int | None = None

    def parameters(self, manifest: Manifest, digest: str, summary: dict) -> dict[str, str]:
        """The config's parameters: what the Python model opens, and what clients read back."""
        thresholds = manifest.thresholds
        return {
            "model_dir": str(self.model_dir.resolve()),
            "backend": self.backend,
            "device": self.device or "",
            "provider": self.provider or "",
            "max_pixels": str(self.limits.max_pixels),
            "max_side": str(self.limits.max_side),
            "steps": "" if self.steps is None else str(self.steps),
            "start_t": "" if self.start_t is None else str(self.start_t),
            "manifest_sha256": digest,
            "image_size": str(manifest.image_size),
            "calibrated": json.dumps(thresholds.calibrated),
            "summary": json.dumps(summary),
        }


def _instance_group(model: ServedModel) -> str:
    kind, _, index = (model.device or "cpu").partition(":")
    if kind == "cuda":
        return f"instance_group [{{ count: {model.instances} kind: KIND_GPU gpus: [ {int(index or 0)} ] }}]"
    return f"instance_group [{{ count: {model.instances} kind: KIND_CPU }}]"


def config_text(model: ServedModel, image_size: int, parameters: dict[str, str]) -> str:
    """``config.pbtxt``: frames ``uint8 (H, W, 3)`` of any size in, per-frame outputs, dynamic batching."""
    s = image_size
    outputs = [("score", "TYPE_FP32", [1]), ("pred_score", "TYPE_FP32", [1]), ("pred_label", "TYPE_BOOL", [1]),
               ("anomaly_map", "TYPE_FP32", [s, s]), ("pred_mask", "TYPE_BOOL", [s, s]),
               ("raw_map", "TYPE_FP32", [s, s])]
    lines = [
        f'name: "{model.name}"',
        'backend: "python"',
        f"max_batch_size: {model.max_batch}",
        f'input [{{ name: "{INPUT}" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }}]',
        "output [",
        ",\n".join(f'  {{ name: "{name}" data_type: {kind} dims: {dims} }}' for name, kind, dims in outputs),
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {model.max_queue_delay_us} }}",
        _instance_group(model),
        *(f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}' for k, v in parameters.items()),
    ]
    return "\n".join(lines) + "\n"


def write_repository(model: ServedModel, manifest: Manifest, summary: dict, root: Path,
                     import_paths: list[str]) -> int:
    """Write the model repository for ``model`` under ``root`` (replacing an older one of the same name), its
    ``model.py`` importing the runtime from ``import_paths``; returns the version."""
    version, digest = manifest_version(manifest)
    folder = root / model.name
    if folder.exists():
        for old in sorted(folder.rglob("*"), reverse=True):
            old.rmdir() if old.is_dir() else old.unlink()
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    parameters = model.parameters(manifest, digest, summary)
    (folder / "config.pbtxt").write_text(config_text(model, manifest.image_size, parameters))
    (folder / str(version) / "model.py").write_text(MODEL_PY.format(paths=import_paths))
    return version
