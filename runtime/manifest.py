"""The model folder's schema: ``manifest.json`` beside one ONNX graph (and optionally one TensorRT engine) per
component. Written by ``export``, read and verified by the runtime; torch-free.

Components and their tensors (batch axis ``B`` dynamic, all I/O float32 even in an FP16 model folder):

* ``vae_encoder``: ``image`` (B, 3, S, S) ImageNet-normalised -> ``latent`` (B, 4, s, s), posterior mean x 0.18215
* ``hint_encoder``: ``image`` -> ``hint`` (B, C, s, s), the SG network's encoded hint (once per image)
* ``denoise_step``: ``x_t``, ``hint``, ``timestep`` (B,), ``alpha_t`` (B,), ``alpha_prev`` (B,) -> ``x_prev``:
  SG network + UNet + the DDIM update, one call per step
* ``vae_decoder``: ``latent`` -> ``image``
* ``scorer``: ``image``, ``reconstruction`` -> ``anomaly_map`` (B, S, S), ``score`` (B,)
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ModelFolderError
from runtime.schedule import DDIMPlan, ddim_plan

MANIFEST = "manifest.json"
FORMAT = "diad-edge-model"
FORMAT_VERSION = 1
COMPONENTS = ("vae_encoder", "hint_encoder", "denoise_step", "vae_decoder", "scorer")
PRECISIONS = ("fp32", "fp16")


def sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(root: Path, name: str) -> dict[str, Any]:
    """``{"file", "bytes", "sha256"}`` of ``root / name``."""
    path = root / name
    return {"file": name, "bytes": path.stat().st_size, "sha256": sha256(path)}


@dataclass
class Thresholds:
    """Calibrated thresholds on the raw scores; ``min``/``max`` span the raw values for the normalised score."""

    image: float | None = None
    pixel: float | None = None
    image_min: float | None = None
    image_max: float | None = None
    pixel_min: float | None = None
    pixel_max: float | None = None
    method: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        return self.image is not None and self.pixel is not None


@dataclass
class Manifest:
    """The parsed ``manifest.json``; ``root`` is the model folder."""

    root: Path
    data: dict[str, Any]

    # -------------------------------------------------------------------------------------------- reading
    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> Manifest:
        """Read ``root/manifest.json``, check its format and that every component file exists (and, with
        ``verify``, that its size and SHA-256 match). Errors name the file and what was expected."""
        root = Path(root)
        path = root / MANIFEST
        if not root.is_dir():
            raise ModelFolderError(f"{root}: model folder not found (build one with `python -m export`)")
        if not path.is_file():
            raise ModelFolderError(f"{path}: missing; a model folder holds manifest.json and the ONNX graphs")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFolderError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFolderError(f"{path}: not a diad-edge manifest (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != FORMAT_VERSION:
            raise ModelFolderError(f"{path}: manifest version {data.get('version')}, this runtime reads {FORMAT_VERSION}")
        missing = [k for k in ("image_size", "precision", "schedule", "noise", "components") if k not in data]
        if missing:
            raise ModelFolderError(f"{path}: missing keys {missing}")
        manifest = cls(root, data)
        for name in COMPONENTS:
            manifest.check_file(manifest.component(name), verify)
        return manifest

    def check_file(self, entry: dict[str, Any], verify: bool = True) -> Path:
        """The path of a listed file; raise if it is missing or (``verify``) its size or hash differ."""
        path = self.root / entry["file"]
        if not path.is_file():
            raise ModelFolderError(f"{path}: listed in {self.root / MANIFEST} but missing")
        for extra in entry.get("external_data", []):
            self.check_file(extra, verify)
        if verify:
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise ModelFolderError(f"{path}: {size} bytes, the manifest says {entry['bytes']} (file changed?)")
            if sha256(path) != entry["sha256"]:
                raise ModelFolderError(f"{path}: SHA-256 does not match the manifest (corrupt or replaced file)")
        return path

    def component(self, name: str) -> dict[str, Any]:
        components = self.data["components"]
        if name not in components:
            raise ModelFolderError(f"{self.root / MANIFEST}: no component {name!r} (expected {COMPONENTS})")
        return components[name]

    def path(self, name: str) -> Path:
        """The ONNX file of component ``name``."""
        return self.root / self.component(name)["file"]

    # ------------------------------------------------------------------------------------------ accessors
    @property
    def image_size(self) -> int:
        return int(self.data["image_size"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.data["latent_shape"])

    @property
    def precision(self) -> str:
        return self.data["precision"]

    @property
    def max_batch(self) -> int:
        return int(self.data.get("max_batch", 8))

    @property
    def noise_seed(self) -> int:
        return int(self.data["noise"]["seed"])

    @property
    def steps(self) -> int:
        return len(self.data["schedule"]["timesteps"])

    @property
    def start_t(self) -> int:
        return int(self.data["schedule"]["start_t"])

    def plan(self, steps: int | None = None, start_t: int | None = None) -> DDIMPlan:
        """The DDIM plan: the manifest's own, or another ``steps`` / ``start_t`` from the same schedule."""
        return ddim_plan(self.steps if steps is None else steps, self.start_t if start_t is None else start_t)

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(**self.data.get("thresholds") or {})

    @property
    def engines(self) -> dict[str, Any]:
        return self.data.get("engines", {})

    # -------------------------------------------------------------------------------------------- writing
    def save(self) -> None:
        """Write ``manifest.json`` atomically (a crash never leaves half a manifest)."""
        path = self.root / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=_json_default) + "\n")
        os.replace(tmp, path)

    def set_thresholds(self, thresholds: Thresholds) -> None:
        self.data["thresholds"] = {k: v for k, v in thresholds.__dict__.items()}
        self.save()


def check_plan(manifest: Manifest) -> None:
    """The manifest's DDIM numbers must be the ones this runtime's schedule computes."""
    plan, recorded = manifest.plan(), manifest.data["schedule"]
    if list(plan.timesteps) != list(recorded["timesteps"]) or not np.allclose(plan.alphas, recorded["alphas"]):
        raise ModelFolderError(
            f"{manifest.root / MANIFEST}: DDIM timesteps/alphas differ from runtime.schedule's "
            f"(recorded {recorded['timesteps']}, computed {plan.timesteps.tolist()})"
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
