"""ONNX -> TensorRT: one engine per model-folder component, recorded in ``manifest.json``.

The API used is the one TensorRT 10.3 (JetPack 6) and 11.x share: strongly typed networks (FP16 lives in the ONNX
graph, no precision flags), optimisation profiles, the name-based tensor API. An engine only runs on the TensorRT
version and GPU architecture it was built for, so its file name and manifest entry carry both, and the manifest
keeps one engine per such target (building for another GPU adds engines, rebuilding for the same one replaces
them). ``--device cuda:N`` builds on CUDA device N::

    python -m export.tensorrt --model models/bottle [--components denoise_step] [--opt-batch 1] [--max-batch 8] \
        [--device cuda:0]

TensorRT and cuda-python are imported lazily: this module imports without them; the helpers it shares with
:mod:`runtime.backends.tensorrt` live in :mod:`runtime.backends.tensorrt_env`.
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.backends.tensorrt_env import engine_filename, import_tensorrt, select_device
from runtime.cli import run_cli
from runtime.devices import cuda_ordinal
from runtime.errors import ModelFolderError
from runtime.component_io import BATCH_AXIS, COMPONENT_IO
from runtime.manifest import MANIFEST, Manifest, file_entry

Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def profile_shapes(manifest: Manifest, component: str, opt_batch: int, max_batch: int) -> Shapes:
    """``{input: (min, opt, max)}`` shapes: the manifest's with the batch axis at 1, ``opt_batch``, ``max_batch``
    images; ``denoise_step`` runs one latent per image and noise draw, so its opt and max are times the draws."""
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt batch <= max batch, got opt {opt_batch}, max {max_batch}")
    if component == "denoise_step":
        opt_batch, max_batch = opt_batch * manifest.draws, max_batch * manifest.draws
    shapes = {}
    for name, dims in manifest.component(component)["inputs"].items():
        if dims[:1] != [BATCH_AXIS] or not all(isinstance(d, int) for d in dims[1:]):
            raise ModelFolderError(
                f"{manifest.root / MANIFEST}: {component}.{name} has shape {dims}; expected a dynamic "
                f"batch axis {BATCH_AXIS!r} followed by fixed sizes"
            )
        shapes[name] = tuple((batch, *dims[1:]) for batch in (1, opt_batch, max_batch))
    return shapes


def record_engine(
    manifest: Manifest, component: str, path: Path, trt_version: str, capability: str, shapes: Shapes,
    **details: Any,
) -> dict[str, Any]:
    """Record ``component``'s engine for its target (file, size, hash, versions, profile, ``details``), replacing
    an older one for the same TensorRT version and compute capability, and save the manifest."""
    entry = {
        **file_entry(manifest.root, path.name),
        "tensorrt": trt_version,
        "compute_capability": capability,
        "profile": {name: dict(zip(("min", "opt", "max"), map(list, s))) for name, s in shapes.items()},
        **details,
    }
    manifest.set_engine(component, entry)
    manifest.save()
    return entry


# ------------------------------------------------------------------------------------------------ build
def build_engine(
    onnx_path: Path, shapes: Shapes, optimization_level: int = 3, timing_cache: Path | None = None,
    workspace_gb: float | None = None,
) -> bytes:
    """A serialized engine for ``onnx_path`` built on the current CUDA device (:func:`select_device`): strongly
    typed network, one optimisation profile (``shapes``)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = (parser.get_error(i) for i in range(parser.num_errors))
        lines = [f"node {e.node_name() or e.node()} ({e.node_operator()}): {e.code()}: {e.desc()}" for e in errors]
        raise ModelFolderError(f"{onnx_path}: TensorRT's ONNX parser failed:\n  " + "\n  ".join(lines))
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if inputs != set(shapes):
        raise ModelFolderError(f"{onnx_path}: graph inputs {sorted(inputs)}, the manifest lists {sorted(shapes)}")

    config = builder.create_builder_config()
    config.builder_optimization_level = optimization_level
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            print(f"warning: {timing_cache} does not match this TensorRT/GPU; starting a fresh timing cache")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelFolderError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    if timing_cache is not None:
        _write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def build_component(
    manifest: Manifest, component: str, opt_batch: int, max_batch: int, device: int = 0, **options: Any
) -> dict[str, Any]:
    """Build ``component``'s engine on CUDA device ``device`` into the model folder and record it; returns the
    manifest entry."""
    trt = import_tensorrt()
    capability = select_device(device)
    shapes = profile_shapes(manifest, component, opt_batch, max_batch)
    path = manifest.root / engine_filename(component, trt.__version__, capability)
    _write_atomic(path, build_engine(manifest.path(component), shapes, **options))
    level = options.get("optimization_level", 3)
    return record_engine(manifest, component, path, trt.__version__, capability, shapes, optimization_level=level)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------------------- CLI
def parse_components(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(COMPONENT_IO))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown components {unknown}; choose from {','.join(COMPONENT_IO)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder (manifest.json + ONNX graphs)")
    p.add_argument("--components", type=parse_components,
                   help="comma-separated subset (default: every component the folder holds)")
    p.add_argument("--opt-batch", type=int, default=1, help="batch size TensorRT tunes for (default: 1)")
    p.add_argument("--max-batch", type=int, default=None, help="largest batch (default: the manifest's max_batch)")
    p.add_argument("--optimization-level", type=int, choices=range(6), default=3, help="builder level (default: 3)")
    p.add_argument("--timing-cache", type=Path, default=None, help="timing cache file, loaded and updated")
    p.add_argument("--workspace-gb", type=float, default=None, help="builder workspace limit in GiB")
    p.add_argument("--device", default="cuda:0", help="CUDA device to build on: cuda or cuda:N (default cuda:0)")
    args = p.parse_args(argv)

    device = cuda_ordinal(args.device)
    trt = import_tensorrt()
    capability = select_device(device)
    manifest = Manifest.load(args.model)
    max_batch = manifest.max_batch if args.max_batch is None else args.max_batch
    if not 1 <= args.opt_batch <= max_batch:
        p.error(f"need 1 <= --opt-batch <= max batch, got {args.opt_batch} and {max_batch}")
    print(f"TensorRT {trt.__version__}, CUDA device {device} (compute capability {capability}), "
          f"batch 1/{args.opt_batch}/{max_batch}")
    for component in args.components or manifest.components:
        start = time.perf_counter()
        entry = build_component(
            manifest, component, args.opt_batch, max_batch, device, optimization_level=args.optimization_level,
            timing_cache=args.timing_cache, workspace_gb=args.workspace_gb,
        )
        print(f"{component}: {entry['file']} ({entry['bytes'] / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s)")
    print(f"recorded in {manifest.root / MANIFEST}")
    return 0


if __name__ == "__main__":
    run_cli(main)
