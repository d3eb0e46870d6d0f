"""FP32 ONNX -> strongly typed FP16 ONNX that TensorRT 10.3-11.x builds without precision flags.

The heavy networks (VAE, SG network + UNet, the scorer's backbone) become FP16. Kept in FP32, with casts around
them: normalisation (GroupNorm is exported as InstanceNormalization, LayerNorm as LayerNormalization) and softmax,
whose accumulations overflow or lose precision in FP16, by op type (:data:`FP32_OPS`); and the regions the export
marks (:func:`export.graphs.fp32_scopes`: the DDIM update, the scorer's input map, cosine distances and
upsample/blur/pool matrices, the sinusoidal timestep projections), by the scope the exporter gives their nodes
(``/<scope>/.../<Op>``). A marked region with no node in the graph is an error, so an exporter that names nodes
otherwise cannot silently turn them FP16. Values passed between FP32 nodes stay FP32
(:func:`remove_fp16_round_trips`). Graph inputs and outputs stay FP32.
"""
from __future__ import annotations

import heapq
from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

FP32_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization", "Softmax")


def fp32_nodes(model: onnx.ModelProto, scopes: Collection[str]) -> list[str]:
    """Names of the nodes inside the marked regions ``scopes`` (a scope among a node name's ``/``-separated
    parts); ValueError naming the regions that no node belongs to."""
    nodes, found = [], set()
    for node in model.graph.node:
        inside = set(scopes).intersection(node.name.split("/")[1:-1])
        if inside:
            nodes.append(node.name)
            found |= inside
    missing = sorted(set(scopes) - found)
    if missing:
        raise ValueError(
            f"no node in the FP32 region(s) {missing}: the exporter no longer names nodes after their module "
            "(/<module>/<Op>), so they cannot be kept FP32"
        )
    return nodes


def to_fp16(path: Path, scopes: Collection[str]) -> onnx.ModelProto:
    """The FP16 graph of the FP32 ONNX file ``path`` (FP32 I/O) with the regions ``scopes``
    (:func:`export.graphs.fp32_scopes`) and the :data:`FP32_OPS` kept FP32 (see the module docstring).

    Types come from ONNX shape inference run on the file (works past 2 GB, unlike in memory); the converter
    needs them to keep inputs that must stay float (e.g. Resize scales) in FP32.
    """
    typed = path.with_name(path.name + ".typed")
    onnx.shape_inference.infer_shapes_path(str(path), str(typed), data_prop=True)
    try:
        model = onnx.load(str(typed))  # external data resolves beside it
    finally:
        typed.unlink()
    try:
        keep = fp32_nodes(model, scopes)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS),
        node_block_list=keep,
        disable_shape_infer=True,
    )
    remove_fp16_round_trips(converted.graph)
    topological_sort(converted.graph)
    return converted


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def remove_fp16_round_trips(graph: onnx.GraphProto) -> int:
    """Let FP32 regions talk to each other in FP32; returns how many round trips were removed.

    The converter casts every output of a kept-FP32 node to FP16 and casts it back before the next kept-FP32
    node, so values between two FP32 nodes still pass through FP16 (the scorer's ``|a|^2 |b|^2`` overflowed to
    inf). Each ``Cast(to=FP32)`` of a ``Cast(to=FP16)`` of an FP32 value becomes an ``Identity`` of that value;
    casts left without consumers are dropped.
    """
    producer = {out: node for node in graph.node for out in node.output}
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    removed = 0
    for node in graph.node:
        source = producer.get(node.input[0]) if _cast_to(node) == fp32 else None
        if source is not None and _cast_to(source) == fp16 and types.get(source.input[0]) == fp32:
            node.op_type, node.input[0] = "Identity", source.input[0]
            del node.attribute[:]
            removed += 1
    outputs = {o.name for o in graph.output}
    while True:  # a dropped cast may leave the cast before it unused
        used = outputs | {name for node in graph.node for name in node.input}
        kept = [n for n in graph.node if n.op_type != "Cast" or used.intersection(n.output)]
        if len(kept) == len(graph.node):
            return removed
        del graph.node[:]
        graph.node.extend(kept)


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` in place so every node follows its producers (the converter appends the casts it
    inserts at the end; the ONNX checker and TensorRT's parser need the order). Kahn's algorithm, stable."""
    nodes = list(graph.node)
    producer = {out: k for k, node in enumerate(nodes) for out in node.output if out}
    consumers: dict[int, list[int]] = {k: [] for k in range(len(nodes))}
    waiting = [0] * len(nodes)
    for k, node in enumerate(nodes):
        for name in {i for i in node.input if i in producer}:
            consumers[producer[name]].append(k)
            waiting[k] += 1
    ready = [k for k in range(len(nodes)) if waiting[k] == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        k = heapq.heappop(ready)
        ordered.append(nodes[k])
        for c in consumers[k]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    if len(ordered) != len(nodes):
        raise ValueError(f"graph has a cycle: {len(nodes) - len(ordered)} nodes cannot be ordered")
    del graph.node[:]
    graph.node.extend(ordered)


def precision_census(model: onnx.ModelProto) -> dict[str, int]:
    """How many initializer elements are FP16 and FP32 (what the conversion achieved)."""
    count = {"fp16": 0, "fp32": 0}
    for tensor in model.graph.initializer:
        size = int(np.prod(tensor.dims, dtype=np.int64))
        if tensor.data_type == onnx.TensorProto.FLOAT16:
            count["fp16"] += size
        elif tensor.data_type == onnx.TensorProto.FLOAT:
            count["fp32"] += size
    return count


def ort_cpu_fallbacks(path: str) -> dict[str, int]:
    """Node types that ONNX Runtime's CPU provider feeds through its own inserted FP32 casts in an FP16 graph
    (``InsertedPrecisionFreeCast_*``: no FP16 kernel there, so it computes them in FP32), with counts."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.optimized_model_filepath = f"{tmp}/cpu.onnx"
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        graph = onnx.load(f"{tmp}/cpu.onnx", load_external_data=False).graph
    casts = {o for n in graph.node if n.name.startswith("InsertedPrecisionFreeCast") for o in n.output}
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "Cast" and casts.intersection(node.input):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
