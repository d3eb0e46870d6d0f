"""One vocabulary for where and on what a model folder runs, shared by every command and API.

- ``backend``: ``onnxruntime`` or ``tensorrt`` (native TensorRT engines built by ``python -m export.tensorrt``).
- ``device``: ``cpu``, ``cuda`` (CUDA device 0) or ``cuda:N``, as PyTorch spells them; the ONNX Runtime and
  TensorRT code takes the ordinal from the string (:func:`parse_device`, :func:`cuda_ordinal`).
- ``provider``: ONNX Runtime's execution provider, ``cpu``, ``cuda`` or ``tensorrt`` (ONNX Runtime's TensorRT
  provider, not the native backend); by default the device's own, ``cpu`` or ``cuda``.
"""
from __future__ import annotations

from runtime.errors import BackendError

BACKENDS = ("onnxruntime", "tensorrt")
PROVIDERS = ("cpu", "cuda", "tensorrt")
DEVICE_HELP = "cpu, cuda or cuda:N"


def parse_device(device: str) -> tuple[str, int]:
    """``"cpu"`` -> ``("cpu", 0)``; ``"cuda"`` / ``"cuda:N"`` -> ``("cuda", N)``; anything else: BackendError."""
    kind, colon, index = device.partition(":")
    if device == "cpu" or (kind == "cuda" and (not colon or index.isdigit())):
        return kind, int(index or 0)
    hint = f" (cuda:{device} for CUDA device {device})" if device.isdigit() else ""
    raise BackendError(f"device {device!r}: expected {DEVICE_HELP}{hint}")


def cuda_ordinal(device: str) -> int:
    """The CUDA device number of ``"cuda"`` / ``"cuda:N"``; BackendError for ``cpu`` or a malformed string."""
    kind, index = parse_device(device)
    if kind != "cuda":
        raise BackendError(f"device {device!r}: TensorRT runs on a CUDA device, cuda or cuda:N")
    return index


def onnxruntime_provider(device: str, provider: str | None = None) -> tuple[str, int]:
    """``(provider, device number)`` for ONNX Runtime: ``provider`` (default the device's own) checked against
    ``device`` (the ``cpu`` provider runs on ``cpu``, ``cuda`` and ``tensorrt`` on a CUDA device)."""
    kind, index = parse_device(device)
    provider = provider or kind
    if provider not in PROVIDERS:
        raise BackendError(f"provider {provider!r}: expected one of {', '.join(PROVIDERS)}")
    if (provider == "cpu") != (kind == "cpu"):
        raise BackendError(
            f"provider {provider!r} on device {device!r}: the cpu provider runs on cpu, cuda and tensorrt on cuda[:N]"
        )
    return provider, index
