"""TensorRT backend through cuda-python (no torch, no pycuda): the DiAD pipeline on one GPU.

One batch crosses the bus twice: its images go up, its maps and scores (and reconstructions when asked) come down,
and nothing in between waits for the host. Each slot supplies the stage kernels of :mod:`runtime.sequence` (each
queues its work on the slot's CUDA stream; stage boundaries are CUDA events). Upload -> ``vae_encoder`` + ``hint_encoder`` -> ``noise_latents``
(each image's latent noised with each of the folder's K draws, its hint repeated per draw: image-major, row
``b * K + k``) -> N x ``denoise_step`` on every draw at once -> ``mean_of_draws`` (K > 1) -> ``vae_decoder`` ->
``scorer`` -> download. The draws go up once per slot (again only when the caller's change), the plan's numbers
once per loop. The VAE-only plan (no DDIM step) decodes the encoder's latent where it lies: upload ->
``vae_encoder`` -> ``vae_decoder`` -> ``scorer`` -> download. A model folder exported before the draw graphs
(:data:`runtime.component_io.DRAW_COMPONENTS`) is refused with the commands that add them and build their engines.

Two pipeline slots let a caller double-buffer (:meth:`TensorRTBackend.submit` / :meth:`TensorRTBackend.collect`;
successive batches take turns): each has its own CUDA stream, an execution context per engine, device buffers for
the largest batch (allocated once, shared between engines: the uploaded image feeds both encoders and the scorer,
``noise_latents`` writes where the denoiser reads, the decoder where the scorer reads), pinned host buffers and CUDA
events for the stage timings; the host waits once per batch, in ``collect``.

The N denoising steps of one (batch size, plan) in one slot form a :class:`Loop`: the plan's per-step
timestep/alpha inputs (and its noising coefficients) on the device and a ``denoise_step`` context of its own whose
input shapes are set once, so the CUDA graph captured after a first eager run (TensorRT's warm-up before capture)
always replays against the context state it was captured with, whatever batch sizes ran in between. A capture that
fails leaves that loop running eagerly (logged). A slot keeps its :data:`MAX_LOOPS` most recently used loops and
frees the others.

Needs ``tensorrt`` and ``cuda-python``; the module imports without them and the backend says what is missing.
"""
from __future__ import annotations

import ctypes
import logging
import math
from collections import OrderedDict, deque
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from runtime.backends.base import Backend, BackendOutput
from runtime.backends.tensorrt_env import (
    cuda_call,
    cuda_error,
    find_engine,
    import_cudart,
    import_tensorrt,
    select_device,
)
from runtime.devices import cuda_ordinal
from runtime.errors import ModelFolderError
from runtime.inflight import drain, make_room
from runtime.component_io import (
    COMPONENT_IO,
    DRAW_COMPONENTS,
    NOISE_INPUTS,
    SCHEDULE_INPUTS,
    noise_inputs,
    schedule_inputs,
)
from runtime.manifest import MANIFEST, Manifest
from runtime.schedule import DDIMPlan, as_draws
from runtime.sequence import STAGES, ddim_loop, infer

log = logging.getLogger("runtime.tensorrt")

SLOTS = 2
MAX_LOOPS = 8  # captured (batch size, plan) loops a slot keeps; the least recently used beyond this are freed
ALIGN = 256  # bytes: TensorRT wants every tensor address aligned like this
FLOAT32 = 4
DENOISE = COMPONENT_IO["denoise_step"]
X_T, HINT, X_PREV = DENOISE.only("latent"), DENOISE.only("hint"), DENOISE.only("latent", "outputs")
# Per component, the slot buffer each tensor reads or writes, in COMPONENT_IO's order (inputs, then outputs); None:
# bound elsewhere. The denoiser's contexts belong to the loops (its hint per draw is bound when a loop is made, its
# latents and plan inputs move with the step); noise_latents writes the loop's first latents (x0) and reads the
# loop's coefficients; mean_of_draws reads the loop's output; the decoder's latent is the sample (that mean, the
# loop's output with one draw, or the VAE-only plan's clean latent).
BUFFERS = {
    "vae_encoder": ("image", "latent"),
    "hint_encoder": ("image", "hint"),
    "noise_latents": ("latent", "hint", "noise", None, None, "x0", "hints"),
    "mean_of_draws": (None, "mean"),
    "vae_decoder": (None, "reconstruction"),
    "scorer": ("image", "reconstruction", "anomaly_map", "score"),
}
BINDINGS = {  # (component, tensor) -> slot buffer
    (component, tensor): buffer
    for component, buffers in BUFFERS.items()
    for tensor, buffer in zip(COMPONENT_IO[component].tensors, buffers, strict=True)
    if buffer is not None
}
HOST = ("image", "noise", "reconstruction", "anomaly_map", "score")  # buffers with a pinned host copy
PER_DRAW = ("x0", "x1", "hints")  # buffers with a row per image and draw
EVENTS = 5  # recorded at the start and where each of runtime.sequence.STAGES ends (the last after the downloads)


def check_shared_shapes(engines: dict[str, Engine]) -> None:
    """Tensors of one kind (:data:`COMPONENT_IO`: every latent, the hint, image and reconstruction, ...) share
    buffers or feed one another, so they must have the same per-image shape in every engine."""
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for component, io in COMPONENT_IO.items():
        for tensor, kind in io.tensors.items():
            groups.setdefault(kind, {})[f"{component}.{tensor}"] = engines[component].shapes[tensor][1:]
    for tensors in groups.values():
        if len(set(tensors.values())) > 1:
            raise ModelFolderError(f"engines disagree on a shared tensor's shape: {tensors}")


def step_inputs(plan: DDIMPlan, batch: int) -> np.ndarray:
    """The plan's inputs for ``batch`` latents: float32 ``(3 * steps + 2, stride)``, row ``k * steps + i`` holding
    the denoiser's input ``SCHEDULE_INPUTS[k]`` of step ``i`` and row ``3 * steps + k`` ``noise_latents``' input
    ``NOISE_INPUTS[k]``, each in its first ``batch`` columns, rows padded to ``ALIGN`` bytes."""
    stride = math.ceil(batch * FLOAT32 / ALIGN) * ALIGN // FLOAT32
    table = np.zeros((len(SCHEDULE_INPUTS) * len(plan.timesteps) + len(NOISE_INPUTS), stride), np.float32)
    values = [*schedule_inputs(plan).values(), *noise_inputs(plan, 1).values()]
    table[:, :batch] = np.concatenate(values)[:, None]
    return table


class Memory:
    """Device (``cudaMalloc``) and pinned host (``cudaMallocHost``) allocations, freed together."""

    def __init__(self) -> None:
        self._device: list[int] = []
        self._host: list[int] = []

    def device(self, nbytes: int) -> int:
        self._device.append(cuda_call("cudaMalloc", nbytes))
        return self._device[-1]

    def pinned(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array in page-locked memory (valid until :meth:`free`)."""
        nbytes = math.prod(shape) * FLOAT32
        self._host.append(cuda_call("cudaMallocHost", nbytes))
        return np.frombuffer((ctypes.c_char * nbytes).from_address(self._host[-1]), np.float32).reshape(shape)

    def free(self) -> None:
        while self._device:
            cuda_call("cudaFree", self._device.pop())
        while self._host:
            cuda_call("cudaFreeHost", self._host.pop())


class Engine:
    """A deserialized engine: its I/O names and shapes (batch axis -1) and the batch range of its profile."""

    def __init__(self, trt: ModuleType, runtime: Any, path: Path, component: str, spec: dict[str, Any],
                 rebuild: str):
        self.name = component
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelFolderError(f"{path}: TensorRT could not deserialize this engine (see its log above); {rebuild}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if set(self.inputs) != set(spec["inputs"]) or set(self.outputs) != set(spec["outputs"]):
            raise ModelFolderError(
                f"{path}: engine tensors {self.inputs} -> {self.outputs}, the manifest lists "
                f"{list(spec['inputs'])} -> {list(spec['outputs'])}; {rebuild}"
            )
        wrong = [n for n in names if self.engine.get_tensor_dtype(n) != trt.float32]
        if wrong:
            raise ModelFolderError(f"{path}: tensors {wrong} are not float32 (model folder I/O is float32); {rebuild}")
        self.shapes = {n: tuple(self.engine.get_tensor_shape(n)) for n in names}
        dynamic = [n for n, shape in self.shapes.items() if min(shape[1:], default=0) < 0]
        if dynamic:
            raise ModelFolderError(f"{path}: tensors {dynamic} have dynamic axes besides the batch axis; {rebuild}")
        profiles = {n: [tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0)] for n in self.inputs}
        smallest = max(lo[0] for lo, _, _ in profiles.values())
        self.max_batch = min(hi[0] for _, _, hi in profiles.values())
        if smallest != 1 or self.max_batch < 1:
            raise ModelFolderError(
                f"{path}: its optimisation profile runs batches {smallest} to {self.max_batch}; the runtime needs "
                f"every batch from 1 (a stream's last batch can be short); {rebuild}"
            )
        self.scratch_bytes = self.engine.device_memory_size_v2  # activation memory, for the largest shapes
        self._user_managed = trt.ExecutionContextAllocationStrategy.USER_MANAGED

    def nbytes(self, tensor: str, batch: int) -> int:
        return batch * math.prod(self.shapes[tensor][1:]) * FLOAT32

    def context(self, scratch: int, nbytes: int) -> Context:
        """An execution context whose activations live at ``scratch`` (``nbytes`` >= :attr:`scratch_bytes`)."""
        context = self.engine.create_execution_context(self._user_managed)
        if context is None:
            raise RuntimeError(f"{self.name}: TensorRT could not create an execution context")
        context.set_device_memory(scratch, nbytes)
        return Context(self, context)


class Context:
    """One execution context of an engine: set the batch, point tensors at device memory, enqueue."""

    def __init__(self, engine: Engine, context: Any):
        self.engine, self.context = engine, context

    def bind(self, tensor: str, address: int) -> None:
        if not self.context.set_tensor_address(tensor, address):
            raise RuntimeError(f"{self.engine.name}: set_tensor_address({tensor!r}) failed")

    def set_batch(self, batch: int) -> None:
        for name in self.engine.inputs:
            if not self.context.set_input_shape(name, (batch, *self.engine.shapes[name][1:])):
                raise RuntimeError(f"{self.engine.name}: set_input_shape({name!r}) failed for batch {batch}")

    def enqueue(self, stream: int) -> None:
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"{self.engine.name}: execute_async_v3 failed (see TensorRT's log)")


class Loop:
    """The DDIM steps of one plan at one batch size (latents: images x draws) in one slot: a ``denoise_step``
    context whose input shapes are set once (for this batch), the plan's inputs on the device (:func:`step_inputs`)
    and one CUDA graph, or eager enqueues when capturing failed."""

    def __init__(self, slot: Slot, plan: DDIMPlan, batch: int):
        self.slot, self.batch, self.plan, self.steps = slot, batch, plan, len(plan.timesteps)
        self.memory = Memory()
        self.context = slot.engines["denoise_step"].context(slot.scratch, slot.scratch_bytes)
        self.context.set_batch(batch)
        self.context.bind(HINT, slot.device["hints"])
        table = step_inputs(plan, batch)
        self.row, self.host_table = table.shape[1] * FLOAT32, table  # the async copy's source stays alive
        self.table = self.memory.device(table.nbytes)
        kind = slot.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_call("cudaMemcpyAsync", self.table, table.ctypes.data, table.nbytes, kind, slot.stream)
        self.graph: Any = None
        self.eager = False  # capture failed: enqueue the steps every time

    @property
    def output(self) -> int:
        """The latent buffer holding the result of the last step."""
        return self.slot.device[f"x{self.steps % 2}"]

    def noise_input(self, k: int) -> int:
        """The device address of ``noise_latents``' input ``NOISE_INPUTS[k]`` for this plan."""
        return self.table + (len(SCHEDULE_INPUTS) * self.steps + k) * self.row

    @property
    def state(self) -> str:
        """``"graph"`` (captured, replayed), ``"eager"`` (capture failed) or ``"new"`` (not run yet)."""
        return "graph" if self.graph is not None else "eager" if self.eager else "new"

    def _enqueue(self) -> None:
        latents = (self.slot.device["x0"], self.slot.device["x1"])

        def step(i: int, x: int) -> int:
            self.context.bind(X_T, x)
            self.context.bind(X_PREV, latents[(i + 1) % 2])
            for k, name in enumerate(SCHEDULE_INPUTS):
                self.context.bind(name, self.table + (k * self.steps + i) * self.row)
            self.context.enqueue(self.slot.handle)
            return latents[(i + 1) % 2]

        ddim_loop(step, latents[0], self.plan)

    def run(self) -> None:
        """Replay the graph; the first time, run eagerly (the result, and TensorRT's warm-up) and capture it."""
        if self.graph is not None:
            cuda_call("cudaGraphLaunch", self.graph, self.slot.stream)
            return
        self._enqueue()
        if not self.eager:
            self._capture()

    def _capture(self) -> None:
        """Capture the steps as a graph; when that fails, end the capture, log why and stay eager."""
        cudart, stream = self.slot.cudart, self.slot.stream
        try:
            cuda_call("cudaStreamBeginCapture", stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        except RuntimeError as exc:
            self._fall_back(str(exc))
            return
        try:
            self._enqueue()
            failure = None
        except RuntimeError as exc:
            failure = str(exc)
        err, graph = cudart.cudaStreamEndCapture(stream)  # always ends the capture, whatever failed inside it
        if err != cudart.cudaError_t.cudaSuccess:
            self._fall_back(failure or f"cudaStreamEndCapture failed: {cuda_error(err)}")
            return
        try:
            if failure is None:
                self.graph = cuda_call("cudaGraphInstantiate", graph, 0)
        except RuntimeError as exc:
            failure = str(exc)
        finally:
            cuda_call("cudaGraphDestroy", graph)
        if failure is not None:
            self._fall_back(failure)

    def _fall_back(self, reason: str) -> None:
        self.eager = True
        log.warning("denoise_step, batch %d: CUDA graph capture failed (%s); this loop runs eagerly (slower, same "
                    "results)", self.batch, reason)

    def close(self) -> None:
        if self.graph is not None:
            cuda_call("cudaGraphExecDestroy", self.graph)
            self.graph = None
        self.context = None  # before its engine
        self.memory.free()


class EventClock:
    """The sequence's stage boundaries as CUDA events on a slot's stream, in order (read in :meth:`Slot.finish`);
    a skipped stage is two events back to back."""

    def __init__(self, slot: Slot):
        self.slot, self.recorded = slot, 0

    def start(self) -> None:
        self.recorded = 0
        self.lap("start")

    def lap(self, stage: str) -> None:
        cuda_call("cudaEventRecord", self.slot.events[self.recorded], self.slot.stream)
        self.recorded += 1

    skip = lap


class Slot:
    """One pipeline: stream, execution contexts, device and pinned buffers, events, captured loops, current job.

    The slot's engines run one after another on its stream, so their contexts (the loops' too) share one
    activation buffer.
    """

    def __init__(self, engines: dict[str, Engine], max_batch: int, draws: int = 1):
        self.cudart = import_cudart()
        self.engines, self.max_batch, self.draws = engines, max_batch, draws
        self.memory = Memory()
        self.stream = cuda_call("cudaStreamCreateWithFlags", self.cudart.cudaStreamNonBlocking)
        self.handle = int(self.stream)
        self.events = [cuda_call("cudaEventCreateWithFlags", self.cudart.cudaEventBlockingSync) for _ in range(EVENTS)]
        self.scratch_bytes = max(ALIGN, *(engine.scratch_bytes for engine in engines.values()))
        self.scratch = self.memory.device(self.scratch_bytes)
        self.contexts = {name: engine.context(self.scratch, self.scratch_bytes)
                         for name, engine in engines.items() if name != "denoise_step"}
        where = {buffer: (component, tensor) for (component, tensor), buffer in BINDINGS.items()}
        where |= {"x0": ("denoise_step", X_T), "x1": ("denoise_step", X_T), "hints": ("denoise_step", HINT)}
        rows = {b: max_batch * (draws if b in PER_DRAW else 1) for b in where}
        self.device = {b: self.memory.device(engines[c].nbytes(t, rows[b])) for b, (c, t) in where.items()}
        self.host = {b: self.memory.pinned((rows[b], *engines[where[b][0]].shapes[where[b][1]][1:])) for b in HOST}
        self.sizes = {b: engines[c].nbytes(t, 1) for b, (c, t) in where.items()}  # bytes per row
        for (component, tensor), buffer in BINDINGS.items():
            self.contexts[component].bind(tensor, self.device[buffer])
        self.held_draws: np.ndarray | None = None  # the draws in the device's noise buffer
        self.loops: OrderedDict[tuple, Loop] = OrderedDict()  # least recently used first
        self.job: dict[str, Any] | None = None

    def _copy(self, buffer: str, rows: int, to_device: bool) -> None:
        """Queue a copy of the first ``rows`` rows of ``buffer`` between its pinned and its device copy."""
        kind = self.cudart.cudaMemcpyKind
        host, device, nbytes = self.host[buffer].ctypes.data, self.device[buffer], self.sizes[buffer] * rows
        if to_device:
            cuda_call("cudaMemcpyAsync", device, host, nbytes, kind.cudaMemcpyHostToDevice, self.stream)
        else:
            cuda_call("cudaMemcpyAsync", host, device, nbytes, kind.cudaMemcpyDeviceToHost, self.stream)

    def _run(self, component: str, batch: int) -> None:
        self.contexts[component].set_batch(batch)
        self.contexts[component].enqueue(self.handle)

    def loop_for(self, plan: DDIMPlan, batch: int) -> Loop:
        """The loop of ``(batch, plan)``, made on first use; the least recently used beyond :data:`MAX_LOOPS` are
        freed (no queued work uses them: a slot runs one job at a time)."""
        key = (batch, plan.timesteps.tobytes(), plan.alphas.tobytes(), plan.alphas_prev.tobytes(), plan.start_t)
        if key in self.loops:
            self.loops.move_to_end(key)
        else:
            self.loops[key] = Loop(self, plan, batch)
        while len(self.loops) > MAX_LOOPS:
            self.loops.popitem(last=False)[1].close()
        return self.loops[key]

    def start(self, images: np.ndarray, plan: DDIMPlan, noise: np.ndarray, keep_reconstruction: bool) -> None:
        """Queue one batch on the stream (the host waits for nothing): the sequence (:func:`runtime.sequence.infer`)
        with this slot's kernels, stage boundaries as events. The images go up, the maps and scores (and with
        ``keep_reconstruction`` the reconstructions) come down; the VAE-only plan decodes the clean latent."""
        batch = len(images)
        np.copyto(self.host["image"][:batch], images, casting="same_kind")
        self.job = {"batch": batch, "keep": keep_reconstruction, "noise": noise}
        infer(self, batch, plan, 1 if plan.vae_only else self.draws, EventClock(self))

    # The stage kernels of runtime.sequence: each queues its work on the stream; values are device addresses.
    def encode(self, batch: int) -> int:
        self._copy("image", batch, to_device=True)
        self._run("vae_encoder", batch)
        return self.device["latent"]

    def encode_hint(self, batch: int) -> int:
        self._run("hint_encoder", batch)
        return self.device["hint"]

    def noise(self, latent: int, hint: int, plan: DDIMPlan) -> tuple[int, int]:
        """``noise_latents`` on the draws held on the device, with the coefficients of the plan's loop."""
        self._hold_noise(self.job["noise"])
        loop = self.job["loop"] = self.loop_for(plan, self.job["batch"] * self.draws)
        for k, name in enumerate(NOISE_INPUTS):
            self.contexts["noise_latents"].bind(name, loop.noise_input(k))
        self._run("noise_latents", self.job["batch"])
        return self.device["x0"], self.device["hints"]

    def loop(self, x: int, hints: int, plan: DDIMPlan) -> int:
        """The (batch, plan) loop :meth:`noise` took its coefficients from: its CUDA graph replayed, or its steps
        enqueued."""
        loop = self.job["loop"]
        loop.run()
        return loop.output

    def mean(self, x: int) -> int:
        self.contexts["mean_of_draws"].bind(COMPONENT_IO["mean_of_draws"].only("draws"), x)
        self._run("mean_of_draws", self.job["batch"])
        return self.device["mean"]

    def decode(self, sample: int) -> int:
        self.contexts["vae_decoder"].bind(COMPONENT_IO["vae_decoder"].only("latent"), sample)
        self._run("vae_decoder", self.job["batch"])
        return self.device["reconstruction"]

    def score(self, batch: int, reconstruction: int) -> None:
        """The scorer, then the downloads (read in :meth:`finish`)."""
        self._run("scorer", batch)
        for buffer in ("anomaly_map", "score") + (("reconstruction",) if self.job["keep"] else ()):
            self._copy(buffer, batch, to_device=False)

    def _hold_noise(self, noise: np.ndarray) -> None:
        """Upload the draws once per image of the largest batch, unless they are the ones on the device already
        (the slot's previous job is done, so its pinned copy is free)."""
        draws = as_draws(noise)
        if self.held_draws is not None and np.array_equal(self.held_draws, draws, equal_nan=True):
            return
        self.host["noise"][:] = draws[None]
        self._copy("noise", self.max_batch, to_device=True)
        self.held_draws = draws.copy()

    def finish(self) -> BackendOutput:
        """Wait for the current job; its outputs (copied out of the pinned buffers) and stage seconds."""
        job, self.job = self.job, None
        cuda_call("cudaEventSynchronize", self.events[-1])
        ms = [cuda_call("cudaEventElapsedTime", a, b) for a, b in zip(self.events, self.events[1:])]
        batch = job["batch"]
        return BackendOutput(
            anomaly_map=self.host["anomaly_map"][:batch].copy(),
            score=self.host["score"][:batch].copy(),
            reconstruction=self.host["reconstruction"][:batch].copy() if job["keep"] else None,
            seconds={stage: t / 1000 for stage, t in zip(STAGES, ms, strict=True)},
        )

    def close(self) -> None:
        self.job = None
        cuda_call("cudaStreamSynchronize", self.stream)
        for loop in self.loops.values():
            loop.close()
        self.loops, self.contexts = OrderedDict(), {}
        for event in self.events:
            cuda_call("cudaEventDestroy", event)
        cuda_call("cudaStreamDestroy", self.stream)
        self.memory.free()


class TensorRTBackend(Backend):
    """The model folder's TensorRT engines (``python -m export.tensorrt``) on one CUDA device, ``slots`` batches in
    flight (1: no double buffering, half the buffers)."""

    name = "tensorrt"
    slots = SLOTS

    def __init__(self, manifest: Manifest, device: str = "cuda", verify: bool = True, slots: int = SLOTS):
        super().__init__(manifest, device)
        if slots < 1:
            raise ValueError(f"slots {slots}: expected at least 1")
        self.index, self.slots = cuda_ordinal(device), slots
        trt = import_tensorrt()
        capability = select_device(self.index)
        rebuild = f"rebuild it: python -m export.tensorrt --model {manifest.root} --device cuda:{self.index}"
        if not manifest.has_draw_graphs:
            raise ModelFolderError(
                f"{manifest.root / MANIFEST}: no {' and '.join(DRAW_COMPONENTS)} graphs (exported before the noise "
                f"draws stayed on the GPU); add them: python -m export.draw_graphs --model {manifest.root}, then build "
                f"their engines: python -m export.tensorrt --model {manifest.root} --device cuda:{self.index} "
                f"--components {','.join(DRAW_COMPONENTS)}"
            )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engines = {}
        for name in manifest.components:
            entry = find_engine(manifest, name, trt.__version__, capability, self.index)
            path = manifest.check_file(entry, verify)
            self.engines[name] = Engine(trt, self._runtime, path, name, manifest.component(name), rebuild)
        check_shared_shapes(self.engines)
        self.draws = manifest.draws
        step_batch = self.engines["denoise_step"].max_batch
        if step_batch < self.draws:
            raise ModelFolderError(f"denoise_step's engine runs at most {step_batch} latents, the model averages "
                                   f"{self.draws} noise draws per image; {rebuild}")
        self.max_batch = min([step_batch // self.draws] + [e.max_batch for n, e in self.engines.items()
                                                            if n != "denoise_step"])
        self.image_shape = self.engines["vae_encoder"].shapes[COMPONENT_IO["vae_encoder"].only("image")][1:]
        self.latent_shape = self.engines["denoise_step"].shapes[X_T][1:]
        noised = self.engines["noise_latents"].shapes[COMPONENT_IO["noise_latents"].only("draws")][1:]
        if noised != (self.draws, *self.latent_shape):  # the draw graphs hold K: buffers are sized by the manifest's
            raise ModelFolderError(f"noise_latents' engine noises {noised[0]} draw(s) per image, the model folder has "
                                   f"{self.draws}; {rebuild}")
        self._slots = [Slot(self.engines, self.max_batch, self.draws) for _ in range(slots)]
        self._jobs: deque[Slot] = deque()
        self._next = 0

    @property
    def pending(self) -> int:
        """Batches submitted and not yet collected."""
        return len(self._jobs)

    def loops(self) -> list[dict[str, Any]]:
        """Every slot's DDIM loops: ``slot``, ``latents`` per step (images x draws), ``steps`` and ``state``
        (:attr:`Loop.state`: whether its CUDA graph was captured)."""
        return [{"slot": k, "latents": loop.batch, "steps": loop.steps, "state": loop.state}
                for k, slot in enumerate(self._slots) for loop in slot.loops.values()]

    def submit(
        self, images: np.ndarray, plan: DDIMPlan, noise: np.ndarray, keep_reconstruction: bool = False
    ) -> None:
        """Start a batch of at most ``max_batch`` images on the next pipeline slot (they take turns).

        Returns once it is queued on the slot's stream, so a caller can prepare and submit the next batch while this
        one computes. At most :attr:`slots` batches are in flight. ``noise``: the folder's K draws
        (:meth:`Manifest.noise`), or one latent-shaped draw where K is 1.
        """
        if not 1 <= len(images) <= self.max_batch or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images {images.shape}: expected (B, *{self.image_shape}) with 1 <= B <= {self.max_batch}")
        if tuple(as_draws(noise).shape) != (self.draws, *self.latent_shape):
            raise ValueError(f"noise {noise.shape}: expected the model folder's {self.draws} draw(s), "
                             f"({self.draws}, *{self.latent_shape})" + (f" or {self.latent_shape}" if self.draws == 1
                                                                        else ""))
        if len(self._jobs) == self.slots:
            raise RuntimeError(f"all {self.slots} pipeline slot(s) are busy: collect() a result before submitting more")
        cuda_call("cudaSetDevice", self.index)  # the device is current per thread
        slot = self._slots[self._next]
        self._next = (self._next + 1) % self.slots
        slot.start(images, plan, noise, keep_reconstruction)
        self._jobs.append(slot)

    def collect(self) -> BackendOutput:
        """The results of the oldest submitted batch (waits for it)."""
        if not self._jobs:
            raise RuntimeError("collect() without a submitted batch")
        return self._jobs.popleft().finish()

    def run(
        self, images: np.ndarray, plan: DDIMPlan, noise: np.ndarray, keep_reconstruction: bool = False
    ) -> BackendOutput:
        """Any batch size: chunks of ``max_batch`` through the slots, results concatenated, seconds summed."""
        if self._jobs:
            raise RuntimeError("run() while submitted batches are pending: collect() them first")
        if len(images) == 0:
            raise ValueError("run() needs at least one image")
        parts: list[BackendOutput] = []
        for start in range(0, len(images), self.max_batch):
            make_room(self, parts.append)
            self.submit(images[start : start + self.max_batch], plan, noise, keep_reconstruction)
        drain(self, parts.append)
        return BackendOutput.concat(parts)

    def close(self) -> None:
        """Drop uncollected batches and free the slots, then the engines."""
        self._jobs.clear()
        if self._slots:
            cuda_call("cudaSetDevice", self.index)
        for slot in self._slots:
            slot.close()
        self._slots, self.engines = [], {}  # contexts (dropped by the slots) before engines, engines before runtime
        self._runtime = None
