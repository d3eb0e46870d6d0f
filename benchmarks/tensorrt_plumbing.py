"""The TensorRT backend's CUDA side on a real GPU, against an engine stand-in.

Everything of :mod:`runtime.backends.tensorrt` except TensorRT's own kernels runs for real: cuda-python's runtime
API (streams, pinned host buffers, events, device buffers per slot, a CUDA graph captured per (batch, plan), one or
two slots in flight). Only the ``tensorrt`` module is replaced (:func:`standin_tensorrt`): each engine of a small
model folder written here is a stand-in whose ``execute_async_v3`` runs a few torch kernels (:data:`FORMULAS`) on
the very stream and device buffers TensorRT would be given. The same functions on the CPU, composed as the pipeline
composes the components (:func:`reference`), give what the outputs must equal. A pass-through of cuda-python's
runtime module counts the copies and the host's waits.

Rows (:func:`measure`): per (batch, plan) the outputs against the reference and whether the DDIM loop's CUDA graph
was captured and replayed; the copies and waits per batch; batches per second with one and with two slots in
flight. Without cuda-python, a GPU or torch's CUDA, one skipped row says which is missing.

    python -m benchmarks.tensorrt_plumbing [--seconds 30] [--device 0]
"""
from __future__ import annotations

import argparse
import enum
import json
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from runtime.backends.tensorrt import TensorRTBackend
from runtime.backends.tensorrt_env import TensorRTUnavailableError, compute_capability, engine_filename, import_cudart
from runtime.component_io import COMPONENT_IO, expected_tensors, noise_inputs, schedule_inputs
from runtime.manifest import FORMAT, FORMAT_VERSION, Manifest, file_entry
from runtime.schedule import DDIMPlan, ddim_plan, draws_per_image
from runtime.sequence import WallClock, ddim_loop, infer

STANDIN_VERSION = "stand-in"  # the engines' "TensorRT version"
IMAGE, LATENT, FACTOR = 256, (3, 32, 32), 8  # the stand-in folder: images, latents (= hints), their ratio
DRAWS, MAX_BATCH, BATCHES = 2, 8, (1, 8)
PLANS = (ddim_plan(10), ddim_plan(4), ddim_plan(0))
TOLERANCE = 1e-5  # relative: the stand-in's kernels on the GPU against the same on the CPU
SCRATCH = 256  # bytes of activation memory a stand-in engine asks for


class DeviceWork(Protocol):
    """Where the stand-in's kernels run: tensors over device addresses, work queued on a stream."""

    def tensor(self, address: int, shape: tuple[int, ...]) -> Any: ...

    def launch(self, stream: int, work: Callable[[], None]) -> bool: ...


class CudaArray:
    """``__cuda_array_interface__`` of float32 device memory, for torch to wrap without copying."""

    def __init__(self, address: int, shape: tuple[int, ...]):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": "<f4", "data": (address, False),
                                         "strides": None, "version": 3, "stream": None}


class CudaWork:
    """torch on CUDA device ``device``: tensors over the backend's buffers, kernels on the backend's streams."""

    def __init__(self, device: int):
        import torch

        self.torch, self.device = torch, torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        self.tensors: dict[tuple, Any] = {}
        self.streams: dict[int, Any] = {}

    def tensor(self, address: int, shape: tuple[int, ...]) -> Any:
        key = (address, tuple(shape))  # wrapped once, before any capture (a loop runs eagerly first)
        if key not in self.tensors:
            self.tensors[key] = self.torch.as_tensor(CudaArray(address, shape), device=self.device)
        return self.tensors[key]

    def launch(self, stream: int, work: Callable[[], None]) -> bool:
        if stream not in self.streams:
            self.streams[stream] = self.torch.cuda.ExternalStream(stream, device=self.device)
        with self.torch.cuda.stream(self.streams[stream]):
            work()
        return True


# ------------------------------------------------------------------------------------- the stand-in's kernels
def _col(values: Any, rank: int) -> Any:
    return values.reshape(-1, *([1] * (rank - 1)))


def vae_encoder(image: Any, latent: Any) -> None:
    import torch

    torch.mul(image[:, :, ::FACTOR, ::FACTOR], 0.5, out=latent)


def hint_encoder(image: Any, hint: Any) -> None:
    import torch

    torch.add(image[:, :, FACTOR // 2 :: FACTOR, FACTOR // 2 :: FACTOR], 1.0, out=hint)


def noise_latents(latent: Any, hint: Any, noise: Any, signal: Any, spread: Any, x_t: Any, hints: Any) -> None:
    import torch

    torch.mul(noise, _col(spread, 5), out=x_t)
    x_t.add_(latent.unsqueeze(1)).mul_(_col(signal, 5))
    hints.copy_(hint.unsqueeze(1).expand_as(hints))


def denoise_step(x_t: Any, hint: Any, timestep: Any, alpha_t: Any, alpha_prev: Any, x_prev: Any) -> None:
    import torch

    torch.mul(x_t, _col(alpha_t, 4), out=x_prev)  # in place after that: no allocation while capturing
    x_prev.add_(hint).mul_(_col(alpha_prev, 4)).sub_(_col(timestep, 4))


def mean_of_draws(samples: Any, mean: Any) -> None:
    mean.copy_(samples[:, 0])
    for k in range(1, samples.shape[1]):
        mean.add_(samples[:, k])
    mean.mul_(1.0 / samples.shape[1])


def vae_decoder(latent: Any, image: Any) -> None:
    b, c, h, w = latent.shape
    image.view(b, c, h, FACTOR, w, FACTOR).copy_(latent.view(b, c, h, 1, w, 1).expand(b, c, h, FACTOR, w, FACTOR))
    image.mul_(2.0)


def scorer(image: Any, reconstruction: Any, anomaly_map: Any, score: Any) -> None:
    import torch

    torch.sub(image[:, 0], reconstruction[:, 0], out=anomaly_map)
    anomaly_map.abs_()
    torch.amax(anomaly_map, dim=(1, 2), out=score)


FORMULAS: dict[str, Callable[..., None]] = {f.__name__: f for f in (
    vae_encoder, hint_encoder, noise_latents, denoise_step, mean_of_draws, vae_decoder, scorer)}


class FormulaStages:
    """The stage kernels of :mod:`runtime.sequence` as :data:`FORMULAS` on the CPU (image-major draws, as the
    backend's graphs)."""

    def __init__(self, draws: np.ndarray):
        self.draws = draws

    def encode(self, image: Any) -> Any:
        import torch

        latent = torch.empty(len(image), *LATENT)
        vae_encoder(image, latent)
        return latent

    def encode_hint(self, image: Any) -> Any:
        import torch

        hint = torch.empty(len(image), *LATENT)
        hint_encoder(image, hint)
        return hint

    def noise(self, latent: Any, hint: Any, plan: DDIMPlan) -> tuple[Any, Any]:
        import torch

        batch, draws = len(latent), len(self.draws)
        x, hints = torch.empty(batch, draws, *LATENT), torch.empty(batch, draws, *LATENT)
        scales = [torch.from_numpy(v) for v in noise_inputs(plan, batch).values()]
        noise_latents(latent, hint, torch.from_numpy(draws_per_image(self.draws, batch)), *scales, x, hints)
        return x.view(batch * draws, *LATENT), hints.view(batch * draws, *LATENT)

    def loop(self, x: Any, hints: Any, plan: DDIMPlan) -> Any:
        import torch

        values = list(zip(*schedule_inputs(plan).values()))

        def step(k: int, x: Any) -> Any:
            out = torch.empty_like(x)
            denoise_step(x, hints, *(torch.full((len(x),), float(v)) for v in values[k]), out)
            return out

        return ddim_loop(step, x, plan)

    def mean(self, x: Any) -> Any:
        import torch

        draws = len(self.draws)
        mean = torch.empty(len(x) // draws, *LATENT)
        mean_of_draws(x.view(len(x) // draws, draws, *LATENT), mean)
        return mean

    def decode(self, sample: Any) -> Any:
        import torch

        recon = torch.empty(len(sample), 3, IMAGE, IMAGE)
        vae_decoder(sample, recon)
        return recon

    def score(self, image: Any, recon: Any) -> tuple[Any, Any]:
        import torch

        amap, score = torch.empty(len(image), IMAGE, IMAGE), torch.empty(len(image))
        scorer(image, recon, amap, score)
        return amap, score


def reference(images: np.ndarray, plan: DDIMPlan, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps and scores of :data:`FORMULAS` on the CPU, through the same sequence as the backend."""
    import torch

    done = infer(FormulaStages(noise), torch.from_numpy(images), plan, 1 if plan.vae_only else len(noise),
                 WallClock())
    amap, score = done.scored
    return amap.numpy(), score.numpy()


# ----------------------------------------------------------------------------------------- the stand-in module
class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class ExecutionContextAllocationStrategy(enum.Enum):
    USER_MANAGED = 2


class StandInEngine:
    """A deserialized stand-in: the tensors and profile of its description, :data:`FORMULAS` as its kernels."""

    device_memory_size_v2 = SCRATCH

    def __init__(self, description: dict[str, Any], work: DeviceWork):
        self.name, self.work = description["component"], work
        self.modes = {n: TensorIOMode[m] for n, m in description["modes"].items()}
        self.shapes = {n: tuple(s) for n, s in description["shapes"].items()}
        self.profile = description["profile"]
        self.names = list(self.modes)
        self.inputs = [n for n in self.names if self.modes[n] is TensorIOMode.INPUT]

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.modes[name]

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[list[int]]:
        return self.profile[name]

    def create_execution_context(self, strategy: ExecutionContextAllocationStrategy) -> StandInContext:
        return StandInContext(self)


class StandInContext:
    """Input shapes and tensor addresses by name, as TensorRT keeps them; enqueue runs the engine's kernels."""

    def __init__(self, engine: StandInEngine):
        self.engine, self.shapes, self.addresses, self.scratch = engine, {}, {}, None

    def set_device_memory(self, address: int, size: int) -> None:
        self.scratch = address

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        lo, _, hi = self.engine.profile[name]
        if len(shape) != len(lo) or not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return name in self.engine.modes

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine = self.engine
        if self.scratch is None or set(self.shapes) != set(engine.inputs) or set(self.addresses) != set(engine.names):
            return False
        batch = self.shapes[engine.inputs[0]][0]
        tensors = {n: engine.work.tensor(self.addresses[n], (batch, *engine.shapes[n][1:])) for n in engine.names}
        return engine.work.launch(stream_handle, lambda: FORMULAS[engine.name](**tensors))


def standin_tensorrt(work: DeviceWork) -> types.ModuleType:
    """A ``tensorrt`` module with the API :mod:`runtime.backends.tensorrt` uses, deserializing stand-ins."""
    module = types.ModuleType("tensorrt")
    module.__version__ = STANDIN_VERSION
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity=2: None})
    module.Runtime = type("Runtime", (), {
        "__init__": lambda self, logger: None,
        "deserialize_cuda_engine": lambda self, data: StandInEngine(json.loads(bytes(data)), work),
    })
    module.TensorIOMode, module.float32 = TensorIOMode, "float32"
    module.ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy
    return module


def write_folder(root: Path, capability: str) -> Manifest:
    """The stand-in model folder: each component's description (what its stand-in computes) and its "engine"."""
    tensors = expected_tensors(IMAGE, LATENT, LATENT, DRAWS)
    components, engines = {}, {}
    for name, io in COMPONENT_IO.items():
        most = MAX_BATCH * DRAWS if name == "denoise_step" else MAX_BATCH
        shapes = {n: [-1 if d == "B" else d for d in dims] for side in tensors[name].values() for n, dims in side.items()}
        modes = {n: "INPUT" for n in io.inputs} | {n: "OUTPUT" for n in io.outputs}
        profile = {n: [[b, *shapes[n][1:]] for b in (1, 1, most)] for n in io.inputs}
        (root / f"{name}.standin.json").write_text(json.dumps({"component": name, "formula": FORMULAS[name].__name__}))
        engine = engine_filename(name, STANDIN_VERSION, capability)
        (root / engine).write_text(json.dumps({"component": name, "modes": modes, "shapes": shapes, "profile": profile}))
        components[name] = {**file_entry(root, f"{name}.standin.json"), **tensors[name]}
        engines[name] = [{**file_entry(root, engine), "tensorrt": STANDIN_VERSION, "compute_capability": capability}]
    data = {"format": FORMAT, "version": FORMAT_VERSION, "image_size": IMAGE, "latent_shape": list(LATENT),
            "hint_shape": list(LATENT), "precision": "fp32", "max_batch": MAX_BATCH,
            "schedule": PLANS[0].to_dict(), "noise": {"policy": "fixed", "seed": 0, "draws": DRAWS},
            "components": components, "engines": engines}
    Manifest(root, data).save()
    return Manifest.load(root)


# ---------------------------------------------------------------------------------------- counting, measuring
class CountingCudart(types.ModuleType):
    """cuda-python's runtime module passed through, counting the copies queued (per ``cudaMemcpyKind``) and the
    host's waits (per call)."""

    def __init__(self, real: types.ModuleType):
        super().__init__(real.__name__)
        self.real, self.copies, self.waits = real, Counter(), Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def cudaMemcpyAsync(self, dst: Any, src: Any, nbytes: int, kind: Any, stream: Any) -> Any:
        self.copies[kind.name] += 1
        return self.real.cudaMemcpyAsync(dst, src, nbytes, kind, stream)

    def cudaStreamSynchronize(self, stream: Any) -> Any:
        self.waits["cudaStreamSynchronize"] += 1
        return self.real.cudaStreamSynchronize(stream)

    def cudaEventSynchronize(self, event: Any) -> Any:
        self.waits["cudaEventSynchronize"] += 1
        return self.real.cudaEventSynchronize(event)

    def cudaDeviceSynchronize(self) -> Any:
        self.waits["cudaDeviceSynchronize"] += 1
        return self.real.cudaDeviceSynchronize()


@contextmanager
def standing_in(work: DeviceWork) -> Iterator[CountingCudart]:
    """``tensorrt`` replaced by the stand-in and cuda-python's runtime module by the counting pass-through, for the
    block (what :mod:`runtime.backends.tensorrt` imports lazily)."""
    real = import_cudart()
    counting = CountingCudart(real)
    saved = {name: sys.modules.get(name) for name in ("tensorrt", real.__name__)}
    sys.modules["tensorrt"], sys.modules[real.__name__] = standin_tensorrt(work), counting
    try:
        yield counting
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def row(name: str, status: str = "ok", reason: str = "", **fields: Any) -> dict[str, Any]:
    return {"name": f"tensorrt plumbing: {name}", "status": status, "reason": reason, **fields}


def failed(name: str, exc: BaseException) -> dict[str, Any]:
    text = f"{type(exc).__name__}: {exc}"
    return row(name, "failed", text[:500], cuda_error="cudaError" in text or "CUDA error" in text)


def images_of(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, IMAGE, IMAGE), dtype=np.float32)


def relative_error(outputs: Sequence[Any], expected: tuple[np.ndarray, np.ndarray]) -> float:
    """The largest ``|output - expected|`` of the maps and scores of ``outputs``, over the largest ``|expected|``."""
    scale = max(float(np.abs(e).max()) for e in expected)
    return max(float(np.abs(got - want).max()) / scale for out in outputs
               for got, want in zip((out.anomaly_map, out.score), expected))


def check_outputs(backend: TensorRTBackend, deadline: float) -> list[dict[str, Any]]:
    """Per (batch, plan): three runs (each slot captures its loop, one replays) against :func:`reference`, and the
    state of that (batch, plan)'s loops."""
    rows, noise = [], backend.manifest.noise()
    for plan in PLANS:
        for batch in BATCHES:
            name = f"batch {batch}, {plan.label}"
            if time.time() > deadline:
                rows.append(row(name, "skipped", "time short: the deadline passed"))
                continue
            try:
                images = images_of(batch)
                start = time.perf_counter()
                outputs = [backend.run(images, plan, noise) for _ in range(3)]
                seconds = time.perf_counter() - start
                error = relative_error(outputs, reference(images, plan, noise))
            except Exception as exc:  # noqa: BLE001 (a CUDA error is the row; the others still run)
                rows.append(failed(name, exc))
                continue
            states = sorted({loop["state"] for loop in backend.loops()
                             if (loop["latents"], loop["steps"]) == (batch * DRAWS, plan.steps)})
            graph = "no loop (VAE-only)" if plan.vae_only else "+".join(states)
            problems = ([f"outputs differ from the stand-in's on the CPU by {error:.2g} relative"]
                        if not error <= TOLERANCE else [])
            problems += [] if plan.vae_only or states == ["graph"] else [f"DDIM loop not captured: {graph}"]
            rows.append(row(name, "failed" if problems else "ok", "; ".join(problems), batch=batch, plan=plan.label,
                            draws=DRAWS, loop=graph, max_relative_error=error, ms_per_run=1000 * seconds / 3))
    return rows


def count_transfers(backend: TensorRTBackend, counting: CountingCudart, batches: int = 8) -> dict[str, Any]:
    """Copies and host waits per batch once every slot ran the (batch, plan): ``batches`` batches of the largest
    size, double-buffered; the waits while queueing counted apart (none expected: the host waits in collect)."""
    name = f"copies and waits per batch (batch {MAX_BATCH}, {PLANS[0].label}, {DRAWS} draws)"
    plan, noise, images = PLANS[0], backend.manifest.noise(), images_of(MAX_BATCH)
    for _ in range(backend.slots):
        backend.run(images, plan, noise)
    counting.copies.clear()
    counting.waits.clear()
    queueing = 0
    for _ in range(batches):
        if backend.pending == backend.slots:
            backend.collect()
        before = sum(counting.waits.values())
        backend.submit(images, plan, noise)
        queueing += sum(counting.waits.values()) - before
    while backend.pending:
        backend.collect()
    per_batch = {"host_to_device": counting.copies["cudaMemcpyHostToDevice"] / batches,
                 "device_to_host": counting.copies["cudaMemcpyDeviceToHost"] / batches,
                 "device_to_device": counting.copies["cudaMemcpyDeviceToDevice"] / batches,
                 "waits": sum(counting.waits.values()) / batches, "waits_while_queueing": queueing / batches}
    expected = {"host_to_device": 1, "device_to_host": 2, "device_to_device": 0, "waits": 1, "waits_while_queueing": 0}
    wrong = {k: v for k, v in per_batch.items() if v != expected[k]}
    reason = f"per batch {wrong}, expected {({k: expected[k] for k in wrong})}" if wrong else ""
    return row(name, "failed" if wrong else "ok", reason, batches=batches, **per_batch)


def throughput(manifest: Manifest, device: int, slots: int, seconds: float) -> dict[str, Any]:
    """Batches per second of the largest batch with ``slots`` in flight for about ``seconds``: submit while a slot
    is free, else collect the oldest (the host copies the next batch's images while the GPU computes)."""
    plan, noise, images = PLANS[0], manifest.noise(), images_of(MAX_BATCH)
    backend = TensorRTBackend(manifest, f"cuda:{device}", slots=slots)
    try:
        for _ in range(slots):
            backend.run(images, plan, noise)  # every slot's loop captured
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            if backend.pending == slots:
                backend.collect()
                done += 1
            backend.submit(images, plan, noise)
        while backend.pending:
            backend.collect()
            done += 1
        elapsed = time.perf_counter() - start
    finally:
        backend.close()
    return row(f"{slots} slot(s) in flight", slots=slots, batch=MAX_BATCH, plan=plan.label, draws=DRAWS,
               batches=done, seconds=elapsed, batches_per_s=done / elapsed, images_per_s=done * MAX_BATCH / elapsed)


def run_measurements(deadline: float, device: int, work: DeviceWork) -> list[dict[str, Any]]:
    """Every row of :func:`measure` with the stand-in's kernels run by ``work`` (``deadline``: ``time.time()``)."""
    capability = compute_capability(device)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tensorrt-plumbing-") as tmp, standing_in(work) as counting:
        manifest = write_folder(Path(tmp), capability)
        try:
            backend = TensorRTBackend(manifest, f"cuda:{device}")
        except Exception as exc:  # noqa: BLE001 (reported as the row)
            return [failed("the backend on the stand-in folder", exc)]
        try:
            rows += check_outputs(backend, deadline)
            rows.append(count_transfers(backend, counting))
        except Exception as exc:  # noqa: BLE001
            rows.append(failed("copies and waits per batch", exc))
        finally:
            backend.close()
        for slots in (1, 2):
            left = deadline - time.time()
            if left < 1.0:
                rows.append(row(f"{slots} slot(s) in flight", "skipped", f"time short: {left:.1f} s left"))
                continue
            try:
                rows.append(throughput(manifest, device, slots, min(3.0, left / (4 - slots))))
            except Exception as exc:  # noqa: BLE001
                rows.append(failed(f"{slots} slot(s) in flight", exc))
    rates = [r["batches_per_s"] for r in rows if "batches_per_s" in r]
    if len(rates) == 2:
        rows[-1]["speedup_over_one_slot"] = rates[1] / rates[0]
    return rows


def measure(deadline: float, device: int = 0) -> list[dict[str, Any]]:
    """The TensorRT backend's CUDA side on CUDA device ``device`` against the engine stand-in, until ``deadline``
    (``time.time()``): rows with ``name``, ``status`` (ok, skipped, failed), ``reason`` and the measured fields.
    Without cuda-python, a GPU or torch's CUDA, one skipped row naming what is missing."""
    try:
        compute_capability(device)
    except TensorRTUnavailableError as exc:
        return [row("CUDA side", "skipped", str(exc))]
    try:
        import torch
    except ImportError as exc:
        return [row("CUDA side", "skipped", f"the engine stand-in runs its kernels with torch, which does not import "
                                            f"({exc})")]
    if not torch.cuda.is_available():
        return [row("CUDA side", "skipped", f"the engine stand-in runs its kernels with torch, whose CUDA is not "
                                            f"available (torch {torch.__version__})")]
    try:
        return run_measurements(deadline, device, CudaWork(device))
    except Exception as exc:  # noqa: BLE001 (reported as the row)
        return [failed("CUDA side", exc)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tensorrt_plumbing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="time for all rows (default 30)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device ordinal (default 0)")
    args = parser.parse_args(argv)
    rows = measure(time.time() + args.seconds, args.device)
    for r in rows:
        print(json.dumps(r))
    return 0 if any(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
