"""ONNX Runtime CPU session settings, one at a time, on a model folder's fused ``denoise_step`` (torch-free).

    python -m benchmarks.ort_settings --model SD15_DIR [--model SD15_INT8_DIR] [--variants default,threads1,...]
                                      [--steps 3]

Each (folder, variant) runs in a fresh process: open the session (timed), one warm-up call, ``--steps`` timed
calls at batch 1 on seeded random inputs; prints a Markdown table of session seconds, per-step median and best,
the change against the folder's ``default`` row and the process's peak RSS, and the load average. Variants
(:data:`VARIANTS`) each change one :class:`runtime.backends.onnxruntime.SessionSettings` field from its default;
``cache-write`` / ``cache-read`` are the optimised-graph cache's first and later starts (the cache is removed
first).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

from benchmarks.memory import status_mib
from runtime.backends.onnxruntime import OPTIMIZED_CACHE, PROVIDERS, SessionSettings, import_ort, open_session
from runtime.cli import run_cli
from runtime.component_io import COMPONENT_IO, schedule_inputs
from runtime.manifest import Manifest

VARIANTS = {
    "default": {},
    "threads1": {"threads": 1},
    "spinning": {"spinning": True},
    "no-arena": {"memory_arena": False},
    "no-mem-pattern": {"memory_pattern": False},
    "layout": {"optimization": "layout"},
    "extended": {"optimization": "extended"},
    "basic": {"optimization": "basic"},
    "disable": {"optimization": "disable"},
    "cache-write": {"optimized_cache": True},
    "cache-read": {"optimized_cache": True},
}


def step_feeds(manifest: Manifest) -> dict[str, np.ndarray]:
    """Batch-1 inputs of ``denoise_step``: N(0, 1) latent and hint, the first step of :meth:`Manifest.step_plan`
    (the manifest's plan, or a DDIM plan where that is VAE-only)."""
    rng = np.random.default_rng(0)
    feeds = {"x_t": rng.standard_normal((1, *manifest.latent_shape), np.float32),
             "hint": rng.standard_normal((1, *manifest.hint_shape), np.float32)}
    schedule = schedule_inputs(manifest.step_plan())
    feeds.update({name: values[:1].astype(np.float32) for name, values in schedule.items()})
    assert set(feeds) == set(COMPONENT_IO["denoise_step"].inputs)
    return feeds


def measure(folder: str, variant: str, steps: int) -> dict:
    """One (folder, variant) in this process: session seconds, per-step seconds, peak RSS."""
    ort = import_ort()
    manifest = Manifest.load(folder, verify=False)
    settings = SessionSettings(**VARIANTS[variant])
    start = time.perf_counter()
    session = open_session(ort, manifest, "denoise_step", settings, PROVIDERS["cpu"])
    opened = time.perf_counter() - start
    feeds = step_feeds(manifest)
    session.run(None, feeds)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return {"session_s": opened, "steps_s": times, "peak_gib": status_mib("VmHWM") / 1024}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ort_settings", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="model folder; may be repeated")
    parser.add_argument("--variants", default="default,threads1,spinning,no-arena,no-mem-pattern,extended",
                        help=f"comma-separated, of {','.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=3, help="timed calls per variant after one warm-up (3)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: measure this variant, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.model[0], args.one, args.steps)))
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")

    print("| model | precision | variant | session s | s/step median | s/step best | vs default | peak RSS GiB |")
    print("|:---|:---|:---|---:|---:|---:|---:|---:|")
    for folder in args.model:
        manifest = Manifest.load(folder, verify=False)
        if "cache-write" in variants:
            shutil.rmtree(manifest.root / OPTIMIZED_CACHE, ignore_errors=True)
        base = None
        for variant in variants:
            child = subprocess.run([sys.executable, "-m", "benchmarks.ort_settings", "--model", folder, "--one",
                                    variant, "--steps", str(args.steps)], capture_output=True, text=True)
            if child.returncode != 0:
                print(f"| {folder} | {manifest.precision} | {variant} | failed: {child.stderr.strip()[-300:]} |")
                continue
            result = json.loads(child.stdout.strip().splitlines()[-1])
            median = statistics.median(result["steps_s"])
            base = median if variant == "default" else base
            change = f"{(median / base - 1) * 100:+.1f}%" if base else "-"
            print(f"| {folder} | {manifest.precision} | {variant} | {result['session_s']:.1f} | {median:.3f} | "
                  f"{min(result['steps_s']):.3f} | {change} | {result['peak_gib']:.1f} |", flush=True)
    print(f"\nload average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    run_cli(main)
