"""torch module -> ONNX file: TorchScript exporter, dynamic batch axis, checker and shape inference, external
data once a graph passes protobuf's 2 GB limit."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from export.graphs import Component

DEFAULT_OPSET = 17
PROTO_LIMIT = 2**31 - 1  # protobuf's hard limit on one serialised message
EXTERNAL_THRESHOLD = 1 << 10  # tensors above 1 KiB go to the external file when external data is used


def export_component(component: Component, path: Path, opset: int = DEFAULT_OPSET) -> list[Path]:
    """Export ``component`` to ``path`` with every I/O's axis 0 named ``B``; check it; return the files written.

    Graphs over 2 GB (``sd15``'s fused step) are written with their weights in ``<name>.onnx.data``.
    """
    names = list(component.inputs) + list(component.outputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter writes a >2 GB graph as one file per tensor: export aside, then save in our layout.
    with torch.no_grad(), warnings.catch_warnings(), tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        raw = Path(tmp) / path.name
        torch.onnx.export(
            component.module.eval(),
            tuple(component.inputs.values()),
            str(raw),
            input_names=list(component.inputs),
            output_names=list(component.outputs),
            dynamic_axes={name: {0: "B"} for name in names},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
        files = save(onnx.load(str(raw)), path)
    check(path)
    return files


def save(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Write ``model``; over the protobuf limit its weights go to ``<name>.data``. Returns the files written."""
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if not too_large(model):
        onnx.save_model(model, str(path))
        return [path]
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
        size_threshold=EXTERNAL_THRESHOLD,
    )
    return [path, data]


def too_large(model: onnx.ModelProto) -> bool:
    """Whether ``model`` passes protobuf's 2 GB limit (estimated from its tensors: serialising it would fail)."""
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    return weights + (64 << 20) >= PROTO_LIMIT


def check(path: Path) -> None:
    """``onnx.checker`` (by path: works with external data) and strict shape inference."""
    onnx.checker.check_model(str(path), full_check=False)
    onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".shapes", strict_mode=True, data_prop=True)
    Path(str(path) + ".shapes").unlink()

