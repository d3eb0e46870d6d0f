"""TensorRT against ONNX Runtime, per model-folder component, through Polygraphy.

    python -m export.compare --model models/bottle [--components a,b] [--batch-size 2] [--atol 1e-3] [--rtol 1e-3]

Per component: ``onnx.checker`` and the graph's inputs/outputs against the manifest, one ONNX Runtime run on random
inputs (Polygraphy's ``OnnxrtRunner``) whose outputs must have the manifest's shapes and be finite, then -- where
TensorRT and a GPU are present -- the same inputs through TensorRT (the folder's engine, else one built from the
ONNX graph) with ``|trt - onnxrt| <= atol + rtol * |onnxrt|`` required elementwise. Without TensorRT the ONNX
Runtime checks still run and the report says the TensorRT comparison was skipped and why.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from export.tensorrt import BATCH_AXIS, build_engine, parse_components, profile_shapes
from runtime.backends.tensorrt_env import TensorRTUnavailableError, import_tensorrt, select_device
from runtime.cli import run_cli
from runtime.devices import cuda_ordinal
from runtime.component_io import noise_inputs, schedule_inputs
from runtime.manifest import Manifest


@dataclass
class Report:
    """One component's verdict: shapes seen, problems found, TensorRT's max errors per output (or why skipped)."""

    component: str
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    outputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    tensorrt: dict[str, tuple[float, float]] = field(default_factory=dict)  # output: (max abs, max rel) error

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        shapes = ", ".join(f"{k} {v}" for k, v in self.inputs.items())
        shapes += " -> " + ", ".join(f"{k} {v}" for k, v in self.outputs.items())
        out = [f"{self.component}: {'pass' if self.ok else 'FAIL'}  {shapes}"]
        out += [f"  TensorRT {k}: max abs error {a:.3g}, max rel error {r:.3g}" for k, (a, r) in self.tensorrt.items()]
        return out + [f"  {problem}" for problem in self.problems]


def tensorrt_unavailable(device: int = 0) -> str | None:
    """Why TensorRT cannot run on CUDA device ``device`` (not installed, no such GPU), or None when it can; the
    device is made current for this thread, where TensorRT builds and runs."""
    try:
        import_tensorrt()
        select_device(device)
    except TensorRTUnavailableError as exc:
        return str(exc)
    return None


def random_inputs(manifest: Manifest, component: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 inputs at ``batch``: N(0, 1), except timestep/alphas, which cycle through the steps of
    :meth:`Manifest.step_plan` (the manifest's plan, or a DDIM plan where that is VAE-only), and the noising
    coefficients, the plan's."""
    rng = np.random.default_rng(seed)
    plan = manifest.step_plan()
    steps = np.arange(batch) % len(plan.timesteps)
    schedule = {name: values[steps] for name, values in schedule_inputs(plan).items()} | noise_inputs(plan, batch)
    feed = {}
    for name, dims in manifest.component(component)["inputs"].items():
        shape = (batch, *dims[1:])
        feed[name] = (schedule[name] if name in schedule else rng.standard_normal(shape)).astype(np.float32)
    return feed


def check_graph(manifest: Manifest, component: str) -> list[str]:
    """``onnx.checker`` on the file and its inputs/outputs against the manifest; the problems found."""
    path = manifest.path(component)
    onnx.checker.check_model(str(path))  # by path: works with external data
    graph = onnx.load(str(path), load_external_data=False).graph
    entry, problems = manifest.component(component), []
    for kind, values in (("inputs", graph.input), ("outputs", graph.output)):
        found = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}
        found = {k: [BATCH_AXIS if i == 0 and isinstance(d, str) else d for i, d in enumerate(v)] for k, v in found.items()}
        if found != entry[kind]:
            problems.append(f"graph {kind} {found}, the manifest lists {entry[kind]}")
        types = {v.name: v.type.tensor_type.elem_type for v in values}
        problems += [f"{kind[:-1]} {k} is {onnx.TensorProto.DataType.Name(t)}, not FLOAT" for k, t in types.items()
                     if t != onnx.TensorProto.FLOAT]
    return problems


def tensorrt_runner(manifest: Manifest, component: str, batch: int, device: int):
    """Polygraphy's ``TrtRunner`` on CUDA device ``device``: on the folder's engine for this TensorRT and GPU, or
    on one built from the ONNX graph if the folder has none for them."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    trt = import_tensorrt()
    entry = manifest.engine(component, trt.__version__, select_device(device))
    if entry is None:
        shapes = profile_shapes(manifest, component, batch, max(batch, manifest.max_batch))
        engine = build_engine(manifest.path(component), shapes)
    else:
        engine = manifest.check_file(entry).read_bytes()
    return TrtRunner(EngineFromBytes(engine), name=f"tensorrt-{component}")


def compare_component(
    manifest: Manifest, component: str, batch: int, atol: float, rtol: float, use_tensorrt: bool, device: int = 0
) -> Report:
    """Check one component: graph, ONNX Runtime run, and (``use_tensorrt``) TensorRT against ONNX Runtime."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator

    report = Report(component)
    try:
        report.problems += check_graph(manifest, component)
        feed = random_inputs(manifest, component, batch)
        report.inputs = {k: v.shape for k, v in feed.items()}
        runners = [OnnxrtRunner(SessionFromOnnx(str(manifest.path(component))), name=f"onnxrt-{component}")]
        if use_tensorrt:
            runners.append(tensorrt_runner(manifest, component, batch, device))
        results = Comparator.run(runners, data_loader=[feed])
    except Exception as exc:  # noqa: BLE001 (a checker, runtime or builder refused the graph: reported, go on)
        report.problems.append(f"{type(exc).__name__}: {exc}")
        return report

    reference = results[runners[0].name][0]
    report.outputs = {k: v.shape for k, v in reference.items()}
    for name, dims in manifest.component(component)["outputs"].items():
        expected = (batch, *dims[1:])
        if name not in reference or reference[name].shape != expected:
            report.problems.append(f"ONNX Runtime output {name}: {report.outputs.get(name)}, expected {expected}")
        elif not np.isfinite(reference[name]).all():
            report.problems.append(f"ONNX Runtime output {name} has NaN/Inf values")
    if use_tensorrt:
        for name, expected in reference.items():
            actual = results[runners[1].name][0][name]
            error = np.abs(actual.astype(np.float64) - expected)
            report.tensorrt[name] = (float(error.max()), float((error / (np.abs(expected) + 1e-12)).max()))
            if not (error <= atol + rtol * np.abs(expected)).all():
                report.problems.append(f"TensorRT output {name} differs beyond atol {atol}, rtol {rtol}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder (manifest.json + ONNX graphs)")
    p.add_argument("--components", type=parse_components,
                   help="comma-separated subset (default: every component the folder holds)")
    p.add_argument("--batch-size", type=int, default=2, help="batch size of the random inputs (default: 2)")
    p.add_argument("--atol", type=float, default=1e-3, help="absolute tolerance (default: 1e-3)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default: 1e-3)")
    p.add_argument("--device", default="cuda:0", help="CUDA device for TensorRT: cuda or cuda:N (default cuda:0)")
    p.add_argument("--verbose", action="store_true", help="show Polygraphy's own log")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    device = cuda_ordinal(args.device)

    from polygraphy.logger import G_LOGGER

    manifest = Manifest.load(args.model)
    skipped = tensorrt_unavailable(device)
    with G_LOGGER.verbosity(G_LOGGER.INFO if args.verbose else G_LOGGER.ERROR):
        reports = [
            compare_component(manifest, c, args.batch_size, args.atol, args.rtol, skipped is None, device)
            for c in args.components or manifest.components
        ]
    for report in reports:
        print("\n".join(report.lines()))
    if skipped is not None:
        print(f"TensorRT comparison skipped: {skipped}")
    failed = [r.component for r in reports if not r.ok]
    print(f"{len(reports) - len(failed)}/{len(reports)} components pass" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
