"""What the TensorRT backend and the engine builder share: lazy imports of TensorRT and cuda-python with
install hints, checked cudart calls, selecting a GPU, and the engine file contract (an engine runs only on the
TensorRT version and GPU architecture it was built for)."""
from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType
from typing import Any

from runtime.errors import BackendError, ModelFolderError
from runtime.manifest import MANIFEST, Manifest

INSTALL_TENSORRT = (
    "TensorRT's Python bindings are not installed. On a dGPU: `pip install tensorrt` (CUDA 13; `tensorrt-cu12` for "
    "CUDA 12; the wheels come from NVIDIA's index, add `--extra-index-url https://pypi.nvidia.com` if pip cannot "
    "find them). On Jetson (JetPack 6, TensorRT 10.3): `sudo apt install python3-libnvinfer` and use a venv "
    "created with --system-site-packages"
)
INSTALL_CUDA_PYTHON = "`pip install cuda-python` (12.x for CUDA 12 / JetPack 6)"
CUDART_MODULES = ("cuda.bindings.runtime", "cuda.cudart")  # cuda-python >= 12.6, then the layout before it
CUDA_PYTHON_DISTRIBUTIONS = ("cuda-python", "cuda-bindings")


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
    """cuda-python's runtime API module: ``cuda.bindings.runtime``, else the older ``cuda.cudart`` (cuda-python
    before 12.6, e.g. on JetPack 6); a :class:`TensorRTUnavailableError` saying what is installed otherwise."""
    failures = []
    for name in CUDART_MODULES:
        try:
            return importlib.import_module(name)
        except (ImportError, OSError) as exc:  # OSError: the bindings are there but libcudart is not
            failures.append(f"{name}: {exc}")
    installed = [f"{dist} {version}" for dist in CUDA_PYTHON_DISTRIBUTIONS if (version := _version(dist))]
    state = (f"{', '.join(installed)} is installed but its runtime module does not import" if installed
             else "cuda-python is not installed")
    raise TensorRTUnavailableError(f"{state} ({'; '.join(failures)}): {INSTALL_CUDA_PYTHON}")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def cuda_call(call: str, *args: Any) -> Any:
    """``cudart.<call>(*args)`` with its error code checked: a RuntimeError naming the call, else the result(s)."""
    cudart = import_cudart()
    err, *result = getattr(cudart, call)(*args)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{call} failed: {cuda_error(err)}")
    return result[0] if len(result) == 1 else tuple(result) or None


def cuda_error(err: Any) -> str:
    """``name (description)`` of a cudart error code."""
    return f"{err.name} ({import_cudart().cudaGetErrorString(err)[1].decode()})"


def compute_capability(device: int = 0) -> str:
    """``"major.minor"`` of CUDA device ``device``; :class:`TensorRTUnavailableError` when there is none."""
    cudart = import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        reason = "no CUDA device found" if err == cudart.cudaError_t.cudaSuccess else err.name
        raise TensorRTUnavailableError(f"TensorRT needs an NVIDIA GPU with a working driver: {reason}")
    if not 0 <= device < count:
        raise TensorRTUnavailableError(
            f"CUDA device {device} does not exist: this machine has {count} (0 to {count - 1}); choose one with "
            "--device cuda:N (nvidia-smi lists them)"
        )
    props = cuda_call("cudaGetDeviceProperties", device)
    return f"{props.major}.{props.minor}"


def select_device(device: int) -> str:
    """Make CUDA device ``device`` current for the calling thread (TensorRT builds, deserializes and runs on the
    current device) and return its compute capability."""
    capability = compute_capability(device)
    cuda_call("cudaSetDevice", device)
    return capability


def engine_filename(component: str, trt_version: str, capability: str) -> str:
    """``<component>.trt<version>.sm<major><minor>.engine``."""
    return f"{component}.trt{trt_version}.sm{capability.replace('.', '')}.engine"


def find_engine(manifest: Manifest, component: str, trt_version: str, capability: str, device: int) -> dict[str, Any]:
    """``component``'s engine entry for this TensorRT version and GPU architecture; a :class:`ModelFolderError`
    naming the targets the folder has engines for, and the command that builds one here, when there is none."""
    entry = manifest.engine(component, trt_version, capability)
    if entry is not None:
        return entry
    built = [f"{e['file']} (TensorRT {e['tensorrt']}, compute capability {e['compute_capability']})"
             for e in manifest.engines.get(component, [])]
    have = f"it has {', '.join(built)}, and engines only run where they were built" if built else "it has none"
    raise ModelFolderError(
        f"{manifest.root / MANIFEST}: no {component} engine for TensorRT {trt_version} on compute capability "
        f"{capability} (CUDA device {device}); {have}. Build them here: python -m export.tensorrt --model "
        f"{manifest.root} --device cuda:{device}"
    )
