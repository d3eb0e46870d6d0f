"""ONNX Runtime backend: CPU by default, the CUDA or TensorRT execution provider (``provider``) when installed.

Every session runs through I/O binding: on a GPU the latent, the hint and the per-step vectors stay in device
memory for the whole DDIM loop (two latent buffers, ping-pong); only the images go up and the map and score come
down. On the CPU the same code binds host memory.

The TensorRT provider builds an engine per graph on first use; it caches them (and its timing cache) in
``ort_trt_cache/`` inside the model folder, or in the user cache when the folder is read-only, and builds each for
the manifest's batch range (profile batch 1 to ``max_batch``, tuned for 1 as ``export.tensorrt``), so neither a
restart nor a new batch size rebuilds them. FP16 kernels are allowed only for an FP16 model folder.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.backends.base import Backend, BackendOutput
from runtime.devices import onnxruntime_provider
from runtime.errors import BackendError, ModelFolderError
from runtime.manifest import COMPONENT_IO, COMPONENTS, MANIFEST, Manifest, schedule_inputs
from runtime.schedule import DDIMPlan, q_sample

ENGINE_CACHE = "ort_trt_cache"  # the TensorRT provider's engines, inside the model folder when it is writable

PROVIDERS = {  # runtime.devices.PROVIDERS: ONNX Runtime's execution providers, in order of preference
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            "onnxruntime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA/TensorRT)"
        ) from None
    return onnxruntime


def engine_cache(manifest: Manifest) -> Path:
    """Where the TensorRT provider caches engines: :data:`ENGINE_CACHE` in the model folder, or (read-only folder)
    ``$XDG_CACHE_HOME/diad-edge/ort-trt/<manifest hash>``; created."""
    inside = manifest.root / ENGINE_CACHE
    try:
        inside.mkdir(exist_ok=True)
        if os.access(inside, os.W_OK):
            return inside
    except OSError:
        pass
    key = hashlib.sha256((manifest.root / MANIFEST).read_bytes()).hexdigest()[:16]
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diad-edge" / "ort-trt" / key
    try:
        user.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"{inside} and {user}: cannot create the TensorRT engine cache ({exc}); make one of them "
                           "writable or set XDG_CACHE_HOME") from None
    return user


def profile_shapes(manifest: Manifest, component: str) -> dict[str, str]:
    """The TensorRT provider's ``trt_profile_{min,opt,max}_shapes`` for ``component``: batch 1, 1 and max_batch."""
    inputs = manifest.component(component)["inputs"]
    return {
        f"trt_profile_{kind}_shapes": ",".join(
            f"{name}:{'x'.join(str(d) for d in (batch, *dims[1:]))}" for name, dims in inputs.items()
        )
        for kind, batch in (("min", 1), ("opt", 1), ("max", manifest.max_batch))
    }


def session_providers(
    manifest: Manifest, component: str, provider: str, device_id: int, cache: Path | None
) -> list:
    """The execution providers, with their options, for ``component``'s session with ``provider`` (``PROVIDERS``)."""
    options: dict[str, dict] = {"CUDAExecutionProvider": {"device_id": device_id}}
    if provider == "tensorrt":
        options["TensorrtExecutionProvider"] = {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": manifest.precision == "fp16",
            **profile_shapes(manifest, component),
        }
    return [(p, options[p]) if p in options else p for p in PROVIDERS[provider]]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self, manifest: Manifest, device: str = "cpu", provider: str | None = None, threads: int | None = None
    ):
        super().__init__(manifest, device)
        self.provider, self.device_id = onnxruntime_provider(device, provider)
        ort = _import_ort()
        wanted = PROVIDERS[self.provider]
        if wanted[0] not in ort.get_available_providers():
            raise BackendError(
                f"ONNX Runtime has no {wanted[0]} here (available: {ort.get_available_providers()}); "
                "install onnxruntime-gpu with a matching CUDA (and TensorRT for the TensorRT provider)"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        cache = engine_cache(manifest) if self.provider == "tensorrt" else None
        self.sessions = {
            name: self._session(ort, name, options, session_providers(manifest, name, self.provider, self.device_id,
                                                                      cache))
            for name in COMPONENTS
        }
        self.memory = "cpu" if self.provider == "cpu" else "cuda"
        self._ort = ort
        self._step_values: dict[tuple, list] = {}

    def _session(self, ort, name: str, options, providers: list):
        """An inference session on component ``name``'s graph, whose inputs and outputs must be the manifest's."""
        path = self.manifest.path(name)
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 (ONNX Runtime's exceptions derive from Exception only)
            raise ModelFolderError(f"{path}: ONNX Runtime cannot load this graph ({str(exc)[:300]})") from None
        entry = self.manifest.component(name)
        for kind, found in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
            graph = {t.name: t.shape for t in found}
            if set(graph) != set(entry[kind]) or any(
                len(graph[t]) != len(dims) or any(isinstance(g, int) and g != d for g, d in zip(graph[t], dims))
                for t, dims in entry[kind].items()
            ):
                raise ModelFolderError(f"{path}: graph {kind} {graph}, the manifest lists {entry[kind]}")
        return session

    def _on_device(self, array: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.memory, self.device_id)

    def _empty(self, shape: tuple[int, ...]):
        return self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.memory, self.device_id)

    def _run(self, name: str, inputs: Sequence, outputs: Sequence) -> None:
        """Run component ``name`` on device values given in :data:`COMPONENT_IO`'s order of its inputs and outputs."""
        session, io = self.sessions[name], COMPONENT_IO[name]
        binding = session.io_binding()
        for key, value in io.named_inputs(*inputs).items():
            binding.bind_ortvalue_input(key, value)
        for key, value in io.named_outputs(*outputs).items():
            binding.bind_ortvalue_output(key, value)
        session.run_with_iobinding(binding)

    def _plan_values(self, plan: DDIMPlan, batch: int) -> list[list]:
        """Per step, its (B,) plan inputs in :data:`SCHEDULE_INPUTS` order, made once per plan and batch."""
        key = (tuple(plan.timesteps), plan.start_t, batch)
        if key not in self._step_values:
            columns = schedule_inputs(plan).values()
            self._step_values[key] = [
                [self._on_device(np.full(batch, value, np.float32)) for value in step] for step in zip(*columns)
            ]
        return self._step_values[key]

    def run(
        self, images: np.ndarray, plan: DDIMPlan, noise: np.ndarray, keep_reconstruction: bool = False
    ) -> BackendOutput:
        batch, size = len(images), self.manifest.image_size
        latent_shape = (batch, *self.manifest.latent_shape)
        seconds = {}

        start = time.perf_counter()
        image = self._on_device(images.astype(np.float32, copy=False))
        latent = self._ort.OrtValue.ortvalue_from_shape_and_type(list(latent_shape), np.float32, "cpu", 0)
        hint = self._empty((batch, *self.manifest.hint_shape))
        self._run("vae_encoder", [image], [latent])
        self._run("hint_encoder", [image], [hint])
        x = [self._on_device(q_sample(latent.numpy(), noise, plan.start_alpha)), self._empty(latent_shape)]
        seconds["encode"] = time.perf_counter() - start

        start = time.perf_counter()
        for k, values in enumerate(self._plan_values(plan, batch)):
            self._run("denoise_step", [x[k % 2], hint, *values], [x[(k + 1) % 2]])
        sample = x[len(plan.timesteps) % 2]
        seconds["steps"] = time.perf_counter() - start

        start = time.perf_counter()
        recon = self._empty((batch, 3, size, size))
        self._run("vae_decoder", [sample], [recon])
        seconds["decode"] = time.perf_counter() - start

        return self._score(image, recon, seconds, keep_reconstruction)

    def run_vae_only(self, images: np.ndarray) -> BackendOutput:
        """The baseline without diffusion: encode, decode the clean latent, score (stages as in :meth:`run`)."""
        batch, size = len(images), self.manifest.image_size
        seconds = {"steps": 0.0}
        start = time.perf_counter()
        image = self._on_device(images.astype(np.float32, copy=False))
        latent = self._empty((batch, *self.manifest.latent_shape))
        self._run("vae_encoder", [image], [latent])
        seconds["encode"] = time.perf_counter() - start
        start = time.perf_counter()
        recon = self._empty((batch, 3, size, size))
        self._run("vae_decoder", [latent], [recon])
        seconds["decode"] = time.perf_counter() - start
        return self._score(image, recon, seconds)

    def _score(self, image, recon, seconds: dict[str, float], keep_reconstruction: bool = False) -> BackendOutput:
        start = time.perf_counter()
        batch, size = image.shape()[0], self.manifest.image_size
        amap = self._ort.OrtValue.ortvalue_from_shape_and_type([batch, size, size], np.float32, "cpu", 0)
        score = self._ort.OrtValue.ortvalue_from_shape_and_type([batch], np.float32, "cpu", 0)
        self._run("scorer", [image, recon], [amap, score])
        seconds["score"] = time.perf_counter() - start
        return BackendOutput(amap.numpy(), score.numpy(), recon.numpy() if keep_reconstruction else None, seconds)

    def close(self) -> None:
        self.sessions.clear()
        self._step_values.clear()
