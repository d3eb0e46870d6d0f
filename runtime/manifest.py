"""The model folder's schema: ``manifest.json`` beside one ONNX graph (and optionally TensorRT engines, one per
TensorRT version and GPU architecture) per component. Written by ``export``, read and verified by the runtime; torch-free.

Components and their tensors (:data:`COMPONENT_IO`; batch axis ``B`` dynamic, all I/O float32 even in an FP16
model folder):

* ``vae_encoder``: ``image`` (B, 3, S, S) ImageNet-normalised -> ``latent`` (B, C, s, s), posterior mean x the VAE's scaling factor
* ``hint_encoder``: ``image`` -> ``hint`` (B, C, s, s), the SG network's encoded hint (once per image)
* ``denoise_step``: ``x_t``, ``hint``, ``timestep`` (B,), ``alpha_t`` (B,), ``alpha_prev`` (B,) -> ``x_prev``:
  SG network + UNet + the DDIM update, one call per step
* ``vae_decoder``: ``latent`` -> ``image``
* ``scorer``: ``image``, ``reconstruction`` -> ``anomaly_map`` (B, S, S), ``score`` (B,)

and, in folders exported since the noise draws stay on the device (:data:`DRAW_COMPONENTS`; older folders lack
them and still load), two graphs without weights that fan a batch out to its ``K`` noise draws and back
(:mod:`export.draw_graphs`; the arithmetic of :func:`runtime.schedule.noise_latents` and
:func:`runtime.schedule.mean_of_draws`, image-major):

* ``noise_latents``: ``latent``, ``hint``, ``noise`` (B, K, C, s, s), ``signal`` (B,), ``spread`` (B,) ->
  ``x_t`` (B, K, C, s, s) ``signal * latent + spread * noise``, ``hints`` (B, K, *hint) the hint once per draw
* ``mean_of_draws``: ``samples`` (B, K, C, s, s) -> ``mean`` (B, C, s, s)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.class_thresholds import DESCRIPTOR_SIZE
from runtime.errors import ModelFolderError
from runtime.schedule import NUM_TRAIN_TIMESTEPS, DDIMPlan, ddim_plan, noise_draws
from runtime.schema import (
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

MANIFEST = "manifest.json"
FORMAT = "diad-edge-model"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")  # int8: dynamic quantisation of an FP32 folder (export.quantize)
BATCH_AXIS = "B"
MAX_MANIFEST_BYTES = 64 << 20
MAX_BATCH = 1024
MAX_DRAWS = 64  # noise draws per image: the denoiser runs on batch x draws latents
MAX_LATENT_VALUES = 1 << 22  # per image: the fixed noise and each latent buffer (16 MiB of float32)
MAX_HINT_VALUES = 1 << 24
MAX_ENGINE_TARGETS = 64  # engines per component: one per (TensorRT version, compute capability)


@dataclass(frozen=True)
class ComponentIO:
    """A component's input and output tensors in its graph's order: name -> kind of shape (:func:`tensor_shapes`)."""

    inputs: dict[str, str]
    outputs: dict[str, str]

    def named_inputs(self, *values: Any) -> dict[str, Any]:
        """``values`` given in the table's input order, by input name."""
        return dict(zip(self.inputs, values, strict=True))

    def named_outputs(self, *values: Any) -> dict[str, Any]:
        """``values`` given in the table's output order, by output name."""
        return dict(zip(self.outputs, values, strict=True))

    @property
    def tensors(self) -> dict[str, str]:
        """Inputs, then outputs: name -> kind."""
        return {**self.inputs, **self.outputs}

    def of_kind(self, kind: str, side: str = "inputs") -> tuple[str, ...]:
        """The names of the ``side`` (``"inputs"`` or ``"outputs"``) tensors of shape kind ``kind``."""
        return tuple(name for name, k in getattr(self, side).items() if k == kind)

    def only(self, kind: str, side: str = "inputs") -> str:
        """The name of the one ``side`` tensor of kind ``kind``."""
        (name,) = self.of_kind(kind, side)
        return name


# The one table of components and their tensors: the exporter names the graphs' I/O from it, the manifest's
# expected tensors, the ONNX Runtime and TensorRT bindings and the checks all follow it. Kinds: "image"
# (B, 3, S, S), "latent" (B, *latent_shape), "hint" (B, *hint_shape), "map" (B, S, S), "vector" (B,), "step":
# a (B,) input taken from the DDIM plan (:func:`schedule_inputs`, :func:`noise_inputs`), and per image one of each
# of its K noise draws: "draws" (B, K, *latent_shape), "hint_draws" (B, K, *hint_shape).
COMPONENT_IO = {
    "vae_encoder": ComponentIO({"image": "image"}, {"latent": "latent"}),
    "hint_encoder": ComponentIO({"image": "image"}, {"hint": "hint"}),
    "denoise_step": ComponentIO(
        {"x_t": "latent", "hint": "hint", "timestep": "step", "alpha_t": "step", "alpha_prev": "step"},
        {"x_prev": "latent"},
    ),
    "vae_decoder": ComponentIO({"latent": "latent"}, {"image": "image"}),
    "scorer": ComponentIO({"image": "image", "reconstruction": "image"}, {"anomaly_map": "map", "score": "vector"}),
    "noise_latents": ComponentIO(
        {"latent": "latent", "hint": "hint", "noise": "draws", "signal": "step", "spread": "step"},
        {"x_t": "draws", "hints": "hint_draws"},
    ),
    "mean_of_draws": ComponentIO({"samples": "draws"}, {"mean": "latent"}),
}
DRAW_COMPONENTS = ("noise_latents", "mean_of_draws")  # optional: folders exported before them lack both
COMPONENTS = tuple(name for name in COMPONENT_IO if name not in DRAW_COMPONENTS)  # in every model folder
SCHEDULE_INPUTS = COMPONENT_IO["denoise_step"].of_kind("step")  # timestep, alpha_t, alpha_prev
NOISE_INPUTS = COMPONENT_IO["noise_latents"].of_kind("step")  # signal, spread: sqrt(a), sqrt(1 - a) at start_t


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
    classes: list[dict[str, Any]] | None = None  # per class: name, image, image_min, image_max, centre
    class_scale: list[float] | None = None  # descriptor spread (runtime.class_thresholds.assign)

    @property
    def calibrated(self) -> bool:
        return self.image is not None and self.pixel is not None

    def image_rule(self, class_name: str | None = None) -> tuple[float, float, float]:
        """``(threshold, min, max)`` of the image score for ``class_name`` (None: the one for all classes)."""
        rule = next((c for c in self.classes or [] if c["name"] == class_name), None) if class_name else None
        source = rule if rule is not None else self.__dict__
        return source["image"], source["image_min"], source["image_max"]


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
                                   f"draws stayed on the device; add it: python -m export.draw_graphs --model {self.root}")
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
        return int(self.data["noise"].get("draws", 1))

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
        return Thresholds(**self.data.get("thresholds") or {})

    @property
    def engines(self) -> dict[str, list[dict[str, Any]]]:
        """Per component, its engines: one entry per (TensorRT version, compute capability)."""
        return self.data.get("engines", {})

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


def tensor_shapes(
    image_size: int, latent_shape: Sequence[int], hint_shape: Sequence[int], draws: int = 1
) -> dict[str, list]:
    """Per kind of tensor (:data:`COMPONENT_IO`), its shape with the batch axis written ``"B"`` (``draws``: the
    noise draws per image, K)."""
    return {
        "image": [BATCH_AXIS, 3, image_size, image_size],
        "latent": [BATCH_AXIS, *latent_shape],
        "hint": [BATCH_AXIS, *hint_shape],
        "map": [BATCH_AXIS, image_size, image_size],
        "vector": [BATCH_AXIS],
        "step": [BATCH_AXIS],
        "draws": [BATCH_AXIS, draws, *latent_shape],
        "hint_draws": [BATCH_AXIS, draws, *hint_shape],
    }


def expected_tensors(
    image_size: int, latent_shape: Sequence[int], hint_shape: Sequence[int], draws: int = 1
) -> dict[str, dict]:
    """Per component (:data:`DRAW_COMPONENTS` too), the ``inputs`` and ``outputs`` (name -> shape, batch axis
    ``"B"``) the runtime binds."""
    shapes = tensor_shapes(image_size, latent_shape, hint_shape, draws)
    return {
        name: {side: {tensor: shapes[kind] for tensor, kind in getattr(io, side).items()}
               for side in ("inputs", "outputs")}
        for name, io in COMPONENT_IO.items()
    }


def schedule_inputs(plan: DDIMPlan) -> dict[str, np.ndarray]:
    """``denoise_step``'s plan inputs (:data:`SCHEDULE_INPUTS`) for every step of ``plan``: name -> (steps,)."""
    return dict(zip(SCHEDULE_INPUTS, (plan.timesteps, plan.alphas, plan.alphas_prev), strict=True))


def noise_inputs(plan: DDIMPlan, batch: int) -> dict[str, np.ndarray]:
    """``noise_latents``' plan inputs (:data:`NOISE_INPUTS`) for ``batch`` images: float32 ``(batch,)``, the
    coefficients :func:`runtime.schedule.q_sample` uses (:attr:`DDIMPlan.noise_scales` rounded to float32)."""
    return {name: np.full(batch, value, np.float32) for name, value in zip(NOISE_INPUTS, plan.noise_scales, strict=True)}


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
                                data["noise"].get("draws", 1))
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
    for name, targets in data.get("engines", {}).items():
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
    thresholds = data.get("thresholds") or {}
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


def _file_name(value: Any, where: str) -> None:
    """A file inside the model folder: a relative path without ``..``, backslashes or NUL."""
    string(max_length=255)(value, where)
    parts = value.split("/")
    if not value or value.startswith("/") or "\\" in value or "\0" in value or any(p in ("", ".", "..") for p in parts):
        raise SchemaError(f"{where}: {shown(value)} is not a file name inside the model folder (expected a relative "
                          "path without '..', e.g. \"scorer.onnx\")")


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
_THRESHOLDS = obj({}, {
    **{name: nullable(number()) for name in ("image", "pixel", "image_min", "image_max", "pixel_min", "pixel_max")},
    "method": nullable(string(max_length=64)),
    "details": mapping(anything),
    "classes": nullable(array(obj({
        "name": string(max_length=256),
        **{name: number() for name in ("image", "image_min", "image_max")},
        "centre": array(number(), DESCRIPTOR_SIZE, DESCRIPTOR_SIZE),
    }), 1, 4096)),
    "class_scale": nullable(array(number(1e-12), DESCRIPTOR_SIZE, DESCRIPTOR_SIZE)),
})
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
            {"start_alpha": number(0, 1), "beta_schedule": string(["scaled_linear"]), "beta_start": number(0, 1),
             "beta_end": number(0, 1), "num_train_timesteps": integer(NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS),
             "eta": number(0, 0)},
        ),
        "noise": obj({"policy": string(["fixed"]), "seed": integer(0, 2**63 - 1)},
                     {"generator": string(), "shape": _SHAPE, "draws": integer(1, MAX_DRAWS)}),
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
)
"""The manifest's schema: types, ranges, required keys; an unknown key is an error that names it."""


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
