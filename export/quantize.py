"""``python -m export.quantize --model FP32_DIR --out INT8_DIR``: an FP32 model folder -> an INT8 one.

ONNX Runtime's dynamic quantisation (``onnxruntime.quantization.quantize_dynamic``): the weights of the chosen op
types are stored as int8 (per output channel unless ``--per-tensor``; 7 bits unless ``--full-range``: AVX2 CPUs
without VNNI sum pairs of uint8 x int8 products in 16 bits, which saturates with 8-bit weights; see
docs/performance.md), activations are quantised to uint8 at run time; only MatMuls whose second input is a weight
are touched (attention's activation products stay FP32).
By default only ``denoise_step``'s MatMul and Gemm weights, the part that dominates the time; ``--op-types`` adds
Conv (ConvInteger, often slower than ONNX Runtime's FP32 Conv on the CPU) and ``--components`` others.

The new folder holds the quantised graphs and copies of the others; its manifest says ``"precision": "int8"`` and
records what was quantised and the parity measured. Parity: both folders run the whole pipeline on ONNX Runtime
(CPU) on seeded random images with the manifest's plan and, where that is VAE-only (it never calls ``denoise_step``),
also with :meth:`runtime.manifest.Manifest.step_plan`'s DDIM plan; the largest score difference over both relative to
the largest FP32 score must stay within :data:`SCORE_TOLERANCE` (else :class:`ParityError`, the folder is removed).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export.model_folder import check_out, library_versions
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.cli import run_cli
from runtime.errors import DiadError, ModelFolderError
from runtime.component_io import COMPONENTS
from runtime.manifest import Manifest, component_entry, creation_time

SCORE_TOLERANCE = 1e-2  # max |score int8 - score fp32| / max |score fp32|
OP_TYPES = ("MatMul", "Gemm", "Conv")
DEFAULT_OP_TYPES = ("MatMul", "Gemm")
DEFAULT_COMPONENTS = ("denoise_step",)


class ParityError(DiadError):
    """The quantised pipeline's scores moved further from the FP32 pipeline's than :data:`SCORE_TOLERANCE`."""


@dataclass
class ScoreParity:
    score_abs: float  # max |score int8 - score fp32|
    score_max: float  # max |score fp32|
    map_abs: float  # max |map int8 - map fp32|
    map_max: float

    @property
    def score_relative(self) -> float:
        return self.score_abs / max(self.score_max, 1e-12)

    @property
    def map_relative(self) -> float:
        return self.map_abs / max(self.map_max, 1e-12)

    def to_dict(self) -> dict[str, float]:
        return {"score_relative": self.score_relative, "map_relative": self.map_relative,
                "score_abs": self.score_abs, "map_abs": self.map_abs}


def quantize_graph(
    source: Path, out: Path, op_types: Sequence[str], per_channel: bool, reduce_range: bool
) -> list[Path]:
    """Quantise the graph ``source`` into ``out`` (external data ``<name>.data`` when the source has it); returns
    the files written. Convs whose weight is computed in the graph (not a stored tensor) stay FP32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    external = source.with_name(source.name + ".data").is_file()
    graph = onnx.load(str(source), load_external_data=False).graph
    weights = {tensor.name for tensor in graph.initializer}
    computed = [node.name for node in graph.node if node.op_type == "Conv" and node.input[1] not in weights]
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's advice to pre-process goes to the root logger
    quantize_dynamic(source, out, op_types_to_quantize=list(op_types), per_channel=per_channel,
                     reduce_range=reduce_range, weight_type=QuantType.QInt8, use_external_data_format=external,
                     nodes_to_exclude=computed)
    data = out.with_name(out.name + ".data")
    return [out, data] if data.is_file() else [out]


def score_parity(reference: Manifest, quantized: Manifest, images: int = 2, seed: int = 0) -> ScoreParity:
    """Both folders' whole pipelines (ONNX Runtime CPU) on the same seeded random images, with the manifest's plan
    and, where that is VAE-only, also with :meth:`Manifest.step_plan` (so that ``denoise_step`` runs)."""
    size = reference.image_size
    batch = np.random.default_rng(seed).standard_normal((images, 3, size, size), np.float32)
    noise = reference.noise()
    plans = [reference.plan()]
    if plans[0].vae_only:
        plans.append(reference.step_plan())
    scores, maps = [], []
    for manifest in (reference, quantized):
        backend = OnnxRuntimeBackend(manifest, "cpu")
        results = [backend.run(batch, plan, noise) for plan in plans]
        backend.close()
        scores.append(np.concatenate([r.score for r in results]))
        maps.append(np.concatenate([r.anomaly_map for r in results]))
    return ScoreParity(float(np.abs(scores[1] - scores[0]).max()), float(np.abs(scores[0]).max()),
                       float(np.abs(maps[1] - maps[0]).max()), float(np.abs(maps[0]).max()))


def quantize_folder(
    model: str | Path, out: str | Path, components: Sequence[str] = DEFAULT_COMPONENTS,
    op_types: Sequence[str] = DEFAULT_OP_TYPES, per_channel: bool = True, reduce_range: bool = True,
    parity_images: int = 2,
) -> tuple[Manifest, ScoreParity, dict[str, float]]:
    """Write the INT8 model folder of the FP32 folder ``model`` into ``out`` (aside, renamed at the end) and check
    its score parity; returns its manifest, the parity and the seconds each quantised graph took."""
    source = Manifest.load(model)
    if source.precision != "fp32":
        raise ModelFolderError(f"{source.root}: precision {source.precision}; quantise an FP32 model folder")
    unknown = [c for c in components if c not in COMPONENTS] + [o for o in op_types if o not in OP_TYPES]
    if unknown or not components or not op_types:
        raise ValueError(f"components {list(components)} / op types {list(op_types)}: expected some of "
                         f"{list(COMPONENTS)} / {list(OP_TYPES)}")
    out = check_out(out)
    if out.resolve() == source.root.resolve():
        raise ModelFolderError(f"{out}: the FP32 folder itself; write the INT8 folder elsewhere")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    data = {key: value for key, value in source.data.items() if key not in ("thresholds", "engines")}
    seconds = {}
    for name in source.components:
        entry = source.component(name)
        graph = partial / entry["file"]
        if name in components:
            start = time.perf_counter()
            files = quantize_graph(source.path(name), graph, op_types, per_channel, reduce_range)
            seconds[name] = time.perf_counter() - start
        else:
            files = [graph] + [partial / extra["file"] for extra in entry.get("external_data", [])]
            for file in files:
                shutil.copyfile(source.root / file.name, file)
        tensors = {"inputs": entry["inputs"], "outputs": entry["outputs"]}
        data["components"][name] = component_entry(partial, [f.name for f in files], tensors)
    data.update(precision="int8", created=creation_time(),
                source=str(source.root.resolve()), engines={}, thresholds={}, versions=library_versions())
    data["quantization"] = {"method": "onnxruntime.quantization.quantize_dynamic", "components": list(components),
                            "op_types": list(op_types), "weights": "int8", "activations": "uint8, dynamic",
                            "per_channel": per_channel, "reduce_range": reduce_range}
    manifest = Manifest(partial, data)
    manifest.save()
    parity = score_parity(source, Manifest.load(partial), parity_images)
    if not parity.score_relative <= SCORE_TOLERANCE:
        shutil.rmtree(partial)
        raise ParityError(f"INT8 scores differ from FP32 by {parity.score_abs:.3g} against max |score| "
                          f"{parity.score_max:.3g} (relative {parity.score_relative:.2g} > {SCORE_TOLERANCE:g}); "
                          "quantise fewer op types or components")
    manifest.data["quantization"]["parity"] = {**parity.to_dict(), "images": parity_images}
    manifest.save()
    if check_out(out).exists():
        shutil.rmtree(out)
    partial.rename(out)
    return Manifest.load(out), parity, seconds


def names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.quantize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="FP32 model folder (python -m export)")
    parser.add_argument("--out", required=True, help="INT8 model folder to write (new, empty or a model folder)")
    parser.add_argument("--components", type=names, default=list(DEFAULT_COMPONENTS),
                        help=f"components to quantise, comma-separated (default {','.join(DEFAULT_COMPONENTS)})")
    parser.add_argument("--op-types", type=names, default=list(DEFAULT_OP_TYPES),
                        help=f"op types whose weights become int8, of {','.join(OP_TYPES)} "
                        f"(default {','.join(DEFAULT_OP_TYPES)})")
    parser.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor, not per channel")
    parser.add_argument("--full-range", action="store_true", help="8-bit weights; the default 7 bits keep CPUs "
                        "without VNNI (AVX2) from saturating their 16-bit sums of uint8 x int8 products")
    parser.add_argument("--parity-images", type=int, default=2, help="random images for the parity check (2)")
    args = parser.parse_args(argv)
    try:
        manifest, parity, seconds = quantize_folder(args.model, args.out, args.components, args.op_types,
                                                    not args.per_tensor, not args.full_range, args.parity_images)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"INT8 model folder {manifest.root}: {', '.join(args.op_types)} weights of {', '.join(args.components)}")
    print("| component | MiB | quantise s |\n|:---|---:|---:|")
    for name in manifest.components:
        entry = manifest.component(name)
        size = entry["bytes"] + sum(e["bytes"] for e in entry["external_data"])
        print(f"| {name} | {size / 2**20:.1f} | {seconds.get(name, 0.0):.1f} |")
    print(f"parity with FP32 on {args.parity_images} images: score {parity.score_relative:.2g} relative "
          f"({parity.score_abs:.3g} of {parity.score_max:.3g}), map {parity.map_relative:.2g} relative; "
          f"tolerance {SCORE_TOLERANCE:g} on the score")
    return 0


if __name__ == "__main__":
    run_cli(main)
