"""What the TensorRT backend and the engine builder share: lazy imports of TensorRT and cuda-python with
install hints, checked cudart calls, the GPU's compute capability, and the engine file contract (an engine runs
only on the TensorRT version and GPU architecture it was built for)."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from runtime.errors import BackendError, ModelFolderError

INSTALL_TENSORRT = (
    "TensorRT's Python bindings are not installed. On a dGPU: `pip install tensorrt` (CUDA 13; `tensorrt-cu12` for "
    "CUDA 12; the wheels come from NVIDIA's index, add `--extra-index-url https://pypi.nvidia.com` if pip cannot "
    "find them). On Jetson (JetPack 6, TensorRT 10.3): `sudo apt install python3-libnvinfer` and use a venv "
    "created with --system-site-packages"
)
INSTALL_CUDA_PYTHON = "cuda-python is not installed: `pip install cuda-python` (12.x for CUDA 12 / JetPack 6)"


class TensorRTUnavailableError(BackendError):
    """TensorRT, cuda-python or a CUDA GPU is missing on this machine."""


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a :class:`TensorRTUnavailableError` saying how to install it."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the package is there but libnvinfer is not
        raise TensorRTUnavailableError(f"{INSTALL_TENSORRT} ({exc})") from None
    return tensorrt


def import_cudart() -> ModuleType:
    """cuda-python's runtime API module, or a :class:`TensorRTUnavailableError`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise TensorRTUnavailableError(f"{INSTALL_CUDA_PYTHON} ({exc})") from None
    return cudart


def cuda_call(call: str, *args: Any) -> Any:
    """``cudart.<call>(*args)`` with its error code checked: a RuntimeError naming the call, else the result(s)."""
    cudart = import_cudart()
    err, *result = getattr(cudart, call)(*args)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{call} failed: {err.name} ({cudart.cudaGetErrorString(err)[1].decode()})")
    return result[0] if len(result) == 1 else tuple(result) or None


def compute_capability(device: int = 0) -> str:
    """``"major.minor"`` of CUDA device ``device``; :class:`TensorRTUnavailableError` when there is none."""
    cudart = import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        reason = "no CUDA device found" if err == cudart.cudaError_t.cudaSuccess else err.name
        raise TensorRTUnavailableError(f"TensorRT needs an NVIDIA GPU with a working driver: {reason}")
    if not 0 <= device < count:
        raise TensorRTUnavailableError(f"CUDA device {device} does not exist ({count} device(s) found)")
    props = cuda_call("cudaGetDeviceProperties", device)
    return f"{props.major}.{props.minor}"


def engine_filename(component: str, trt_version: str, capability: str) -> str:
    """``<component>.trt<version>.sm<major><minor>.engine``."""
    return f"{component}.trt{trt_version}.sm{capability.replace('.', '')}.engine"


def check_engine(entry: dict[str, Any], trt_version: str, capability: str, root: str | Path = "MODEL_DIR") -> None:
    """Refuse an engine built for another TensorRT version or GPU architecture (``capability`` "major.minor")."""
    built = (entry["tensorrt"], entry["compute_capability"])
    if built == (trt_version, capability):
        return
    raise ModelFolderError(
        f"{Path(root) / entry['file']}: built with TensorRT {built[0]} for compute capability {built[1]}, but this "
        f"machine runs TensorRT {trt_version} on a compute capability {capability} GPU; engines only run where "
        f"they were built. Rebuild them here: python -m export.tensorrt --model {root}"
    )
