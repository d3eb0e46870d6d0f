"""The model folder's ``manifest.json``, every field defined once here (:data:`SCHEMA`: names, types and ranges,
required keys, the defaults readers take for absent ones): written by :func:`write_manifest` (``export``), read and
verified by :class:`Manifest`; torch-free. The manifest lists one ONNX graph per component (:mod:`runtime.component_io`:
the components and their tensors) and optionally TensorRT engines, one per TensorRT version and GPU architecture."""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from runtime.class_thresholds import DESCRIPTOR_SIZE
from runtime.component_io import BATCH_AXIS, COMPONENT_IO, COMPONENTS, DRAW_COMPONENTS, expected_tensors
from runtime.errors import ModelFolderError
from runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD
from runtime.schedule import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, DDIMPlan, ddim_plan, noise_draws
from runtime.schema import (
    Check,
    SchemaError,
    anything,
    array,
    boolean,
    either,
    integer,
    mapping,
    nullable,
    number,
    obj,
    shown,
    string,
)

__all__ = [
    "BETA_SCHEDULE", "FORMAT", "FORMAT_VERSION", "MANIFEST", "MAX_BATCH", "MAX_DRAWS", "MAX_ENGINE_TARGETS",
    "MAX_HINT_VALUES", "MAX_LATENT_VALUES", "MAX_MANIFEST_BYTES", "NOISE_GENERATOR", "NOISE_POLICY", "PRECISIONS",
    "RESIZE", "SCHEMA", "Manifest", "Thresholds", "component_entry", "creation_time", "file_entry", "sha256",
    "write_manifest",
]

MANIFEST = "manifest.json"
FORMAT = "diad-edge-model"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")  # int8: dynamic quantisation of an FP32 folder (export.quantize)
MAX_MANIFEST_BYTES = 64 << 20
MAX_BATCH = 1024
MAX_DRAWS = 64  # noise draws per image: the denoiser runs on batch x draws latents
MAX_LATENT_VALUES = 1 << 22  # per image: the fixed noise and each latent buffer (16 MiB of float32)
MAX_HINT_VALUES = 1 << 24
MAX_ENGINE_TARGETS = 64  # engines per component: one per (TensorRT version, compute capability)
BETA_SCHEDULE = "scaled_linear"  # runtime.schedule's betas
RESIZE = "pil-bilinear-antialias"  # runtime.preprocess's resize
NOISE_POLICY = "fixed"  # every image gets the same seeded draws
NOISE_GENERATOR = ("runtime.schedule.noise_draws: numpy.random.default_rng(seed).standard_normal("
                   "(ceil(draws / 2), *latent_shape), float32), each draw followed by its negative")


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


def component_entry(root: Path, files: Sequence[str], tensors: Mapping[str, dict]) -> dict[str, Any]:
    """A component's entry: its graph ``files[0]`` (:func:`file_entry`), the external data files after it, and its
    ``tensors`` (``inputs`` and ``outputs``, name -> shape: :func:`expected_tensors`)."""
    return {**file_entry(root, files[0]), "external_data": [file_entry(root, name) for name in files[1:]], **tensors}


def creation_time() -> str:
    """The ``created`` value of a manifest written now (UTC, to the second)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _file_name(value: Any, where: str) -> None:
    """A file inside the model folder: a relative path without ``..``, backslashes or NUL."""
    string(max_length=255)(value, where)
    parts = value.split("/")
    if not value or value.startswith("/") or "\\" in value or "\0" in value or any(p in ("", ".", "..") for p in parts):
        raise SchemaError(f"{where}: {shown(value)} is not a file name inside the model folder (expected a relative "
                          "path without '..', e.g. \"scorer.onnx\")")


def _threshold(check: Check) -> Any:
    """A :class:`Thresholds` field, ``None`` unless calibrated, whose manifest value ``check`` accepts."""
    return field(default=None, metadata={"check": check})


_CLASS_RULE = obj({
    "name": string(max_length=256),
    **{name: number() for name in ("image", "image_min", "image_max")},
    "centre": array(number(), DESCRIPTOR_SIZE, DESCRIPTOR_SIZE),
})


@dataclass
class Thresholds:
    """Calibrated thresholds on the raw scores; ``min``/``max`` span the raw values for the normalised score. The
    fields are the manifest's ``thresholds`` keys, each checked by its metadata's ``check``."""

    image: float | None = _threshold(nullable(number()))
    pixel: float | None = _threshold(nullable(number()))
    image_min: float | None = _threshold(nullable(number()))
    image_max: float | None = _threshold(nullable(number()))
    pixel_min: float | None = _threshold(nullable(number()))
    pixel_max: float | None = _threshold(nullable(number()))
    method: str | None = _threshold(nullable(string(max_length=64)))
    details: dict[str, Any] = field(default_factory=dict, metadata={"check": mapping(anything)})
    classes: list[dict[str, Any]] | None = _threshold(nullable(array(_CLASS_RULE, 1, 4096)))  # one rule per class
    # the descriptors' spread (runtime.class_thresholds.assign)
    class_scale: list[float] | None = _threshold(nullable(array(number(1e-12), DESCRIPTOR_SIZE, DESCRIPTOR_SIZE)))

    @property
    def calibrated(self) -> bool:
        return self.image is not None and self.pixel is not None

    def image_rule(self, class_name: str | None = None) -> tuple[float, float, float]:
        """``(threshold, min, max)`` of the image score for ``class_name`` (None: the one for all classes)."""
        rule = next((c for c in self.classes or [] if c["name"] == class_name), None) if class_name else None
        source = rule if rule is not None else self.__dict__
        return source["image"], source["image_min"], source["image_max"]


_FILE = {"file": _file_name, "bytes": integer(0, 1 << 50), "sha256": string(pattern="[0-9a-f]{64}")}
_DIMENSION = either(string([BATCH_AXIS]), integer(1, 1 << 16), expected=f'"{BATCH_AXIS}" or an integer in [1, 65536]')
_TENSORS = mapping(array(_DIMENSION, 1, 8), max_length=16)
_SHAPE = array(integer(1, 4096), 3, 3)
_ALPHAS = array(number(0, 1), 0, NUM_TRAIN_TIMESTEPS)  # empty: the VAE-only plan
_COMPONENT = obj({**_FILE, "inputs": _TENSORS, "outputs": _TENSORS}, {"external_data": array(obj(_FILE), 0, 1024)})
_ENGINE = obj(
    {**_FILE, "tensorrt": string(max_length=64), "compute_capability": string(pattern=r"\d{1,3}\.\d{1,3}")},
    {"profile": mapping(obj({k: array(integer(1, 1 << 16), 1, 8) for k in ("min", "opt", "max")}), max_length=16),
     "optimization_level": integer(0, 5)},
)
_THRESHOLDS = obj({}, {f.name: f.metadata["check"] for f in fields(Thresholds)})
_QUANTIZATION = obj(
    {"method": string(max_length=256), "components": array(string(COMPONENTS), 1, len(COMPONENTS)),
     "op_types": array(string(max_length=64), 1, 64)},
    {"weights": string(max_length=64), "activations": string(max_length=64), "per_channel": boolean,
     "reduce_range": boolean, "parity": mapping(number())},
)
_STATISTICS = obj(  # the scorer's normal statistics (training.models.normal_statistics), fitted for one plan
    {"kind": string(["residual", "joint"]), "scope": string(["position", "shared"]), "channels": integer(1, 4096),
     "plan": obj({"steps": integer(0, NUM_TRAIN_TIMESTEPS), "start_t": integer(0, NUM_TRAIN_TIMESTEPS - 1)},
                 {"draws": integer(1, MAX_DRAWS)})},
    {"images": integer(1, 2**31), "data": string()},
)
_NOISE = obj({"policy": string([NOISE_POLICY]), "seed": integer(0, 2**63 - 1)},
             {"generator": string(), "shape": _SHAPE, "draws": integer(1, MAX_DRAWS)},
             defaults={"draws": 1})  # manifests from before several draws per image: one
SCHEMA = obj(
    {
        "format": string([FORMAT]),
        "version": integer(FORMAT_VERSION, FORMAT_VERSION),
        "image_size": integer(8, 4096),
        "latent_shape": _SHAPE,
        "hint_shape": _SHAPE,
        "precision": string(PRECISIONS),
        "max_batch": integer(1, MAX_BATCH),
        "schedule": obj(
            {"start_t": integer(0, NUM_TRAIN_TIMESTEPS - 1),  # 0 with no timesteps: the VAE-only plan
             "timesteps": array(integer(0, NUM_TRAIN_TIMESTEPS - 1), 0, NUM_TRAIN_TIMESTEPS),
             "alphas": _ALPHAS, "alphas_prev": _ALPHAS},
            {"start_alpha": number(0, 1), "beta_schedule": string([BETA_SCHEDULE]), "beta_start": number(0, 1),
             "beta_end": number(0, 1), "num_train_timesteps": integer(NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS),
             "eta": number(0, 0)},
        ),
        "noise": _NOISE,
        "components": obj({name: _COMPONENT for name in COMPONENTS}, {name: _COMPONENT for name in DRAW_COMPONENTS}),
    },
    {
        "created": string(max_length=64),
        "source": string(),
        "preset": string(max_length=64),
        "injection": string(max_length=64),
        "normalization": obj({"mean": array(number(0, 1), 3, 3), "std": array(number(1e-6, 10), 3, 3),
                              "resize": string(max_length=64)}),
        "opset": integer(1, 1000),
        "scorer": obj({"backbone": string(max_length=256), "layers": array(integer(0, 64), 1, 16),
                       "weights": nullable(string())}, {"statistics": _STATISTICS}),
        "engines": obj({}, {name: array(_ENGINE, 1, MAX_ENGINE_TARGETS) for name in COMPONENT_IO}),
        "thresholds": _THRESHOLDS,
        "versions": mapping(string(max_length=256), max_length=256),
        "quantization": _QUANTIZATION,
    },
    defaults={"engines": {}, "thresholds": {}},
)
"""The manifest's schema: types, ranges, required keys, defaults; an unknown key is an error that names it."""


def write_manifest(
    root: Path, *, preset: str, image_size: int, latent_shape: Sequence[int], hint_shape: Sequence[int],
    injection: str, precision: str, opset: int, max_batch: int, plan: DDIMPlan, noise_seed: int, draws: int,
    backbone: str, layers: Sequence[int], weights: str | None, statistics: Mapping[str, Any] | None,
    components: Mapping[str, dict], versions: Mapping[str, str], source: str = "",
) -> Manifest:
    """Write a new model folder's ``manifest.json`` into ``root`` (validated; no engines or thresholds yet) and
    return it: ``export``'s values with the preprocessing, DDIM schedule and noise rule this runtime applies.
    ``backbone`` / ``layers`` / ``weights`` / ``statistics``: the scorer's (statistics: its normal statistics, None
    without); ``components``: per graph its :func:`component_entry`, in :data:`COMPONENT_IO`'s order."""
    data = {
        "format": FORMAT, "version": FORMAT_VERSION, "created": creation_time(), "source": source, "preset": preset,
        "image_size": image_size, "latent_shape": list(latent_shape), "hint_shape": list(hint_shape),
        "injection": injection,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "resize": RESIZE},
        "precision": precision, "opset": opset, "max_batch": max_batch,
        "schedule": {"beta_schedule": BETA_SCHEDULE, "beta_start": BETA_START, "beta_end": BETA_END,
                     "num_train_timesteps": NUM_TRAIN_TIMESTEPS, "eta": 0.0, **plan.to_dict()},
        "noise": {"policy": NOISE_POLICY, "seed": noise_seed, "generator": NOISE_GENERATOR, "shape": list(latent_shape),
                  "draws": draws},
        "scorer": {"backbone": backbone, "layers": list(layers), "weights": weights,
                   **({"statistics": dict(statistics)} if statistics is not None else {})},
        "components": dict(components), "engines": {}, "thresholds": {}, "versions": dict(versions),
    }
    manifest = Manifest(root, data)
    manifest.save()
    return manifest


@dataclass
class Manifest:
    """The parsed ``manifest.json``; ``root`` is the model folder."""

    root: Path
    data: dict[str, Any]

    # -------------------------------------------------------------------------------------------- reading
    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> Manifest:
        """Read ``root/manifest.json`` and validate it (:data:`SCHEMA`, the tensors each component must have,
        the DDIM plan, the thresholds) and every file it lists: inside the folder and present, and with ``verify``
        of the listed size and SHA-256. All of it before any graph is opened; errors name the file and what was
        expected."""
        root = Path(root)
        path = root / MANIFEST
        if not root.is_dir():
            raise ModelFolderError(f"{root}: model folder not found (build one with `python -m export`)")
        if not path.is_file():
            raise ModelFolderError(f"{path}: missing; a model folder holds manifest.json and the ONNX graphs")
        data = _read_json(path)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFolderError(f"{path}: not a diad-edge manifest (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != FORMAT_VERSION:
            raise ModelFolderError(f"{path}: manifest version {shown(data.get('version'))}, this runtime reads "
                                   f"{FORMAT_VERSION}")
        _upgrade_engines(data)
        manifest = cls(root, data)
        manifest.validate()
        for entry in manifest.files():
            manifest.file_path(entry)
        for name in manifest.components:
            manifest.check_file(manifest.component(name), verify)
        return manifest

    def validate(self) -> None:
        """Raise :class:`ModelFolderError` unless ``data`` fits :data:`SCHEMA` and is consistent."""
        try:
            SCHEMA(self.data, "")
            _check_consistency(self.data)
        except SchemaError as exc:
            raise ModelFolderError(f"{self.root / MANIFEST}: {exc}") from None
        _check_plan(self)

    def files(self) -> list[dict[str, Any]]:
        """Every file entry: the components', their external data's and the engines'."""
        entries = [self.component(name) for name in self.components]
        entries += [engine for targets in self.engines.values() for engine in targets]
        return entries + [extra for entry in entries for extra in entry.get("external_data", [])]

    def file_path(self, entry: dict[str, Any]) -> Path:
        """The path of a listed file; :class:`ModelFolderError` when it leads out of the model folder."""
        path = self.root / entry["file"]
        try:
            target, inside = path.resolve(), self.root.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise ModelFolderError(f"{path}: listed in {self.root / MANIFEST} but cannot be resolved ({exc})") from None
        if not target.is_relative_to(inside):
            raise ModelFolderError(f"{path}: listed in {self.root / MANIFEST} but leads out of the model folder "
                                   f"(to {target}); every file must lie inside it")
        return path

    def check_file(self, entry: dict[str, Any], verify: bool = True) -> Path:
        """The path of a listed file; raise if it is missing or (``verify``) its size or hash differ."""
        path = self.file_path(entry)
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

    @property
    def components(self) -> tuple[str, ...]:
        """The components this folder holds, in :data:`COMPONENT_IO`'s order: :data:`COMPONENTS`, and
        :data:`DRAW_COMPONENTS` where it was exported with them."""
        return tuple(name for name in COMPONENT_IO if name in self.data["components"])

    @property
    def has_draw_graphs(self) -> bool:
        """Whether the folder holds :data:`DRAW_COMPONENTS`, so noising and the mean over draws run on the device."""
        return all(name in self.data["components"] for name in DRAW_COMPONENTS)

    def component(self, name: str) -> dict[str, Any]:
        components = self.data["components"]
        if name in DRAW_COMPONENTS and name not in components:
            raise ModelFolderError(f"{self.root / MANIFEST}: no {name} graph: the folder was exported before the noise "
                                   "draws stayed on the device; add it: python -m export.draw_graphs --model "
                                   f"{self.root}")
        if name not in components:
            raise ModelFolderError(f"{self.root / MANIFEST}: no component {name!r} (expected {COMPONENTS})")
        return components[name]

    def path(self, name: str) -> Path:
        """The ONNX file of component ``name``."""
        return self.file_path(self.component(name))

    # ------------------------------------------------------------------------------------------ accessors
    @property
    def image_size(self) -> int:
        return int(self.data["image_size"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.data["latent_shape"])

    @property
    def hint_shape(self) -> tuple[int, int, int]:
        return tuple(self.data["hint_shape"])

    @property
    def precision(self) -> str:
        return self.data["precision"]

    @property
    def max_batch(self) -> int:
        return int(self.data["max_batch"])

    @property
    def noise_seed(self) -> int:
        return int(self.data["noise"]["seed"])

    @property
    def draws(self) -> int:
        """Noise draws per image, their sample latents averaged (1 where the manifest predates the field)."""
        return int(_NOISE.get(self.data["noise"], "draws"))

    @property
    def step_max_batch(self) -> int:
        """The largest batch of ``denoise_step``: every image's latent once per noise draw."""
        return self.max_batch * self.draws

    def noise(self) -> np.ndarray:
        """The fixed noise draws ``(draws, *latent_shape)`` (:func:`runtime.schedule.noise_draws`)."""
        return noise_draws(self.latent_shape, self.noise_seed, self.draws)

    @property
    def steps(self) -> int:
        return len(self.data["schedule"]["timesteps"])

    @property
    def start_t(self) -> int:
        """The start timestep of plans made from this manifest: the recorded one, or the reference's (999) where
        the manifest records the VAE-only plan (start_t 0), so that ``plan(steps=N)`` switches back to DDIM."""
        recorded = int(self.data["schedule"]["start_t"])
        return recorded if recorded else NUM_TRAIN_TIMESTEPS - 1

    def plan(self, steps: int | None = None, start_t: int | None = None) -> DDIMPlan:
        """The DDIM plan: the manifest's own, or another ``steps`` / ``start_t`` from the same schedule (``steps``
        0: the VAE-only plan, :func:`runtime.schedule.ddim_plan`)."""
        return ddim_plan(self.steps if steps is None else steps, self.start_t if start_t is None else start_t)

    def step_plan(self) -> DDIMPlan:
        """The plan that feeds ``denoise_step``'s schedule inputs outside inference (checks, benchmarks, parity):
        the manifest's, or where that is VAE-only (no step), the default DDIM plan from :attr:`start_t`."""
        plan = self.plan()
        return ddim_plan(start_t=self.start_t) if plan.vae_only else plan

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(**SCHEMA.get(self.data, "thresholds"))

    @property
    def engines(self) -> dict[str, list[dict[str, Any]]]:
        """Per component, its engines: one entry per (TensorRT version, compute capability)."""
        return SCHEMA.get(self.data, "engines")

    def engine(self, component: str, trt_version: str, capability: str) -> dict[str, Any] | None:
        """``component``'s engine entry for TensorRT ``trt_version`` on compute capability ``capability``."""
        return next((entry for entry in self.engines.get(component, [])
                     if (entry["tensorrt"], entry["compute_capability"]) == (trt_version, capability)), None)

    def set_engine(self, component: str, entry: dict[str, Any]) -> None:
        """Record ``entry`` as ``component``'s engine for its target, replacing the one built for the same TensorRT
        version and compute capability and keeping the others (not saved: call :meth:`save`)."""
        targets = self.data.setdefault("engines", {}).setdefault(component, [])
        targets[:] = [e for e in targets if _target(e) != _target(entry)] + [entry]

    # -------------------------------------------------------------------------------------------- writing
    def save(self) -> None:
        """Validate and write ``manifest.json`` atomically (a crash never leaves half a manifest)."""
        text = json.dumps(self.data, indent=2, default=_json_default) + "\n"
        Manifest(self.root, json.loads(text)).validate()
        path = self.root / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def set_thresholds(self, thresholds: Thresholds) -> None:
        self.data["thresholds"] = {k: v for k, v in thresholds.__dict__.items()}
        self.save()


def _check_plan(manifest: Manifest) -> None:
    """The manifest's DDIM numbers must be the ones this runtime's schedule computes (none for the VAE-only
    plan)."""
    recorded = manifest.data["schedule"]
    try:
        plan = manifest.plan()
    except ValueError as exc:
        raise ModelFolderError(f"{manifest.root / MANIFEST}: schedule: {exc}") from None
    same = list(plan.timesteps) == recorded["timesteps"] and all(
        len(recorded[key]) == len(values) and np.allclose(values, recorded[key])
        for key, values in (("alphas", plan.alphas), ("alphas_prev", plan.alphas_prev))
    ) and np.isclose(recorded.get("start_alpha", plan.start_alpha), plan.start_alpha)
    if not same:
        raise ModelFolderError(
            f"{manifest.root / MANIFEST}: DDIM timesteps/alphas differ from runtime.schedule's "
            f"(recorded {shown(recorded['timesteps'])}, computed {plan.timesteps.tolist()})"
        )


def _target(engine: dict[str, Any]) -> tuple[str, str]:
    return engine["tensorrt"], engine["compute_capability"]


def _upgrade_engines(data: Any) -> None:
    """Manifests written before engines were kept per target hold one engine object per component: make each a
    one-entry list (the next save writes the current form)."""
    engines = data.get("engines") if isinstance(data, dict) else None
    if isinstance(engines, dict):
        for name, entry in engines.items():
            if isinstance(entry, dict):
                engines[name] = [entry]


def _read_json(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ModelFolderError(f"{path}: {size} bytes, a manifest holds at most {MAX_MANIFEST_BYTES}")
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFolderError(f"{path}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None


def _check_consistency(data: dict[str, Any]) -> None:
    """What :data:`SCHEMA` cannot say alone: tensor shapes agree across keys and thresholds normalise."""
    for key, limit in (("latent_shape", MAX_LATENT_VALUES), ("hint_shape", MAX_HINT_VALUES)):
        if math.prod(data[key]) > limit:
            raise SchemaError(f"{key}: {data[key]} holds more than {limit} values per image")
    if "shape" in data["noise"] and data["noise"]["shape"] != data["latent_shape"]:
        raise SchemaError(f"noise.shape: expected latent_shape {data['latent_shape']}, got {data['noise']['shape']}")
    expected = expected_tensors(data["image_size"], data["latent_shape"], data["hint_shape"],
                                _NOISE.get(data["noise"], "draws"))
    if any(name in data["components"] for name in DRAW_COMPONENTS) and not all(
            name in data["components"] for name in DRAW_COMPONENTS):
        raise SchemaError(f"components: {' and '.join(DRAW_COMPONENTS)} come together; add both with "
                          "python -m export.draw_graphs")
    for name, io in expected.items():
        if name not in data["components"]:
            continue
        for kind, tensors in io.items():
            found = data["components"][name][kind]
            if found != tensors:
                raise SchemaError(f"components.{name}.{kind}: expected {shown(tensors, 200)}, got {shown(found, 200)}")
    for name, targets in SCHEMA.get(data, "engines").items():
        for key, what in ((_target, "TensorRT version and compute capability"), (lambda e: e["file"], "file")):
            seen = [key(entry) for entry in targets]
            if len(set(seen)) < len(seen):
                raise SchemaError(f"engines.{name}: two engines share one {what}: {shown(seen, 200)}")
    schedule = data["schedule"]
    if not len(schedule["timesteps"]) == len(schedule["alphas"]) == len(schedule["alphas_prev"]):
        raise SchemaError("schedule: timesteps, alphas and alphas_prev must have one value per DDIM step")
    if (schedule["start_t"] == 0) != (not schedule["timesteps"]):
        raise SchemaError(f"schedule: start_t {shown(schedule['start_t'])} with {len(schedule['timesteps'])} DDIM "
                          "step(s); start_t is 0 exactly for the VAE-only plan (no timesteps)")
    thresholds = SCHEMA.get(data, "thresholds")
    for kind in ("image", "pixel"):
        if thresholds.get(kind) is None:
            continue
        low, high = thresholds.get(f"{kind}_min"), thresholds.get(f"{kind}_max")
        if low is None or high is None or not low < high:
            raise SchemaError(
                f"thresholds: {kind}_min {shown(low)} and {kind}_max {shown(high)} give no normalisation span "
                "(pred_score would be only 0 or 1); recalibrate with python -m runtime.calibrate"
            )
    classes = thresholds.get("classes") or []
    if classes and (thresholds.get("image") is None or thresholds.get("class_scale") is None):
        raise SchemaError("thresholds.classes: per-class thresholds need the global image threshold and class_scale")
    names = [c["name"] for c in classes]
    if len(set(names)) < len(names):
        raise SchemaError(f"thresholds.classes: class names repeat: {shown(names, 200)}")
    for k, c in enumerate(classes):
        if not c["image_min"] < c["image_max"]:
            raise SchemaError(f"thresholds.classes[{k}] ({shown(c['name'])}): image_min {shown(c['image_min'])} and "
                              f"image_max {shown(c['image_max'])} give no normalisation span; recalibrate")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
