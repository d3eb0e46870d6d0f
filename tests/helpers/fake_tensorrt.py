"""Test doubles for ``tensorrt`` and ``cuda.bindings.runtime`` that follow the real signatures, so that the TensorRT
export and backend logic runs on a CPU: slot rotation, CUDA graph keys, replay after a shape change, eager fallback,
binding maps, device selection and error paths.

They test our logic, not TensorRT or CUDA: an "engine" is a JSON header (the compute capability of the device it
was built on, its optimisation profile) followed by the component's ONNX graph, which ONNX Runtime runs on the CPU;
"device memory" is host memory that only ``cudaMemcpyAsync`` and the engines touch; streams run their work at
once, except while capturing, when work is recorded into the graph. What they do check like the real thing:
cudart calls return tuples whose first element is a ``cudaError_t``; tensors are bound by name
(``set_input_shape``, ``set_tensor_address``) and run by ``execute_async_v3``; an engine deserializes only on the
compute capability it was built for; a captured graph replays the shapes and addresses of capture time, and a
replay after its context's shapes changed is counted in ``stale_replays`` and writes NaN (the wrong result a real
GPU gives silently); capture fails on request (``fail_capture``: ``execute_async_v3`` returns False and the capture
is invalidated; ``fail_instantiate``: ``cudaGraphInstantiate`` fails). They count what a test pins per batch: the
copies run (``copies``, per ``cudaMemcpyKind`` name, counted when a copy runs, a graph's replays included) and the
host's waits (``syncs``, per call: ``cudaStreamSynchronize``, ``cudaEventSynchronize``).

:func:`install` puts both into ``sys.modules`` for one test.
"""
from __future__ import annotations

import ctypes
import enum
import json
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

HEADER_END = b"\n--onnx--\n"


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorIllegalState = 401
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


OK = cudaError_t.cudaSuccess


@dataclass
class Stream:
    handle: int
    capture: list[Callable[[], None]] | None = None  # work recorded while capturing
    invalidated: bool = False
    work: int = 0  # operations run or recorded on it

    def __int__(self) -> int:
        return self.handle


@dataclass
class Graph:
    nodes: list[Callable[[], None]]


@dataclass
class Properties:
    major: int
    minor: int
    name: str = "Fake GPU"


class FakeCudart(types.ModuleType):
    """``cuda.bindings.runtime`` with the calls the code base makes; ``devices``: (major, minor) per GPU."""

    cudaError_t = cudaError_t
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamNonBlocking = 1
    cudaEventBlockingSync = 1

    def __init__(self, devices: list[tuple[int, int]]):
        super().__init__("cuda.bindings.runtime")
        self.devices = devices
        self.device_memory: dict[int, np.ndarray] = {}
        self.host_memory: dict[int, np.ndarray] = {}
        self.streams: dict[int, Stream] = {}
        self.events: dict[int, float] = {}
        self.graphs: dict[int, Graph] = {}
        self.executables: dict[int, Graph] = {}
        self.fail_capture = self.fail_instantiate = False
        self.instantiated = self.launches = self.stale_replays = 0
        self.copies: Counter[str] = Counter()  # copies run, per cudaMemcpyKind name
        self.syncs: Counter[str] = Counter()  # host waits, per call
        self._current = threading.local()
        self._ids = iter(range(1, 1 << 30))

    # ------------------------------------------------------------------------------------------ devices
    @property
    def current(self) -> int:
        return getattr(self._current, "device", 0)

    def capability(self, device: int | None = None) -> str:
        major, minor = self.devices[self.current if device is None else device]
        return f"{major}.{minor}"

    def cudaGetErrorString(self, err):
        return OK, err.name.encode()

    def cudaGetDeviceCount(self):
        return (OK, len(self.devices)) if self.devices else (cudaError_t.cudaErrorNoDevice, 0)

    def cudaGetDeviceProperties(self, device):
        if not 0 <= device < len(self.devices):
            return cudaError_t.cudaErrorInvalidDevice, None
        return OK, Properties(*self.devices[device])

    def cudaSetDevice(self, device):
        if not 0 <= device < len(self.devices):
            return (cudaError_t.cudaErrorInvalidDevice,)
        self._current.device = device
        return (OK,)

    # ------------------------------------------------------------------------------------------- memory
    def _allocate(self, table: dict[int, np.ndarray], nbytes: int) -> int:
        buffer = np.zeros(max(nbytes, 1), np.uint8)
        table[buffer.ctypes.data] = buffer
        return buffer.ctypes.data

    def cudaMalloc(self, nbytes):
        return OK, self._allocate(self.device_memory, nbytes)

    def cudaMallocHost(self, nbytes):
        return OK, self._allocate(self.host_memory, nbytes)

    def cudaFree(self, address):
        return (OK,) if self.device_memory.pop(address, None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    def cudaFreeHost(self, address):
        return (OK,) if self.host_memory.pop(address, None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    def device_view(self, address: int, nbytes: int) -> np.ndarray:
        """The bytes at a device address; AssertionError unless they lie inside one device allocation."""
        for start, buffer in self.device_memory.items():
            if start <= address and address + nbytes <= start + buffer.nbytes:
                return buffer[address - start : address - start + nbytes]
        raise AssertionError(f"{address:#x} (+{nbytes} bytes) is not device memory")

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        to_device = kind == cudaMemcpyKind.cudaMemcpyHostToDevice
        device, host = (dst, src) if to_device else (src, dst)

        def copy() -> None:
            self.copies[cudaMemcpyKind(kind).name] += 1
            if kind == cudaMemcpyKind.cudaMemcpyDeviceToDevice:
                self.device_view(dst, nbytes)[:] = self.device_view(src, nbytes)
                return
            view = self.device_view(device, nbytes)
            outside = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(host))
            if to_device:
                view[:] = outside
            else:
                outside[:] = view

        return (OK,) if self.enqueue(int(stream), copy) else (cudaError_t.cudaErrorStreamCaptureInvalidated,)

    # ------------------------------------------------------------------------------------ streams, events
    def cudaStreamCreateWithFlags(self, flags):
        stream = Stream(next(self._ids))
        self.streams[stream.handle] = stream
        return OK, stream

    def cudaStreamDestroy(self, stream):
        return (OK,) if self.streams.pop(int(stream), None) else (cudaError_t.cudaErrorInvalidValue,)

    def cudaStreamSynchronize(self, stream):
        self.syncs["cudaStreamSynchronize"] += 1
        if self.streams[int(stream)].capture is not None:
            self.streams[int(stream)].invalidated = True
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        return (OK,)

    def enqueue(self, handle: int, work: Callable[[], None]) -> bool:
        """Run ``work`` on stream ``handle`` now, or record it while capturing; False if that capture fails."""
        stream = self.streams[handle]
        stream.work += 1
        if stream.capture is None:
            work()
            return True
        if self.fail_capture:
            stream.invalidated = True
        stream.capture.append(work)
        return not stream.invalidated

    def cudaEventCreateWithFlags(self, flags):
        event = next(self._ids)
        self.events[event] = 0.0
        return OK, event

    def cudaEventRecord(self, event, stream):
        self.events[event] = time.perf_counter()
        return (OK,)

    def cudaEventSynchronize(self, event):
        self.syncs["cudaEventSynchronize"] += 1
        return (OK,)

    def cudaEventElapsedTime(self, start, end):
        return OK, (self.events[end] - self.events[start]) * 1000.0

    def cudaEventDestroy(self, event):
        return (OK,) if self.events.pop(event, None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    # ------------------------------------------------------------------------------------------- graphs
    def cudaStreamBeginCapture(self, stream, mode):
        stream = self.streams[int(stream)]
        if stream.capture is not None:
            return (cudaError_t.cudaErrorIllegalState,)
        stream.capture, stream.invalidated = [], False
        return (OK,)

    def cudaStreamEndCapture(self, stream):
        stream = self.streams[int(stream)]
        if stream.capture is None:
            return cudaError_t.cudaErrorIllegalState, None
        nodes, invalidated = stream.capture, stream.invalidated
        stream.capture, stream.invalidated = None, False
        if invalidated:
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        graph = next(self._ids)
        self.graphs[graph] = Graph(nodes)
        return OK, graph

    def cudaGraphInstantiate(self, graph, flags):
        if self.fail_instantiate:
            return cudaError_t.cudaErrorInvalidValue, None
        executable = next(self._ids)
        self.executables[executable] = Graph(list(self.graphs[graph].nodes))
        self.instantiated += 1
        return OK, executable

    def cudaGraphDestroy(self, graph):
        return (OK,) if self.graphs.pop(graph, None) else (cudaError_t.cudaErrorInvalidValue,)

    def cudaGraphExecDestroy(self, executable):
        return (OK,) if self.executables.pop(executable, None) else (cudaError_t.cudaErrorInvalidValue,)

    def cudaGraphLaunch(self, executable, stream):
        nodes = self.executables[executable].nodes
        self.launches += 1
        for node in nodes:
            self.enqueue(int(stream), node)
        return (OK,)

    def leaks(self) -> dict[str, int]:
        """What is still allocated or alive."""
        tables = ("device_memory", "host_memory", "streams", "events", "graphs", "executables")
        return {name: len(getattr(self, name)) for name in tables if getattr(self, name)}


# ------------------------------------------------------------------------------------------------ TensorRT
class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1


class ExecutionContextAllocationStrategy(enum.Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 5


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class Logger:
    WARNING = 2

    def __init__(self, severity: int = WARNING):
        self.severity = severity


@dataclass
class Network:
    onnx: bytes = b""
    names: list[str] = field(default_factory=list)

    @property
    def num_inputs(self) -> int:
        return len(self.names)

    def get_input(self, i: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(name=self.names[i])


class OnnxParser:
    def __init__(self, network: Network, logger: Logger):
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path: str) -> bool:
        model = onnx.load(path)
        self.network.onnx = model.SerializeToString()
        self.network.names = [i.name for i in model.graph.input]
        return True


class Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name, lo, opt, hi) -> None:
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class TimingCache:
    def serialize(self) -> bytes:
        return b"fake timing cache"


class BuilderConfig:
    def __init__(self) -> None:
        self.builder_optimization_level, self.profiles = 3, []

    def set_memory_pool_limit(self, pool, size) -> None: ...

    def add_optimization_profile(self, profile: Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> TimingCache:
        return TimingCache()

    def set_timing_cache(self, cache, ignore_mismatch) -> bool:
        return True

    def get_timing_cache(self) -> TimingCache:
        return TimingCache()


def engine_bytes(capability: str, profile: dict[str, list[list[int]]], onnx_bytes: bytes) -> bytes:
    """A fake serialized engine: built for ``capability`` with one optimisation profile."""
    return json.dumps({"capability": capability, "profile": profile}).encode() + HEADER_END + onnx_bytes


class Builder:
    """Builds on the CUDA device current when it is created, as TensorRT does."""

    def __init__(self, logger: Logger):
        self.capability = FakeTensorRT.cudart.capability()

    def create_network(self, flags: int) -> Network:
        return Network()

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
        return engine_bytes(self.capability, config.profiles[0].shapes, network.onnx)


class Runtime:
    def __init__(self, logger: Logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
        """None (TensorRT logs why) unless built for the current device's compute capability."""
        header, _, graph = bytes(data).partition(HEADER_END)
        try:
            meta = json.loads(header)
        except ValueError:
            return None
        if meta["capability"] != FakeTensorRT.cudart.capability():
            return None
        return Engine(meta["profile"], graph)


class Engine:
    """The component's ONNX graph on ONNX Runtime, behind TensorRT's name-based tensor API."""

    device_memory_size_v2 = 4096

    def __init__(self, profile: dict[str, list[list[int]]], graph: bytes):
        self.session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        self.profile = profile
        io = [(t, TensorIOMode.INPUT) for t in self.session.get_inputs()]
        io += [(t, TensorIOMode.OUTPUT) for t in self.session.get_outputs()]
        self.names = [t.name for t, _ in io]
        self.modes = {t.name: mode for t, mode in io}
        self.shapes = {t.name: tuple(d if isinstance(d, int) else -1 for d in t.shape) for t, _ in io}

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.modes[name]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[list[int]]:
        return self.profile[name]

    def create_execution_context(self, strategy: ExecutionContextAllocationStrategy) -> Context:
        assert strategy is ExecutionContextAllocationStrategy.USER_MANAGED
        return Context(self)


class Context:
    """An execution context: input shapes, tensor addresses and activation memory, as TensorRT keeps them."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.scratch: int | None = None

    def set_device_memory(self, address: int, size: int) -> None:
        assert size >= self.engine.device_memory_size_v2
        FakeTensorRT.cudart.device_view(address, size)
        self.scratch = address

    def set_input_shape(self, name: str, shape) -> bool:
        lo, _, hi = self.engine.profile[name]
        shape = tuple(shape)
        if len(shape) != len(lo) or not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine.modes:
            return False
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        """Enqueue one inference with the shapes and addresses set now (what a captured graph keeps)."""
        inputs = [n for n in self.engine.names if self.engine.modes[n] is TensorIOMode.INPUT]
        if self.scratch is None or set(self.shapes) != set(inputs) or set(self.addresses) != set(self.engine.names):
            return False
        shapes, addresses = dict(self.shapes), dict(self.addresses)
        cudart = FakeTensorRT.cudart
        capturing = cudart.streams[stream_handle].capture is not None

        def infer() -> None:
            stale = capturing and self.shapes != shapes  # the context changed since this work was captured
            cudart.stale_replays += stale
            batch = shapes[inputs[0]][0]
            feed = {n: _array(addresses[n], shapes[n]) for n in inputs}
            outputs = self.engine.session.run(None, feed)
            for name, value in zip((o.name for o in self.engine.session.get_outputs()), outputs):
                target = _array(addresses[name], (batch, *self.engine.shapes[name][1:]))
                target[...] = np.nan if stale else value

        return cudart.enqueue(stream_handle, infer)


def _array(address: int, shape: tuple[int, ...]) -> np.ndarray:
    nbytes = int(np.prod(shape)) * 4
    return FakeTensorRT.cudart.device_view(address, nbytes).view(np.float32).reshape(shape)


class FakeTensorRT(types.ModuleType):
    """``tensorrt`` with the API the code base uses (10.3 / 11.x subset)."""

    cudart: FakeCudart  # the fake CUDA runtime its engines run on (set by install)
    Logger, Runtime, Builder, OnnxParser = Logger, Runtime, Builder, OnnxParser
    TensorIOMode, ExecutionContextAllocationStrategy = TensorIOMode, ExecutionContextAllocationStrategy
    NetworkDefinitionCreationFlag, MemoryPoolType = NetworkDefinitionCreationFlag, MemoryPoolType
    float32, float16 = DataType.FLOAT, DataType.HALF

    def __init__(self, version: str):
        super().__init__("tensorrt")
        self.__version__ = version


def install(monkeypatch, devices: tuple[tuple[int, int], ...] = ((8, 6), (8, 9)),
            version: str = "10.3.0") -> tuple[FakeTensorRT, FakeCudart]:
    """Make ``import tensorrt`` and ``from cuda.bindings import runtime`` give the fakes for this test."""
    cudart = FakeCudart(list(devices))
    trt = FakeTensorRT(version)
    FakeTensorRT.cudart = cudart
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart
    for name, module in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, module)
    return trt, cudart
