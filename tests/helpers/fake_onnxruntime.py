"""A test double for ONNX Runtime on a CUDA device, made of the CPU build: a session asked for the CUDA or TensorRT
provider runs on the CPU, and every OrtValue remembers the memory it was made in (``"cpu"`` or ``"cuda"``), so a
test counts what crosses between host and device, as ONNX Runtime would copy it: ``ortvalue_from_numpy`` into
device memory and a host value bound to a device session's input go up; ``numpy()`` of a device value and a device
session's output bound to a host value come down. A value bound by pointer (``bind_input`` / ``bind_output``)
lives where its ``device_type`` says.

It tests where our code keeps which tensor, not ONNX Runtime. :func:`install` puts it into ``sys.modules`` for one
test and returns the counts.
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort

DEVICE_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass
class Transfers:
    """Host -> device (``up``) and device -> host (``down``) copies so far."""

    up: int = 0
    down: int = 0

    def reset(self) -> None:
        self.up = self.down = 0


class Value:
    """An OrtValue in ``device`` memory: a real CPU OrtValue underneath."""

    def __init__(self, real: Any, device: str, transfers: Transfers):
        self.real, self.device, self.transfers = real, device, transfers

    def shape(self) -> list[int]:
        return self.real.shape()

    def data_ptr(self) -> int:
        return self.real.data_ptr()

    def device_name(self) -> str:
        return self.device

    def numpy(self):
        self.transfers.down += self.device != "cpu"
        return self.real.numpy()


class Binding:
    """An I/O binding that records the memory of every bound tensor."""

    def __init__(self, session: Session):
        self.session, self.binding = session, session.session.io_binding()
        self.inputs: dict[str, str] = {}
        self.outputs: dict[str, str] = {}

    def bind_ortvalue_input(self, name: str, value: Value) -> None:
        self.inputs[name] = value.device
        self.binding.bind_ortvalue_input(name, value.real)

    def bind_ortvalue_output(self, name: str, value: Value) -> None:
        self.outputs[name] = value.device
        self.binding.bind_ortvalue_output(name, value.real)

    def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr) -> None:
        self.inputs[name] = device_type
        self.binding.bind_input(name, "cpu", 0, element_type, shape, buffer_ptr)

    def bind_output(self, name, device_type="cpu", device_id=0, element_type=None, shape=None, buffer_ptr=None) -> None:
        self.outputs[name] = device_type
        self.binding.bind_output(name, "cpu", 0, element_type, shape, buffer_ptr)


class Session:
    """An inference session on the CPU that behaves, for transfers, as one on the provider asked for."""

    def __init__(self, path: str, options: Any, providers: list | None = None, transfers: Transfers | None = None):
        names = [p[0] if isinstance(p, tuple) else p for p in providers or ["CPUExecutionProvider"]]
        self.device = "cuda" if names[0] in DEVICE_PROVIDERS else "cpu"
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.transfers = transfers

    def get_inputs(self) -> list:
        return self.session.get_inputs()

    def get_outputs(self) -> list:
        return self.session.get_outputs()

    def io_binding(self) -> Binding:
        return Binding(self)

    def run_with_iobinding(self, binding: Binding) -> None:
        self.transfers.up += sum(memory != self.device for memory in binding.inputs.values())
        self.transfers.down += sum(memory != self.device for memory in binding.outputs.values())
        self.session.run_with_iobinding(binding.binding)


def install(monkeypatch) -> Transfers:
    """Make ``import onnxruntime`` give the double, with every provider available, for this test."""
    transfers = Transfers()

    def from_numpy(array, device: str = "cpu", device_id: int = 0) -> Value:
        transfers.up += device != "cpu"
        return Value(ort.OrtValue.ortvalue_from_numpy(array), device, transfers)

    def from_shape(shape, element_type, device: str = "cpu", device_id: int = 0) -> Value:
        return Value(ort.OrtValue.ortvalue_from_shape_and_type(shape, element_type), device, transfers)

    module = types.ModuleType("onnxruntime")
    module.get_available_providers = lambda: [*DEVICE_PROVIDERS[::-1], "CPUExecutionProvider"]
    module.SessionOptions, module.GraphOptimizationLevel = ort.SessionOptions, ort.GraphOptimizationLevel
    module.__version__ = ort.__version__
    module.InferenceSession = lambda path, options, providers=None: Session(path, options, providers, transfers)
    module.OrtValue = types.SimpleNamespace(ortvalue_from_numpy=from_numpy, ortvalue_from_shape_and_type=from_shape)
    monkeypatch.setitem(sys.modules, "onnxruntime", module)
    return transfers
