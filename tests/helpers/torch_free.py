"""The torch-free test run (``pytest --torch-free``; ``make jetson-check`` runs it under Python 3.10 and numpy 1.x, as
on JetPack 6): which test modules it runs and the import hook that keeps torch and the packages built on it out."""
from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Iterable
from importlib.machinery import ModuleSpec

# Test modules that need only the runtime's dependencies (numpy, OpenCV, onnxruntime) and test-only tools (pytest,
# onnx to write tiny model folders, scipy and scikit-learn as metric oracles, Pillow). Tests in them that need
# torch are marked `torch` or use a fixture built with torch (tests/conftest.py): the torch-free run skips those.
MODULES = (
    "test_calibrate",
    "test_class_thresholds",
    "test_datasets",
    "test_detector",
    "test_layout",
    "test_manifest",
    "test_metrics",
    "test_onnxruntime",
    "test_preprocess",
    "test_runtime_without_torch",
    "test_schedule",
    "test_scoring",
    "test_sinks",
    "test_sources",
    "test_stream",
    "test_visualize",
)

# Packages the runtime must do without: torch and its ecosystem, and this repository's packages built on them.
BLOCKED = frozenset(
    {"torch", "torchvision", "diffusers", "transformers", "timm", "safetensors", "training", "export", "benchmarks"}
)
# Modules of those packages that need no torch and that the test helpers use: export.draw_graphs writes the tiny model
# folders' draw graphs with onnx alone (tests/helpers/model_folder.py); the export package's __init__ imports nothing.
ALLOWED = frozenset({"export", "export.draw_graphs"})


class Refuse(importlib.abc.MetaPathFinder):
    """An import hook under which importing any of ``names`` or their submodules, other than the modules in
    ``allowed``, raises ModuleNotFoundError."""

    def __init__(self, names: Iterable[str], allowed: Iterable[str]) -> None:
        self.names, self.allowed = frozenset(names), frozenset(allowed)

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name.split(".")[0] in self.names and name not in self.allowed:
            raise ModuleNotFoundError(f"{name} is blocked in the torch-free run", name=name)
        return None


def block(names: Iterable[str] = BLOCKED, allowed: Iterable[str] = ALLOWED) -> None:
    """Refuses ``names`` (but not the modules in ``allowed``) in this interpreter from now on; RuntimeError when one
    of them is already imported."""
    names = frozenset(names)
    loaded = sorted({module.split(".")[0] for module in sys.modules} & names)
    if loaded:
        raise RuntimeError(f"already imported, cannot be blocked: {', '.join(loaded)}")
    sys.meta_path.insert(0, Refuse(names, allowed))
