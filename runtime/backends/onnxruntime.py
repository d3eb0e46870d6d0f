"""ONNX Runtime backend: CPU by default, the CUDA or TensorRT execution provider (``provider``) when installed.

Every session runs through I/O binding. On a GPU only the images go up and the map and score (and the
reconstruction when asked) come down: the latent and the hint, the latents noised with each of the folder's K draws
(``noise_latents``; the draws go up once per batch size, the plan's numbers once per plan), the DDIM loop on every
draw at once (two latent buffers, ping-pong) and each image's mean over its draws (``mean_of_draws``) stay in
device memory. A folder exported before the draw graphs (:attr:`Manifest.has_draw_graphs`), or noise with other
than its K draws, is noised and averaged on the host: the latent comes down and the noised latents go up, and with
several draws the hint and the last step's latents make the same trip. On the CPU the same code binds host memory.
The VAE-only plan runs ``vae_encoder`` -> ``vae_decoder`` -> ``scorer`` only.

The TensorRT provider builds an engine per graph on first use; it caches them (and its timing cache) in
``ort_trt_cache/`` inside the model folder, or in the user cache when the folder is read-only, and builds each for
the manifest's batch range (profile batch 1 to ``max_batch``, tuned for 1 as ``export.tensorrt``), so neither a
restart nor a new batch size rebuilds them. FP16 kernels are allowed only for an FP16 model folder.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import Backend, BackendOutput
from runtime.devices import onnxruntime_provider
from runtime.errors import BackendError, ModelFolderError
from runtime.component_io import COMPONENT_IO, noise_inputs, schedule_inputs
from runtime.manifest import MANIFEST, Manifest
from runtime.schedule import DDIMPlan, as_draws, draws_per_image, mean_of_draws, noise_latents
from runtime.sequence import STAGES, WallClock, ddim_loop, infer

ENGINE_CACHE = "ort_trt_cache"  # the TensorRT provider's engines, inside the model folder when it is writable
OPTIMIZED_CACHE = "ort_cpu_cache"  # graphs as the CPU provider optimised them (SessionSettings.optimized_cache)
OPTIMIZATION_LEVELS = {  # SessionSettings.optimization -> onnxruntime.GraphOptimizationLevel
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}

PROVIDERS = {  # runtime.devices.PROVIDERS: ONNX Runtime's execution providers, in order of preference
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def import_ort():
    """The ``onnxruntime`` module, or a :class:`BackendError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            "onnxruntime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA/TensorRT)"
        ) from None
    return onnxruntime


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads of one core counted once; Linux topology, else the
    logical CPUs)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


@dataclass(frozen=True)
class SessionSettings:
    """ONNX Runtime session options. Defaults: the full graph optimisation, one intra-op thread per physical core,
    no spin-waiting (the detector runs its sessions one after another, and spinning threads would hold the cores
    the next session, the stream's reader and its writer need), ONNX Runtime's memory arena and memory patterns.
    Each setting's measured effect: docs/performance.md.

    ``optimized_cache`` saves each graph as ONNX Runtime optimised it (:data:`OPTIMIZED_CACHE` in the model
    folder or the user cache, keyed by the graph's hash, the ONNX Runtime version, the level and the CPU) and
    opens that copy, without optimising again, at later starts.
    """

    optimization: str = "all"  # a key of OPTIMIZATION_LEVELS
    threads: int | None = None  # intra-op threads; None: physical_cores()
    spinning: bool = False  # intra-op threads spin-wait between ops
    memory_arena: bool = True  # the CPU provider's arena allocator
    memory_pattern: bool = True  # plan the buffers from the first run's allocations
    optimized_cache: bool = False

    def __post_init__(self):
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"graph optimisation {self.optimization!r}: expected one of {list(OPTIMIZATION_LEVELS)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads {self.threads}: expected at least 1")

    def options(self, ort, optimization: str | None = None):
        """An ``onnxruntime.SessionOptions`` with these settings (``optimization`` overrides the level)."""
        options = ort.SessionOptions()
        options.log_severity_level = 3
        level = OPTIMIZATION_LEVELS[optimization or self.optimization]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.intra_op_num_threads = self.threads or physical_cores()
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        options.enable_cpu_mem_arena = self.memory_arena
        options.enable_mem_pattern = self.memory_pattern
        return options


def cache_folder(manifest: Manifest, name: str, kind: str) -> Path:
    """``name`` in the model folder when it is writable, else ``$XDG_CACHE_HOME/diad-edge/<kind>/<manifest
    hash>``; created."""
    inside = manifest.root / name
    try:
        inside.mkdir(exist_ok=True)
        if os.access(inside, os.W_OK):
            return inside
    except OSError:
        pass
    key = hashlib.sha256((manifest.root / MANIFEST).read_bytes()).hexdigest()[:16]
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diad-edge" / kind / key
    try:
        user.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"{inside} and {user}: cannot create the {kind} cache ({exc}); make one of them "
                           "writable or set XDG_CACHE_HOME") from None
    return user


def engine_cache(manifest: Manifest) -> Path:
    """Where the TensorRT provider caches engines: :data:`ENGINE_CACHE` in the model folder, or (read-only folder)
    ``$XDG_CACHE_HOME/diad-edge/ort-trt/<manifest hash>``; created."""
    return cache_folder(manifest, ENGINE_CACHE, "ort-trt")


def cpu_signature() -> str:
    """The machine and its instruction-set flags: an optimised graph (NCHWc layouts, prepacked kernels chosen by
    ISA) is only reused on the same."""
    flags = ""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    return f"{platform.machine()} {flags}"


def optimized_graph(manifest: Manifest, component: str, ort_version: str, optimization: str) -> Path:
    """Where :attr:`SessionSettings.optimized_cache` keeps ``component``'s optimised graph (a folder per key,
    ``graph.onnx`` and its external data inside; not created)."""
    entry = manifest.component(component)
    key = hashlib.sha256(f"{entry['sha256']} {ort_version} {optimization} {cpu_signature()}".encode()).hexdigest()
    return cache_folder(manifest, OPTIMIZED_CACHE, "ort-cpu") / f"{component}-{key[:16]}" / "graph.onnx"


def profile_shapes(manifest: Manifest, component: str) -> dict[str, str]:
    """The TensorRT provider's ``trt_profile_{min,opt,max}_shapes`` for ``component``: batch 1, 1 and max_batch
    (``denoise_step``: ``step_max_batch``, one latent per image and noise draw)."""
    inputs = manifest.component(component)["inputs"]
    return {
        f"trt_profile_{kind}_shapes": ",".join(
            f"{name}:{'x'.join(str(d) for d in (batch, *dims[1:]))}" for name, dims in inputs.items()
        )
        for kind, batch in (("min", 1), ("opt", 1), ("max", manifest.step_max_batch if component == "denoise_step"
                                                     else manifest.max_batch))
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


def _keep_optimized(partial: Path, cached: Path) -> None:
    """Move the graph ONNX Runtime saved optimised in ``partial`` into place at ``cached``; drop ``partial``."""
    try:
        if (partial / cached.name).is_file():
            partial.rename(cached.parent)
    except OSError:  # another process cached this graph meanwhile
        pass
    shutil.rmtree(partial, ignore_errors=True)


def open_session(ort, manifest: Manifest, name: str, settings: SessionSettings, providers: list):
    """An inference session on component ``name``'s graph, whose inputs and outputs must be the manifest's.
    With :attr:`SessionSettings.optimized_cache` (CPU provider only) it opens the cached optimised graph, or
    optimises the graph and saves it there (written aside, then renamed into place)."""
    path, options, partial, cached = manifest.path(name), settings.options(ort), None, None
    if settings.optimized_cache and providers == PROVIDERS["cpu"]:
        cached = optimized_graph(manifest, name, ort.__version__, settings.optimization)
        if cached.is_file():
            path, options = cached, settings.options(ort, "disable")
        else:
            partial = cached.parent.with_name(cached.parent.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            options.optimized_model_filepath = str(partial / cached.name)
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             cached.name + ".data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             "1024")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 (ONNX Runtime's exceptions derive from Exception only)
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        raise ModelFolderError(f"{path}: ONNX Runtime cannot load this graph ({str(exc)[:300]})") from None
    if partial is not None:
        _keep_optimized(partial, cached)
    entry = manifest.component(name)
    for kind, found in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        graph = {t.name: t.shape for t in found}
        if set(graph) != set(entry[kind]) or any(
            len(graph[t]) != len(dims) or any(isinstance(g, int) and g != d for g, d in zip(graph[t], dims))
            for t, dims in entry[kind].items()
        ):
            raise ModelFolderError(f"{path}: graph {kind} {graph}, the manifest lists {entry[kind]}")
    return session


@dataclass(frozen=True)
class Reshaped:
    """An OrtValue's memory bound as a tensor of another shape with as many elements (the draws of a batch,
    ``(B, K, ...)``, are the denoiser's ``B * K`` latents)."""

    value: Any
    shape: tuple[int, ...]

    @property
    def pointer(self) -> int:
        return self.value.data_ptr()


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self, manifest: Manifest, device: str = "cpu", provider: str | None = None,
        settings: SessionSettings | None = None,
    ):
        super().__init__(manifest, device)
        self.settings = settings or SessionSettings()
        self.provider, self.device_id = onnxruntime_provider(device, provider)
        ort = import_ort()
        wanted = PROVIDERS[self.provider]
        if wanted[0] not in ort.get_available_providers():
            raise BackendError(
                f"ONNX Runtime has no {wanted[0]} here (available: {ort.get_available_providers()}); "
                "install onnxruntime-gpu with a matching CUDA (and TensorRT for the TensorRT provider)"
            )
        cache = engine_cache(manifest) if self.provider == "tensorrt" else None
        self.sessions = {
            name: open_session(ort, manifest, name, self.settings,
                               session_providers(manifest, name, self.provider, self.device_id, cache))
            for name in manifest.components
        }
        self.memory = "cpu" if self.provider == "cpu" else "cuda"
        self._ort = ort
        self._device_values: dict[tuple, list] = {}  # plan inputs per (plan, batch size)
        self._draws: dict[int, tuple[np.ndarray, Any]] = {}  # per batch size: the draws and their device copy

    def to_device(self, array: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.memory, self.device_id)

    def device_buffer(self, shape: tuple[int, ...]):
        return self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.memory, self.device_id)

    def host_buffer(self, shape: tuple[int, ...]):
        return self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, "cpu", 0)

    def run_component(self, name: str, inputs: Sequence, outputs: Sequence) -> None:
        """Run component ``name`` on device values given in :data:`COMPONENT_IO`'s order of its inputs and outputs
        (a :class:`Reshaped` value is bound with its own shape)."""
        session, io = self.sessions[name], COMPONENT_IO[name]
        binding = session.io_binding()
        for key, value in io.named_inputs(*inputs).items():
            if isinstance(value, Reshaped):
                binding.bind_input(key, self.memory, self.device_id, np.float32, list(value.shape), value.pointer)
            else:
                binding.bind_ortvalue_input(key, value)
        for key, value in io.named_outputs(*outputs).items():
            if isinstance(value, Reshaped):
                binding.bind_output(key, self.memory, self.device_id, np.float32, list(value.shape), value.pointer)
            else:
                binding.bind_ortvalue_output(key, value)
        session.run_with_iobinding(binding)

    def _cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()``'s device values, made once per ``key`` (a plan's inputs at one batch size)."""
        if key not in self._device_values:
            self._device_values[key] = make()
        return self._device_values[key]

    def plan_values(self, plan: DDIMPlan, batch: int) -> list[list]:
        """Per step, its (B,) plan inputs in :data:`SCHEDULE_INPUTS` order, made once per plan and batch."""
        def make() -> list[list]:
            columns = schedule_inputs(plan).values()
            return [[self.to_device(np.full(batch, value, np.float32)) for value in step] for step in zip(*columns)]

        return self._cached(("steps", tuple(plan.timesteps), plan.start_t, batch), make)

    def noise_values(self, plan: DDIMPlan, noise: np.ndarray, batch: int) -> list:
        """``noise_latents``' ``noise``, ``signal`` and ``spread`` for ``batch`` images on the device: the draws
        uploaded once per batch size (again only when the caller's draws change), the coefficients once per plan."""
        held = self._draws.get(batch)
        if held is None or not np.array_equal(held[0], noise, equal_nan=True):
            held = self._draws[batch] = (noise.copy(), self.to_device(draws_per_image(noise, batch)))
        scales = self._cached(("noise", plan.start_t, batch),
                              lambda: [self.to_device(v) for v in noise_inputs(plan, batch).values()])
        return [held[1], *scales]

    def run(
        self, images: np.ndarray, plan: DDIMPlan, noise: np.ndarray, keep_reconstruction: bool = False
    ) -> BackendOutput:
        """The sequence (:func:`runtime.sequence.infer`) on one batch, through :class:`SessionStages`."""
        clock = WallClock()
        stages = SessionStages(self, noise, plan)
        image = self.to_device(images.astype(np.float32, copy=False))
        done = infer(stages, image, plan, 1 if plan.vae_only else stages.draws, clock)
        amap, score = done.scored
        return BackendOutput(amap.numpy(), score.numpy(),
                             done.reconstruction.numpy() if keep_reconstruction else None,
                             {stage: clock.seconds[stage] for stage in STAGES}, stages.step_seconds)

    def close(self) -> None:
        self.sessions.clear()
        self._device_values.clear()
        self._draws.clear()


class SessionStages:
    """The stage kernels of :mod:`runtime.sequence` on a backend's sessions, for one batch.

    With the draw graphs and the folder's own K draws everything stays on the device (the draws image-major);
    otherwise the latents are noised and averaged on the host (draw-major): the latent (and with several draws the
    hint and the last step's latents) make the trip. ``step_seconds``: each DDIM step's wall seconds, the mean
    over draws counted in the last.
    """

    def __init__(self, backend: OnnxRuntimeBackend, noise: np.ndarray, plan: DDIMPlan):
        self.backend, self.noise_draws = backend, noise
        self.draws = len(as_draws(noise))
        self.on_device = backend.manifest.has_draw_graphs and self.draws == backend.manifest.draws
        self.latent_on_host = not self.on_device and not plan.vae_only  # to be noised on the host
        self.step_seconds: list[float] = []

    def encode(self, image):
        b, shape = self.backend, (image.shape()[0], *self.backend.manifest.latent_shape)
        latent = b.host_buffer(shape) if self.latent_on_host else b.device_buffer(shape)
        b.run_component("vae_encoder", [image], [latent])
        return latent

    def encode_hint(self, image):
        b, shape = self.backend, (image.shape()[0], *self.backend.manifest.hint_shape)
        hint = b.host_buffer(shape) if self.draws > 1 and not self.on_device else b.device_buffer(shape)
        b.run_component("hint_encoder", [image], [hint])
        return hint

    def noise(self, latent, hint, plan: DDIMPlan) -> tuple[Any, Any]:
        b, batch, draws = self.backend, latent.shape()[0], self.draws
        if not self.on_device:
            if draws > 1:  # one copy of the batch's hints per draw (draw-major, as the noised latents)
                hint = b.to_device(np.concatenate([hint.numpy()] * draws))
            return b.to_device(noise_latents(latent.numpy(), self.noise_draws, plan.start_alpha)), hint
        latent_shape, hint_shape = b.manifest.latent_shape, b.manifest.hint_shape
        x, hints = b.device_buffer((batch * draws, *latent_shape)), b.device_buffer((batch * draws, *hint_shape))
        b.run_component("noise_latents", [latent, hint, *b.noise_values(plan, self.noise_draws, batch)],
                        [Reshaped(x, (batch, draws, *latent_shape)), Reshaped(hints, (batch, draws, *hint_shape))])
        return x, hints

    def loop(self, x, hints, plan: DDIMPlan):
        """Ping-pong between two latent buffers; with several draws averaged on the host the last step writes
        to host memory."""
        b, shape = self.backend, tuple(x.shape())
        buffers, steps = [x, b.device_buffer(shape)], b.plan_values(plan, shape[0])
        last = b.host_buffer(shape) if self.draws > 1 and not self.on_device else None
        started = time.perf_counter()

        def step(k: int, current):
            out = last if last is not None and k == plan.steps - 1 else buffers[(k + 1) % 2]
            b.run_component("denoise_step", [current, hints, *steps[k]], [out])
            return out

        def timed(_k: int) -> None:
            nonlocal started
            now = time.perf_counter()
            self.step_seconds.append(now - started)
            started = now

        return ddim_loop(step, x, plan, timed)

    def mean(self, x):
        b, started = self.backend, time.perf_counter()
        if self.on_device:
            batch, latent_shape = x.shape()[0] // self.draws, b.manifest.latent_shape
            sample = b.device_buffer((batch, *latent_shape))
            b.run_component("mean_of_draws", [Reshaped(x, (batch, self.draws, *latent_shape))], [sample])
        else:
            sample = b.to_device(mean_of_draws(x.numpy(), self.draws))
        self.step_seconds[-1] += time.perf_counter() - started
        return sample

    def decode(self, sample):
        size = self.backend.manifest.image_size
        recon = self.backend.device_buffer((sample.shape()[0], 3, size, size))
        self.backend.run_component("vae_decoder", [sample], [recon])
        return recon

    def score(self, image, recon) -> tuple[Any, Any]:
        batch, size = image.shape()[0], self.backend.manifest.image_size
        amap, score = self.backend.host_buffer((batch, size, size)), self.backend.host_buffer((batch,))
        self.backend.run_component("scorer", [image, recon], [amap, score])
        return amap, score
