"""Time and peak memory of one DiAD training step on the CPU, per trainable set.

    python -m benchmarks.sd15_train_step [--trainable sg,sg+decoder] [--precision fp32|bf16] [--preset sd15|tiny]

Each trainable set runs in a fresh child process, so each peak RSS is that case's alone: build DiAD with random
weights (no checkpoint needed), then one step at batch 1 on one image of the preset's size (256x256) with AdamW,
lr 1e-5, weight decay 0.01 (the reference's settings): forward (the epsilon-MSE loss), backward and optimiser step
are timed separately. The optimiser's first step allocates its state, as in a real run's first step. Prints a
Markdown table; a child killed by the kernel (out of memory) gets an "out of memory at N GiB" row, from the peak
RSS the kernel reports for it (``os.wait4``). ``--preset tiny`` is a quick smoke check of the script.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Any

import torch

from benchmarks.memory import status_mib
from runtime.cli import run_cli
from training.models.diad import build_model, random_context
from training.models.presets import PRESETS, TRAINABLE_SETS, ModelConfig, get_preset

LR, WEIGHT_DECAY = 1e-5, 0.01
HEADER = (
    "| trainable set | trainable parameters (M) | step (s) | forward (s) | backward (s) | optimizer (s) "
    "| peak RSS (GiB) |\n|---|---:|---:|---:|---:|---:|---:|"
)


def trainable_parameters(config: ModelConfig, trainable: str) -> int:
    """Parameters of a trainable set, counted on the meta device (nothing allocated)."""
    context = torch.empty(config.unet.context_length, config.unet.cross_attention_dim, device="meta")
    model = build_model(config, device="meta", context=context)
    model.set_trainable(trainable)
    return sum(p.numel() for p in model.trainable_parameters())


def one_step(preset: str, trainable: str, precision: str) -> dict[str, float]:
    """Build the model and run one training step; seconds per phase and this process's peak RSS in GiB."""
    config = get_preset(preset)
    config.trainable = trainable
    torch.manual_seed(0)
    shape = (config.unet.context_length, config.unet.cross_attention_dim)
    model = build_model(config, context=random_context(*shape, seed=config.context_seed)).train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, config.image_size, config.image_size, generator=generator)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    start = time.perf_counter()
    with autocast:
        loss = model.training_loss(image, generator)
    forward = time.perf_counter()
    loss.backward()
    backward = time.perf_counter()
    optimizer.step()
    end = time.perf_counter()
    return {
        "forward_s": forward - start,
        "backward_s": backward - forward,
        "optimizer_s": end - backward,
        "peak_rss_gib": status_mib("VmHWM") / 1024,
    }


def run_case(preset: str, trainable: str, precision: str) -> dict[str, Any]:
    """:func:`one_step` in a child process; ``{"oom": True, "peak_rss_gib": ...}`` when it ran out of memory."""
    command = [sys.executable, "-m", "benchmarks.sd15_train_step", "--child", trainable]
    command += ["--preset", preset, "--precision", precision]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    child.stdout.close()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    peak_gib = usage.ru_maxrss / 2**20
    lines = out.strip().splitlines()
    result = json.loads(lines[-1]) if child.returncode == 0 and lines else None
    if child.returncode == -signal.SIGKILL or (result is not None and result.get("oom")):
        return {"oom": True, "peak_rss_gib": peak_gib}
    if result is None:
        raise SystemExit(f"the {trainable} case failed (exit status {child.returncode}); see its error above")
    return result


def row(trainable: str, parameters: int, result: dict[str, Any]) -> str:
    if result.get("oom"):
        return f"| {trainable} | {parameters / 1e6:.2f} | out of memory at {result['peak_rss_gib']:.1f} GiB | | | | |"
    step = result["forward_s"] + result["backward_s"] + result["optimizer_s"]
    times = " | ".join(f"{result[k]:.2f}" for k in ("forward_s", "backward_s", "optimizer_s"))
    return f"| {trainable} | {parameters / 1e6:.2f} | {step:.2f} | {times} | {result['peak_rss_gib']:.1f} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainable", default=",".join(TRAINABLE_SETS), help="comma-separated trainable sets")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast precision")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="sd15", help="model preset (tiny: smoke check)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args(argv)
    if args.child is not None:
        try:
            print(json.dumps(one_step(args.preset, args.child, args.precision)))
        except (MemoryError, RuntimeError) as exc:  # torch's CPU allocator raises RuntimeError
            if not isinstance(exc, MemoryError) and "can't allocate memory" not in str(exc):
                raise
            print(json.dumps({"oom": True}))
        return
    cases = args.trainable.split(",")
    unknown = sorted(set(cases) - set(TRAINABLE_SETS))
    if unknown:
        parser.error(f"--trainable {','.join(unknown)}: expected some of {','.join(TRAINABLE_SETS)}")
    config = get_preset(args.preset)
    print(
        f"One training step, preset {args.preset}, {args.precision}, batch 1, {config.image_size}x{config.image_size}, "
        f"AdamW lr {LR:g} weight decay {WEIGHT_DECAY:g}, {torch.get_num_threads()} torch threads\n"
    )
    print(HEADER, flush=True)
    for trainable in cases:
        result = run_case(args.preset, trainable, args.precision)
        print(row(trainable, trainable_parameters(config, trainable), result), flush=True)


if __name__ == "__main__":
    run_cli(main)
