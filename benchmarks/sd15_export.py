"""Export the real-size (``sd15``) graphs with random weights, no checkpoint needed: time, file sizes, peak RSS.

    python -m benchmarks.sd15_export --out /tmp/sd15-model [--precision fp32|fp16] [--keep]

Writes a complete model folder (every graph passes ``onnx.checker`` and strict shape inference inside the
export; the fused SG+UNet+DDIM step is over 2 GB and goes to external data), prints a Markdown table per
component and, for the fused step, one ONNX Runtime CPU call at batch 1. The folder is deleted unless ``--keep``.
"""
from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks.memory import status_mib
from export.graphs import components
from export.model_folder import write_model_folder
from export.parity import random_inputs, session
from runtime.cli import run_cli
from training.models.diad import DiAD, build_model, random_context
from training.models.presets import ModelConfig, sd15
from training.models.scorer import FeatureScorer


def random_model(config: ModelConfig, device: str = "cpu") -> tuple[DiAD, FeatureScorer]:
    """DiAD of ``config`` with seeded random weights, built on ``device``, and a random-weight scorer (on the CPU;
    no checkpoint needed)."""
    torch.manual_seed(0)
    shape = (config.unet.context_length, config.unet.cross_attention_dim)
    model = build_model(config, device, context=random_context(*shape, seed=0)).eval()
    return model, FeatureScorer.from_config(config.scorer, config.image_size, pretrained=False)


def random_sd15() -> tuple[DiAD, FeatureScorer]:
    """``sd15`` DiAD with seeded random weights and a random-weight scorer (no checkpoint needed)."""
    return random_model(sd15())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sd15_export", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="graph precision (fp32)")
    parser.add_argument("--keep", action="store_true", help="keep the model folder afterwards")
    args = parser.parse_args(argv)

    model, scorer = random_sd15()
    start = time.perf_counter()
    manifest, exported = write_model_folder(model, scorer, args.out, args.precision)
    total = time.perf_counter() - start

    print(f"sd15 export ({args.precision}, random weights): {total:.0f} s in all, peak RSS {status_mib('VmHWM') / 1024:.1f} GiB")
    print("| component | files | size (MiB) | export (s) |\n|:---|:---|---:|---:|")
    for e in exported:
        print(f"| {e.name} | {', '.join(f.name for f in e.files)} | {e.bytes / 2**20:,.0f} | {e.seconds:.0f} |")

    step = next(c for c in components(model, scorer, batch=1) if c.name == "denoise_step")
    feeds = random_inputs(step, seed=0)
    sess = session(str(manifest.path("denoise_step")))
    sess.run(None, feeds)
    start = time.perf_counter()
    out = sess.run(None, feeds)[0]
    print(f"denoise_step on ONNX Runtime CPU, batch 1: {time.perf_counter() - start:.2f} s per step, "
          f"finite: {bool(np.isfinite(out).all())}")
    if not args.keep:
        shutil.rmtree(args.out)
    return 0


if __name__ == "__main__":
    run_cli(main)
