"""Real-size (``sd15``) inference latency at batch 1 with random weights (no checkpoint needed).

    python -m benchmarks.sd15_latency [--device cpu|cuda] [--precision fp32|fp16] [--cuda-graph]
                                      [--model SD15_MODEL_DIR ...] [--steps 10,4,2] [--repeats 1]
                                      [--reference-seconds S] [--no-torch] [--optimized-cache]

Times, on one 256x256 image: the reference inference as released (CFG pair per step, extra decode; fp32 eager;
always its 10 steps), then at each of ``--steps`` our PyTorch pipeline (no CFG, hint once) and, per ``--model``
(folders from ``benchmarks.sd15_export --keep`` or ``export.quantize``), the ONNX Runtime CPU pipeline with the
backend's default session settings. Each pipeline is warmed up once at its fewest steps (the reference at one
step: same kernels and shapes). Prints a Markdown table with per-stage seconds, FLOPs per image and the speedup
over the reference, then each row's seconds per DDIM step, the load average and the peak RSS.
"""
from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.flops import component_flops, pipeline_flops, reference_flops
from benchmarks.memory import status_mib
from benchmarks.reference import REFERENCE_PLAN, ReferenceBackend
from benchmarks.sd15_export import random_sd15
from benchmarks.torch_pipeline import TorchBackend
from runtime.backends.base import BackendOutput
from runtime.cli import run_cli
from runtime.schedule import DDIMPlan, ddim_plan, fixed_noise
from runtime.sequence import STAGES


@dataclass
class Row:
    label: str
    steps: int
    wall: float
    output: BackendOutput
    flops: int


def timed(run: Callable[[], BackendOutput], repeats: int) -> tuple[float, BackendOutput]:
    """Best wall seconds of ``repeats`` runs, with that run's output."""
    best, output = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        if (wall := time.perf_counter() - start) < best:
            best, output = wall, out
    return best, output


def step_counts(text: str) -> list[int]:
    counts = [int(s) for s in text.split(",") if s.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DDIM step counts, e.g. 10,4,2")
    return counts


def rows_at_steps(label: str, run: Callable[[DDIMPlan], BackendOutput], steps: list[int], repeats: int,
                  flops: Callable[[int], int]) -> list[Row]:
    """``run`` warmed up once at the fewest steps, then timed at each of ``steps`` (from t = 999)."""
    run(ddim_plan(min(steps), 999))
    return [Row(label, n, *timed(lambda n=n: run(ddim_plan(n, 999)), repeats), flops(n)) for n in steps]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sd15_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="PyTorch device (default cpu)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="our PyTorch pipeline's")
    parser.add_argument("--cuda-graph", action="store_true", help="replay our DDIM loop as one CUDA graph")
    parser.add_argument("--model", action="append", default=[],
                        help="sd15 model folder: adds its ONNX Runtime (CPU) pipeline; may be repeated")
    parser.add_argument("--steps", type=step_counts, default=[10], help="DDIM step counts, e.g. 10,4,2 (default 10)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row after the warm-up (default 1)")
    parser.add_argument("--reference-seconds", type=float,
                        help="skip the reference run and compare against these seconds per image")
    parser.add_argument("--no-torch", action="store_true", help="skip our PyTorch pipeline")
    parser.add_argument("--optimized-cache", action="store_true",
                        help="ONNX Runtime sessions open (or first write) the cached optimised graphs")
    args = parser.parse_args(argv)

    model, scorer = random_sd15()
    config = model.config
    flops = component_flops(model, scorer)
    image = np.random.default_rng(0).standard_normal((1, 3, config.image_size, config.image_size), np.float32)
    factor = 2 ** (len(config.vae.block_out_channels) - 1)
    noise = fixed_noise((config.vae.latent_channels, config.image_size // factor, config.image_size // factor), 0)
    rows: list[Row] = []

    if args.reference_seconds is None:
        reference = ReferenceBackend(model, scorer, device=args.device)
        reference.run(image, ddim_plan(1, 999))
        rows.append(Row(f"reference as released, torch fp32 {args.device}", 10,
                        *timed(lambda: reference.run(image, REFERENCE_PLAN), args.repeats), reference_flops(flops)))
        ref_wall = rows[0].wall
    else:
        ref_wall = args.reference_seconds

    for folder in args.model:
        from runtime.backends.onnxruntime import OnnxRuntimeBackend, SessionSettings
        from runtime.manifest import Manifest

        manifest = Manifest.load(folder, verify=False)
        start = time.perf_counter()
        backend = OnnxRuntimeBackend(manifest, "cpu", settings=SessionSettings(optimized_cache=args.optimized_cache))
        print(f"{folder}: ONNX Runtime sessions ready in {time.perf_counter() - start:.1f} s")
        rows += rows_at_steps(f"ours, onnxruntime cpu {manifest.precision}",
                              lambda plan: backend.run(image, plan, noise), args.steps, args.repeats,
                              lambda n: pipeline_flops(flops, n))
        backend.close()
        del backend
        gc.collect()

    if not args.no_torch:
        ours = TorchBackend(model, scorer, args.device, args.precision, args.cuda_graph)
        name = f"ours, torch {args.precision} {args.device}" + (" + CUDA graph" if args.cuda_graph else "")
        rows += rows_at_steps(name, lambda plan: ours.run(image, plan, noise), args.steps, args.repeats,
                              lambda n: pipeline_flops(flops, n))

    given = "" if args.reference_seconds is None else f"; reference: {ref_wall:.1f} s/image as given"
    print(f"sd15 (random weights), batch 1, 256x256, DDIM from t=999; torch threads {torch.get_num_threads()}{given}")
    print("| pipeline | steps | s/image | " + " | ".join(STAGES) + " | s/step | TFLOPs/image | speedup |")
    print("|:---|---:|---:|" + "---:|" * (len(STAGES) + 3))
    for r in rows:
        cells = " | ".join(f"{r.output.seconds.get(s, 0.0):.2f}" for s in STAGES)
        per_step = r.output.seconds.get("steps", 0.0) / r.steps
        print(f"| {r.label} | {r.steps} | {r.wall:.2f} | {cells} | {per_step:.2f} | {r.flops / 1e12:.2f} | "
              f"{ref_wall / r.wall:.2f}x |")
    print("\nSeconds per DDIM step, in sampling order:")
    for r in rows:
        print(f"- {r.label}, {r.steps} steps: " + " ".join(f"{s:.2f}" for s in r.output.step_seconds))
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nload average {load}; peak RSS {status_mib('VmHWM') / 1024:.1f} GiB")
    return 0


if __name__ == "__main__":
    run_cli(main)
