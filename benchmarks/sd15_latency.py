"""Real-size (``sd15``) inference latency at batch 1 with random weights (no checkpoint needed).

    python -m benchmarks.sd15_latency [--device cpu|cuda] [--precision fp32|fp16] [--cuda-graph]
                                      [--model SD15_MODEL_DIR] [--repeats 1]

Times, on one 256x256 image: the reference inference as released (CFG pair per step, extra decode; fp32 eager),
our PyTorch pipeline (no CFG, hint once, 10 DDIM steps), and with ``--model`` (a folder from
``benchmarks.sd15_export --keep``) the ONNX Runtime pipeline. Prints a Markdown table with per-stage seconds,
FLOPs per image and the speedup over the reference.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from benchmarks.flops import component_flops, pipeline_flops, reference_flops
from benchmarks.reference import REFERENCE_PLAN, ReferenceBackend
from benchmarks.sd15_export import random_sd15
from benchmarks.torch_pipeline import TorchBackend
from runtime.backends.base import STAGES, BackendOutput
from runtime.cli import run_cli
from runtime.schedule import fixed_noise


def timed(run: Callable[[], BackendOutput], repeats: int) -> tuple[float, dict[str, float]]:
    """Best wall seconds of ``repeats`` runs after one warm-up, with that run's stages."""
    run()
    best, stages = float("inf"), {}
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        if (wall := time.perf_counter() - start) < best:
            best, stages = wall, out.seconds
    return best, stages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sd15_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="PyTorch device (default cpu)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="our PyTorch pipeline's")
    parser.add_argument("--cuda-graph", action="store_true", help="replay our DDIM loop as one CUDA graph")
    parser.add_argument("--model", help="sd15 model folder: adds the ONNX Runtime (CPU) pipeline")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up (default 1)")
    args = parser.parse_args(argv)

    model, scorer = random_sd15()
    config = model.config
    flops = component_flops(model, scorer)
    image = np.random.default_rng(0).standard_normal((1, 3, config.image_size, config.image_size), np.float32)
    plan = REFERENCE_PLAN
    noise = fixed_noise((4, 32, 32), 0)

    rows = []
    reference = ReferenceBackend(model, scorer, device=args.device)
    rows.append((f"reference as released, torch fp32 {args.device}", *timed(lambda: reference.run(image, plan), args.repeats),
                 reference_flops(flops)))
    if args.model:
        from runtime.backends.onnxruntime import OnnxRuntimeBackend
        from runtime.manifest import Manifest

        ort_backend = OnnxRuntimeBackend(Manifest.load(args.model, verify=False), "cpu")
        rows.append(("ours, onnxruntime cpu", *timed(lambda: ort_backend.run(image, plan, noise), args.repeats),
                     pipeline_flops(flops, 10)))
        ort_backend.close()
    ours = TorchBackend(model, scorer, args.device, args.precision, args.cuda_graph)
    name = f"ours, torch {args.precision} {args.device}" + (" + CUDA graph" if args.cuda_graph else "")
    rows.append((name, *timed(lambda: ours.run(image, plan, noise), args.repeats), pipeline_flops(flops, 10)))

    ref_wall = rows[0][1]
    print(f"sd15 (random weights), batch 1, 256x256, 10 DDIM steps from t=999; torch threads {torch.get_num_threads()}")
    print("| pipeline | s/image | " + " | ".join(STAGES) + " | TFLOPs/image | speedup |")
    print("|:---|---:|" + "---:|" * (len(STAGES) + 2))
    for label, wall, stages, total in rows:
        cells = " | ".join(f"{stages.get(s, 0.0):.2f}" for s in STAGES)
        print(f"| {label} | {wall:.2f} | {cells} | {total / 1e12:.2f} | {ref_wall / wall:.2f}x |")
    return 0


if __name__ == "__main__":
    run_cli(main)
