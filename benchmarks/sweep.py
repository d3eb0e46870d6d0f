"""Latency against detection: every configuration of backend, precision, start timestep, DDIM steps and batch.

    python -m benchmarks.sweep --model MODEL_DIR --data PATH [--run RUN_DIR] [--out DIR]
        [--backends torch,onnxruntime,tensorrt] [--precisions fp32,fp16] [--start-t 999,701,501,301,101]
        [--steps 10,5,3,2,1,0] [--batch-sizes 1,4,8] [--limit N] [--peak-tflops X] [--device cuda:0]

Per (backend, precision, start_t, steps) the test images are scored once at the first batch size: that pass gives
I-AUROC, P-AUROC and AU-PRO (the multi-class mean over classes) and its latencies. The other batch sizes only
time ``--latency-batches`` batches: with the fixed seeded noise the scores do not depend on batching. Steps 0
is the VAE-only plan (encode, decode the clean latent, score; one configuration whatever the start timesteps),
run by each backend's ``run`` like every other plan and listed as method ``vae-only``. With ``--run``, PyTorch
eager and the reference inference as released (:mod:`benchmarks.reference`) run too, and every row shows its
speedup over the reference's p50 latency; FLOPs per image come from the PyTorch modules. Latency per image is a batch's wall time (outputs on
the host) over its size, after ``--warmup`` batches. Peak memory: the process's RSS high-water mark during the
configuration (reset per configuration through /proc/self/clear_refs; it includes memory that earlier
configurations' allocators, e.g. ONNX Runtime's arenas, still hold), and PyTorch's CUDA peak on GPU.

Writes ``sweep.{csv,json,md}`` to ``--out`` as rows complete (FLOPs and speedups are added at the end) and
``pareto.png`` (latency against I-AUROC) at the end. A backend that cannot open (not installed, no engines in the
model folder) or fails part-way is listed as skipped with its full reason; the other rows stand.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.memory import reset_peak, status_mib
from runtime.backends.base import BackendOutput
from runtime.cli import run_cli
from runtime.devices import DEVICE_HELP, PROVIDERS
from runtime.errors import BackendError, DatasetLayoutError, DiadError
from runtime.manifest import Manifest
from runtime.metrics import per_class
from runtime.preprocess import preprocess, preprocess_mask, read_image, read_mask
from runtime.schedule import DDIMPlan, ddim_plan
from runtime.sequence import STAGES
from training.data import load_index
from training.evaluate import limit_per_class

DEFAULTS = {
    "backends": "torch,onnxruntime,tensorrt", "precisions": "fp32,fp16", "start_t": "999,701,501,301,101",
    "steps": "10,5,3,2,1,0", "batch_sizes": "1,4,8",
}
VAE_ONLY = "vae-only"  # the method of the VAE-only plan's rows (steps 0)


@dataclass
class TestSet:
    images: np.ndarray  # (N, 3, S, S) float32, pre-processed
    labels: np.ndarray
    masks: np.ndarray  # (N, S, S) uint8
    classes: np.ndarray

    @classmethod
    def load(cls, data: str, size: int, limit: int | None) -> TestSet:
        samples = limit_per_class(load_index(data).split("test"), limit)
        if not samples:
            raise DatasetLayoutError(f"{data}: no test images")
        masks = [
            preprocess_mask(read_mask(s.mask), size) if s.mask else np.zeros((size, size), np.uint8) for s in samples
        ]
        return cls(
            np.stack([preprocess(read_image(s.image), size) for s in samples]),
            np.array([s.label for s in samples]),
            np.stack(masks),
            np.array([s.class_name for s in samples]),
        )


@dataclass
class Row:
    backend: str
    precision: str
    method: str  # "diad", "vae-only" (steps 0) or "reference"
    start_t: int | None  # None: the VAE-only plan noises nothing
    steps: int
    batch: int
    p50_ms: float
    p95_ms: float
    images_per_s: float
    stages_ms: dict[str, float]
    peak_rss_mib: float
    peak_gpu_mib: float | None = None
    i_auroc: float = math.nan
    p_auroc: float = math.nan
    aupro: float = math.nan
    gflops: float | None = None
    speedup: float | None = None
    peak_fraction: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.method != "diad":
            return f"{self.backend} {self.precision} {self.method}"
        return f"{self.backend} {self.precision} t{self.start_t}/{self.steps}"


# ------------------------------------------------------------------------------------------------ backends
def open_backends(args: argparse.Namespace, precision: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The backends of the grid for ``precision``; those that cannot run here are returned with a reason."""
    opened, skipped = {}, {}
    for name in args.backends:
        try:
            opened[name] = open_backend(name, precision, args)
        except (DiadError, ValueError, ImportError) as exc:
            skipped[name] = str(exc)
    return opened, skipped


def open_backend(name: str, precision: str, args: argparse.Namespace) -> Any:
    if name == "torch":
        if args.run is None:
            raise ValueError("PyTorch rows need --run RUN_DIR")
        from benchmarks.torch_pipeline import TorchBackend

        model, scorer = torch_model(args.run)
        return TorchBackend(model, scorer, args.device, precision, cuda_graph=args.cuda_graph)
    manifest = Manifest.load(args.model_for[precision]) if precision in args.model_for else None
    if manifest is None:
        raise ValueError(f"no {precision} model folder (give --model / --model-fp16, or --run to export one)")
    if name == "onnxruntime":
        from runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(manifest, args.device, args.provider)
    if name == "tensorrt":
        from runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(manifest, args.device)
    raise ValueError(f"backend {name!r}: expected torch, onnxruntime or tensorrt")


def torch_model(run: str):
    """The run's model and scorer (built once per process)."""
    if run not in _TORCH_CACHE:
        from training.models.scorer import seeded_scorer
        from training.run_folder import RunFolder

        model = RunFolder(run).load_model()
        config = model.config
        _TORCH_CACHE[run] = (model, seeded_scorer(config.scorer, config.image_size, config.inference.noise_seed))
    model, scorer = _TORCH_CACHE[run]
    import copy

    return copy.deepcopy(model), copy.deepcopy(scorer)


_TORCH_CACHE: dict[str, tuple] = {}


# ---------------------------------------------------------------------------------------------- measuring
def measure(
    run: Callable[[np.ndarray], BackendOutput], data: TestSet, batch: int, warmup: int, max_batches: int | None
) -> tuple[list[float], dict[str, float], BackendOutput | None]:
    """Per-image latencies of each timed batch, mean stage seconds per image, and (full pass) the outputs."""
    n = len(data.images)
    starts = list(range(0, n, batch))
    for i in range(warmup):
        run(data.images[starts[i % len(starts)] : starts[i % len(starts)] + batch])
    timed = starts if max_batches is None else starts[:max_batches]
    latencies, stages, outputs, count = [], dict.fromkeys(STAGES, 0.0), [], 0
    for s in timed:
        chunk = data.images[s : s + batch]
        start = time.perf_counter()
        out = run(chunk)
        latencies.append((time.perf_counter() - start) / len(chunk))
        for k in STAGES:
            stages[k] += out.seconds.get(k, 0.0)
        count += len(chunk)
        outputs.append(out)
    stages = {k: v / count for k, v in stages.items()}
    if max_batches is not None:
        return latencies, stages, None
    return latencies, stages, BackendOutput.concat(outputs)


def accuracy(out: BackendOutput, data: TestSet) -> dict[str, float]:
    mean = per_class(data.classes, out.score, data.labels, out.anomaly_map, data.masks)[-1]
    return {"i_auroc": mean["i_auroc"], "p_auroc": mean["p_auroc"], "aupro": mean["aupro"]}


def make_row(
    backend: str, precision: str, method: str, plan: DDIMPlan, batch: int, latencies: list[float],
    stages: dict[str, float], scores: dict[str, float], gpu_mib: float | None,
) -> Row:
    lat = np.asarray(latencies) * 1e3
    return Row(
        backend, precision, method, None if plan.vae_only else plan.start_t, plan.steps, batch,
        float(np.percentile(lat, 50)), float(np.percentile(lat, 95)), float(1e3 / lat.mean()),
        {k: v * 1e3 for k, v in stages.items()}, status_mib("VmHWM"), gpu_mib, **scores,
    )


def gpu_peak_mib(backend: Any) -> float | None:
    if getattr(backend, "name", "") != "torch" or backend.device.type != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated(backend.device) / 2**20


def reset_gpu_peak(backend: Any) -> None:
    if getattr(backend, "name", "") == "torch" and backend.device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(backend.device)


def sweep_backend(
    name: str, backend: Any, precision: str, args: argparse.Namespace, data: TestSet, noise: np.ndarray,
    bar: tqdm, keep: Callable[[Row], None],
) -> None:
    """Every plan of ``args.plans`` on one backend, each row handed to ``keep`` as it completes."""
    for plan in args.plans:
        method = VAE_ONLY if plan.vae_only else "diad"

        def run(x: np.ndarray, plan: DDIMPlan = plan) -> BackendOutput:
            return backend.run(x, plan, noise)

        scores: dict[str, float] = {}
        for k, batch in enumerate(args.batch_sizes):
            reset_peak()
            reset_gpu_peak(backend)
            latencies, stages, out = measure(run, data, batch, args.warmup, None if k == 0 else args.latency_batches)
            if out is not None:
                scores = accuracy(out, data)
            keep(make_row(name, precision, method, plan, batch, latencies, stages, scores, gpu_peak_mib(backend)))
            bar.update()


def reference_row(args: argparse.Namespace, data: TestSet) -> Row:
    """The reference inference as released, PyTorch fp32 eager, batch 1 (as ``test.py``), over the test set."""
    from benchmarks.reference import REFERENCE_PLAN, ReferenceBackend

    backend = ReferenceBackend(*torch_model(args.run))
    reset_peak()
    latencies, stages, out = measure(lambda x: backend.run(x, REFERENCE_PLAN), data, 1, args.warmup, None)
    return make_row("torch", "fp32", "reference", REFERENCE_PLAN, 1, latencies, stages, accuracy(out, data), None)


# ------------------------------------------------------------------------------------------------- derived
def add_flops_and_speedups(rows: list[Row], args: argparse.Namespace) -> dict[str, int] | None:
    flops = None
    if args.run is not None:
        from benchmarks.flops import component_flops, pipeline_flops, reference_flops

        flops = component_flops(*torch_model(args.run))
        for row in rows:
            if row.method == "reference":
                total = reference_flops(flops)
            else:
                total = pipeline_flops(flops, row.steps, vae_only=row.method == VAE_ONLY)
            row.gflops = total / 1e9
            if args.peak_tflops:
                row.peak_fraction = total / (row.p50_ms / 1e3) / (args.peak_tflops * 1e12)
    reference = next((r for r in rows if r.method == "reference"), None)
    if reference is not None:
        for row in rows:
            row.speedup = reference.p50_ms / row.p50_ms
    return flops


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown(rows: list[Row], skipped: dict[str, str], header: str) -> str:
    columns = (
        "| backend | precision | method | start t | steps | batch | p50 ms/img | p95 ms/img | img/s | encode | steps "
        "| decode | score | peak RSS MiB | I-AUROC | P-AUROC | AU-PRO | GFLOPs/img | speedup vs reference |"
    )
    lines = [header, "", columns, "|" + "---|" * 19]
    for r in rows:
        stages = " | ".join(fmt(r.stages_ms[s], 1) for s in STAGES)
        lines.append(
            f"| {r.backend} | {r.precision} | {r.method} | {r.start_t or '-'} | {r.steps} | {r.batch} "
            f"| {fmt(r.p50_ms, 1)} | {fmt(r.p95_ms, 1)} | {fmt(r.images_per_s, 2)} | {stages} | {fmt(r.peak_rss_mib, 0)} "
            f"| {fmt(r.i_auroc)} | {fmt(r.p_auroc)} | {fmt(r.aupro)} | {fmt(r.gflops, 1)} "
            f"| {fmt(r.speedup, 2) + 'x' if r.speedup else '-'} |"
        )
    lines += [f"\nskipped: {name} ({reason})" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"


def pareto_front(rows: list[Row]) -> list[Row]:
    """Rows no other row beats on both latency (lower) and I-AUROC (higher)."""
    valid = sorted((r for r in rows if not math.isnan(r.i_auroc)), key=lambda r: (r.p50_ms, -r.i_auroc))
    front, best = [], -math.inf
    for r in valid:
        if r.i_auroc > best:
            front.append(r)
            best = r.i_auroc
    return front


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [r for r in rows if r.batch == rows[0].batch and not math.isnan(r.i_auroc)]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    groups: dict[str, list[Row]] = {}
    for r in first:
        name = f"{r.backend} {r.precision}" if r.method == "diad" else f"{r.method} (any backend)"
        groups.setdefault(name, []).append(r)
    for name, group in groups.items():
        ax.scatter([r.p50_ms for r in group], [r.i_auroc for r in group], label=name, s=28)
    front = pareto_front(first)
    ax.plot([r.p50_ms for r in front], [r.i_auroc for r in front], "k--", lw=1, label="Pareto front")
    for r in front:
        ax.annotate(r.label.split(" ", 2)[-1], (r.p50_ms, r.i_auroc), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency per image (ms, batch {rows[0].batch}, log scale)")
    ax.set_ylabel("I-AUROC (mean over classes)")
    ax.set_title(textwrap.fill(title, 110), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def header(info: dict[str, Any]) -> str:
    return (
        f"Sweep of {info['model']} on {info['images']} test images of {info['data']} ({info['date']}, "
        f"{info['machine']}); latency per image after {info['warmup']} warm-up batches."
    )


def write_tables(out: Path, rows: list[Row], skipped: dict[str, str], info: dict[str, Any]) -> str:
    """``sweep.{md,json,csv}`` of the rows so far; the Markdown text."""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, skipped, header(info))
    (out / "sweep.md").write_text(text)
    (out / "sweep.json").write_text(json.dumps(
        {"info": info, "skipped": skipped, "rows": [asdict(r) for r in rows]}, indent=2, default=str
    ) + "\n")
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.writer(f)
        fields = [k for k in asdict(rows[0]) if k not in ("stages_ms", "extra")]
        writer.writerow(fields + [f"{s}_ms" for s in STAGES])
        for r in rows:
            d = asdict(r)
            writer.writerow([d[k] for k in fields] + [r.stages_ms[s] for s in STAGES])
    return text


def write_results(out: Path, rows: list[Row], skipped: dict[str, str], info: dict[str, Any]) -> str:
    """The tables and ``pareto.png``; the Markdown text."""
    text = write_tables(out, rows, skipped, info)
    plot(rows, out / "pareto.png", header(info))
    return text


# ----------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="FP32 model folder (python -m export)")
    parser.add_argument("--model-fp16", help="FP16 model folder (default: exported from --run into --out)")
    parser.add_argument("--data", required=True, help="dataset with a test split (MVTec, VisA, synthetic, folder)")
    parser.add_argument("--run", help="training run: PyTorch rows, the reference baseline and FLOPs")
    parser.add_argument("--out", default="runs/sweep", help="output folder (default runs/sweep)")
    for name, default in DEFAULTS.items():
        flag = "--" + name.replace("_", "-")
        note = "; 0: VAE-only plan (no diffusion)" if name == "steps" else ""
        parser.add_argument(flag, default=default, help=f"comma-separated (default {default}{note})")
    parser.add_argument("--limit", type=int, help="test images per class (default all)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up batches per configuration (default 1)")
    parser.add_argument("--latency-batches", type=int, default=3,
                        help="timed batches for the batch sizes after the first (default 3)")
    parser.add_argument("--peak-tflops", type=float, help="hardware peak (TFLOP/s) for the fraction-of-peak column")
    parser.add_argument("--device", default="cpu",
                        help=f"device of every backend: {DEVICE_HELP} (default cpu; TensorRT needs a CUDA device)")
    parser.add_argument("--provider", choices=PROVIDERS,
                        help="ONNX Runtime's execution provider (default the device's own)")
    parser.add_argument("--cuda-graph", action="store_true", help="PyTorch: replay the DDIM loop as a CUDA graph")
    parser.add_argument("--no-reference", action="store_true", help="skip the as-released reference baseline")
    return parser


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def sweep_plans(start_ts: Sequence[int], steps: Sequence[int]) -> list[DDIMPlan]:
    """The plans of the grid, start timestep by start timestep; steps 0 (the VAE-only plan, which noises nothing)
    once, last. ``ValueError`` for a plan the schedule cannot make."""
    plans = [ddim_plan(s, t) for t in start_ts for s in steps if s != 0]
    return plans + ([ddim_plan(0)] if 0 in steps else [])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.backends = [b for b in args.backends.split(",") if b]
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.start_t, args.steps, args.batch_sizes = ints(args.start_t), ints(args.steps), ints(args.batch_sizes)
    try:
        args.plans = sweep_plans(args.start_t, args.steps)
    except ValueError as exc:
        parser.error(f"--steps / --start-t: {exc}")
    out = Path(args.out)
    manifest = Manifest.load(args.model)
    args.model_for = {manifest.precision: args.model}
    if args.model_fp16:
        args.model_for["fp16"] = args.model_fp16
    elif "fp16" in args.precisions and "fp16" not in args.model_for and args.run:
        args.model_for["fp16"] = str(export_fp16(args.run, out / "model-fp16", manifest))
    data = TestSet.load(args.data, manifest.image_size, args.limit)
    noise = manifest.noise()

    info = {
        "model": str(args.model), "data": str(args.data), "images": len(data.images), "warmup": args.warmup,
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{platform.processor() or platform.machine()}, {_cpu_count()} CPUs",
        "grid": {k: getattr(args, k) for k in DEFAULTS},
    }
    rows: list[Row] = []
    skipped: dict[str, str] = {}

    def keep(row: Row) -> None:
        rows.append(row)
        write_tables(out, rows, skipped, info)

    per_backend = len(args.plans) * len(args.batch_sizes)
    with tqdm(total=per_backend * len(args.backends) * len(args.precisions), desc="sweep", unit="cfg") as bar:
        for precision in args.precisions:
            backends, missing = open_backends(args, precision)
            skipped.update({f"{name} {precision}": reason for name, reason in missing.items()})
            for name, backend in backends.items():
                before = len(rows)
                try:
                    sweep_backend(name, backend, precision, args, data, noise, bar, keep)
                except Exception as exc:  # noqa: BLE001 (one backend failing part-way must not lose the other rows)
                    skipped[f"{name} {precision}"] = (f"failed after {len(rows) - before} row(s): "
                                                      f"{type(exc).__name__}: {exc}")
                finally:
                    backend.close()
    if args.run and not args.no_reference:
        keep(reference_row(args, data))
    if not rows:
        raise BackendError(f"no backend could run: {skipped}")
    add_flops_and_speedups(rows, args)
    print(write_results(out, rows, skipped, info), end="")
    print(f"wrote {out}/sweep.{{csv,json,md}} and {out}/pareto.png")
    return 0


def export_fp16(run: str, out: Path, manifest: Manifest) -> Path:
    """An FP16 model folder of ``run`` with the FP32 folder's plan and batch limit."""
    from export.__main__ import main as export_main

    export_main(["--run", run, "--out", str(out), "--precision", "fp16", "--max-batch", str(manifest.max_batch),
                 "--steps", str(manifest.steps), "--start-t", str(manifest.start_t), "--no-verify"])
    return out


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    run_cli(main)
