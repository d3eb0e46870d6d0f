"""The GPU run's measurements and training, in a worker process: ``python -m benchmarks.gpu_steps SPEC.json``.

:mod:`benchmarks.gpu_run` writes the spec (the steps with their weights, the worker's deadline, the results file,
the device, the sizes, the scratch and data folders) and starts this; nothing imports it. Each step runs within its
share of the time to the deadline (:func:`benchmarks.gpu_budget.run_steps`) and its outcome is appended to the
results file as it completes. The heavy imports are inside the steps, so a missing package fails the steps that
need it, by name, and no other.

Measurements (the tiny model is the shipped base model: latency and parity do not depend on training):

* ``export``: the tiny model folder (FP32 ONNX graphs) for the parity and backend rows;
* ``backends``: TensorRT and ONNX Runtime's CUDA provider, each a row with the reason it cannot run (or its rows);
* ``tiny``: :func:`benchmarks.sweep.sweep_backend` rows of PyTorch FP32 / FP16, eager / CUDA graph, at the sizes'
  batches, for the recipe's plan and the VAE-only plan: ms per image with the stage split;
* ``parity``: those images' scores and maps from each PyTorch configuration against ONNX Runtime on the CPU;
* ``sd15``: the sd15-size model with seeded random weights at the sizes' precision, DDIM steps and batches:
  images/s and achieved TFLOP/s (:mod:`benchmarks.flops`) beside the chip's dense FP16 peak;
* ``plumbing``: ``benchmarks.tensorrt_plumbing.measure``, the TensorRT backend's CUDA side, when it imports.

Training, the tiny recipe on the demo data: ``autoencoder`` and ``diad`` (each for the sizes' minutes; steps per
second beside the CPU demo's), ``statistics`` and ``evaluate`` (DiAD against VAE-only).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

from benchmarks.gpu_budget import (
    CONTEXT_LOST,
    FAILED,
    OK,
    SKIPPED,
    Clock,
    Outcome,
    Step,
    describe,
    is_cuda_error,
    run_steps,
)
from benchmarks.gpu_kit import machine
from benchmarks.gpu_run import Sizes

# The training's CPU figures: make demo on the 2-core development machine, quiet (docs/performance.md)
CPU_DEMO = {"autoencoder": {"steps": 429, "seconds": 180.0}, "diad": {"steps": 1181, "seconds": 360.0}}
CPU_DEMO_SOURCE = ("make demo on the 2-core development machine, quiet, 2026-12-06 (docs/performance.md): 429 "
                   "autoencoder steps in 3 minutes, 1,181 DiAD steps in 6 minutes")
# Dense FP16 tensor-core peaks (TFLOP/s; NVIDIA's datasheets, half the figures "with sparsity"): the first entry
# whose words all occur in torch.cuda.get_device_name() (the H100 SXM reports "NVIDIA H100 80GB HBM3").
PEAK_FP16_TFLOPS = (
    (("H200", "NVL"), 835.5), (("H200",), 989.4), (("H100", "NVL"), 835.5), (("H100", "PCIe"), 756.5),
    (("H100",), 989.4),
)
TRAINING_START_S = 12.0  # a training command's start-up and final save, outside its --minutes
# PyTorch's configurations (precision, CUDA graph). Eager first: a CUDA error ends a step's configurations (the
# process's CUDA context may be lost), and a CUDA graph capture that fails must not take the eager rows with it.
CONFIGS = (("fp16", False), ("fp32", False), ("fp16", True), ("fp32", True))


def peak_tflops(gpu: str) -> float | None:
    """The dense FP16 peak of the GPU named ``gpu``, None when the table does not know it."""
    return next((peak for words, peak in PEAK_FP16_TFLOPS if all(w in gpu for w in words)), None)


def latent_shape(config: Any) -> tuple[int, int, int]:
    """The latent ``(C, s, s)`` of a model config's images."""
    factor = 2 ** (len(config.vae.block_out_channels) - 1)
    return config.vae.latent_channels, config.image_size // factor, config.image_size // factor


def config_label(name: str, precision: str, graph: bool) -> str:
    """A row's configuration, e.g. "torch fp16 CUDA graph"."""
    return f"{name} {precision} {'CUDA graph' if graph else 'eager'}"


class Context:
    """What the steps of one worker share: the spec, the tiny base model, the test images, the plan and noise."""

    def __init__(self, spec: dict[str, Any]):
        self.sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["sizes"].items()})
        self.device = "cuda:0" if spec["device"] == "cuda" else spec["device"]
        self.work = Path(spec["work"])
        self.data = spec["data"]
        self.run_dir = self.work / "run"
        self.model_dir = self.work / "model-fp32"

    @cached_property
    def tiny(self) -> tuple[Any, Any]:
        """The tiny preset with the shipped base model's weights and the recipe's (pretrained) scorer, on the CPU."""
        from training.base_model import BASE_MODELS, load_base
        from training.models.diad import build_model
        from training.models.presets import get_preset
        from training.models.scorer import seeded_scorer

        config = get_preset("tiny")
        model = build_model(config)
        load_base(model, BASE_MODELS["tiny"])
        return model.eval(), seeded_scorer(config.scorer, config.image_size, config.inference.noise_seed).eval()

    def tiny_copy(self) -> tuple[Any, Any]:
        """A copy of :attr:`tiny` for a backend to move and cast."""
        return copy.deepcopy(self.tiny)

    @cached_property
    def test_set(self) -> Any:
        from benchmarks.sweep import TestSet

        return TestSet.load(self.data, self.tiny[0].config.image_size, self.sizes.tiny_limit)

    @cached_property
    def plan(self) -> Any:
        from runtime.schedule import ddim_plan

        inference = self.tiny[0].config.inference
        return ddim_plan(inference.steps, inference.start_t)

    @cached_property
    def noise(self) -> Any:
        from runtime.schedule import noise_draws

        config = self.tiny[0].config
        return noise_draws(latent_shape(config), config.inference.noise_seed, config.inference.draws)

    def manifest(self) -> Any:
        """The exported tiny model folder, None when the export step did not write it."""
        from runtime.manifest import Manifest

        return Manifest.load(self.model_dir) if (self.model_dir / "manifest.json").is_file() else None

    def gpu_name(self) -> str:
        """The device's name (torch's for CUDA, the processor's for the CPU)."""
        if not self.device.startswith("cuda"):
            return platform.processor() or platform.machine()
        import torch

        try:
            return torch.cuda.get_device_name(torch.device(self.device))
        except RuntimeError as exc:  # after a CUDA error
            return f"{self.device} (name unavailable: {short(exc, 80)})"


def result(step: str, rows: list[dict[str, Any]], data: dict[str, Any] | None = None) -> Outcome:
    """A step's outcome from its rows: ok when a row was measured, else failed when one failed, else skipped; a
    CUDA error among the rows is flagged for :func:`run_steps`."""
    statuses = {r.get("status") for r in rows}
    status = OK if OK in statuses else FAILED if FAILED in statuses else SKIPPED
    reason = "" if status == OK else "; ".join(sorted({r.get("reason", "") for r in rows} - {""}))
    data = dict(data or {})
    if any(r.get("cuda_error") for r in rows):
        data["cuda_error"] = True
    return Outcome(step, status, reason, rows=rows, data=data)


def failed_row(label: str, exc: BaseException, **fields: Any) -> dict[str, Any]:
    """A row for a configuration that raised ``exc``, naming it and whether it came from CUDA."""
    return {"config": label, "status": FAILED, "reason": describe(exc), "cuda_error": is_cuda_error(exc), **fields}


# ------------------------------------------------------------------------------------------------ measurements
def export_step(ctx: Context, deadline: float) -> Outcome:
    """The tiny base model's FP32 model folder, for the ONNX Runtime rows (parity, the CUDA provider)."""
    from export.model_folder import write_model_folder

    model, scorer = ctx.tiny_copy()
    max_batch = max(*ctx.sizes.tiny_batches, ctx.sizes.parity_images)
    _, exported = write_model_folder(model, scorer, ctx.model_dir, "fp32", max_batch=max_batch, progress=False)
    parts = {e.name: {"mib": round(e.bytes / 2**20, 2), "seconds": round(e.seconds, 2)} for e in exported}
    return Outcome("export", OK, data={"folder": str(ctx.model_dir), "components": parts})


def backends_step(ctx: Context, deadline: float) -> Outcome:
    """A row per backend this machine cannot run, with the reason: TensorRT, ONNX Runtime's CUDA provider."""
    why = machine()["not_installable"]
    rows: list[dict[str, Any]] = []
    try:
        from runtime.backends.tensorrt_env import import_tensorrt

        version = import_tensorrt().__version__
        rows.append({"config": "tensorrt", "status": SKIPPED, "reason": f"TensorRT {version} imports, but this run "
                     "builds no engines (python -m export.tensorrt)"})
    except Exception as exc:  # noqa: BLE001 (the reason is the row)
        rows.append({"config": "tensorrt", "status": SKIPPED, "reason": f"{why['tensorrt']}: {short(exc)}"})
    manifest = ctx.manifest()
    try:
        if manifest is None:
            raise FileNotFoundError(f"{ctx.model_dir}: no model folder (the export step did not finish)")
        from runtime.backends.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(manifest, ctx.device if ctx.device.startswith("cuda") else "cuda:0")
    except Exception as exc:  # noqa: BLE001
        rows.append({"config": "onnxruntime-cuda", "status": SKIPPED,
                     "reason": f"{why['onnxruntime-gpu']}: {short(exc)}"})
    else:
        sweep_rows(ctx, "onnxruntime-cuda", lambda: backend, "fp32", False, rows, [])
    return result("backends", rows)


def short(exc: BaseException, limit: int = 240) -> str:
    """``Type: message``, cut to ``limit`` characters."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sweep_rows(
    ctx: Context, name: str, open_backend: Callable[[], Any], precision: str, graph: bool, rows: list[dict],
    table: list[Any],
) -> None:
    """:func:`benchmarks.sweep.sweep_backend` on the backend ``open_backend`` opens (the recipe's plan and the
    VAE-only plan at the sizes' batches): each row goes to ``rows`` (a dict) and ``table`` (the sweep's Row); a
    failure, opening included, is a row too."""
    from tqdm import tqdm

    from benchmarks.sweep import sweep_backend
    from runtime.schedule import ddim_plan

    args = argparse.Namespace(plans=[ctx.plan, ddim_plan(0)], batch_sizes=list(ctx.sizes.tiny_batches),
                              warmup=ctx.sizes.warmup, latency_batches=ctx.sizes.latency_batches)
    label = config_label(name.removesuffix("-cudagraph"), precision, graph)

    def keep(row: Any) -> None:
        table.append(row)
        rows.append({"config": label, "status": OK, "graph": graph, **asdict(row)})

    backend = None
    try:
        backend = open_backend()
        with tqdm(disable=True) as bar:
            sweep_backend(name, backend, precision, args, ctx.test_set, ctx.noise, bar, keep)
    except Exception as exc:  # noqa: BLE001 (one configuration failing must not lose the others)
        rows.append(failed_row(label, exc))
    finally:
        if backend is not None:
            backend.close()


def tiny_step(ctx: Context, deadline: float) -> Outcome:
    """PyTorch FP32 / FP16, eager / CUDA graph, on the tiny model; the sweep's CSV written beside."""
    from benchmarks.sweep import write_tables
    from benchmarks.torch_pipeline import TorchBackend

    rows: list[dict[str, Any]] = []
    table: list[Any] = []
    measured, spent = 0, 0.0
    for precision, graph in CONFIGS:
        name = "torch-cudagraph" if graph else "torch"  # the sweep's backend column
        label = config_label("torch", precision, graph)
        reason = TorchBackend.unsupported(ctx.device, precision, graph)
        if not reason and measured and spent / measured > deadline - time.time():
            reason = f"time short: {deadline - time.time():.0f} s left, a configuration took {spent / measured:.0f} s"
        if reason:
            rows.append({"config": label, "status": SKIPPED, "reason": reason})
            continue
        start = time.time()
        sweep_rows(ctx, name, lambda p=precision, g=graph: TorchBackend(*ctx.tiny_copy(), ctx.device, p, cuda_graph=g),
                   precision, graph, rows, table)
        measured, spent = measured + 1, spent + time.time() - start
        if rows[-1].get("cuda_error"):
            rows += not_run_after(label, CONFIGS[CONFIGS.index((precision, graph)) + 1 :])
            break
    data: dict[str, Any] = {"images": len(ctx.test_set.images), "plan": ctx.plan.label,
                            "scorer": "1 - cos (the base model has no fitted normal statistics)"}
    if table:
        info = {"model": "tiny base model (training/models/base)", "data": ctx.data, "images": data["images"],
                "warmup": ctx.sizes.warmup, "date": time.strftime("%Y-%m-%dT%H:%M", time.gmtime()),
                "machine": ctx.gpu_name()}
        skipped = {r["config"]: r["reason"] for r in rows if r["status"] != OK}
        write_tables(ctx.work / "sweep", table, skipped, info)
        data["csv"] = str(ctx.work / "sweep" / "sweep.csv")
    return result("tiny", rows, data)


@contextmanager
def exact_fp32(device: str) -> Iterator[None]:
    """TF32 off on CUDA while inside (cuDNN convolutions use it by default), so FP32 means FP32."""
    if not device.startswith("cuda"):
        yield
        return
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def parity_step(ctx: Context, deadline: float) -> Outcome:
    """Each PyTorch configuration's scores and maps of the first images against ONNX Runtime's on the CPU."""
    from benchmarks.torch_pipeline import TorchBackend
    from export.parity import TOLERANCE
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    manifest = ctx.manifest()
    if manifest is None:
        return Outcome("parity", FAILED, f"{ctx.model_dir}: no model folder (the export step did not finish)")
    images = ctx.test_set.images[: ctx.sizes.parity_images]
    reference = OnnxRuntimeBackend(manifest, "cpu")
    try:
        expected = reference.run(images, ctx.plan, ctx.noise)
    finally:
        reference.close()
    rows: list[dict[str, Any]] = []
    for precision, graph in CONFIGS:
        label = config_label("torch", precision, graph)
        if time.time() > deadline:
            rows.append({"config": label, "status": SKIPPED, "reason": "time short: the step's share is spent"})
            continue
        if reason := TorchBackend.unsupported(ctx.device, precision, graph):
            rows.append({"config": label, "status": SKIPPED, "reason": reason})
            continue
        backend = None
        try:
            backend = TorchBackend(*ctx.tiny_copy(), ctx.device, precision, cuda_graph=graph)
            with exact_fp32(ctx.device) if precision == "fp32" else nullcontext():
                got = backend.run(images, ctx.plan, ctx.noise)
            rows.append({"config": label, **compare(got, expected, TOLERANCE[precision])})
        except Exception as exc:  # noqa: BLE001
            rows.append(failed_row(label, exc))
            if is_cuda_error(exc):
                rows += not_run_after(label, CONFIGS[CONFIGS.index((precision, graph)) + 1 :])
                break
        finally:
            if backend is not None:
                backend.close()
    return result("parity", rows, {"images": len(images), "reference": "onnxruntime cpu fp32"})


def not_run_after(failed: str, configs: Sequence[tuple[str, bool]]) -> list[dict[str, Any]]:
    """Skipped rows for ``configs``, left after a CUDA error in configuration ``failed``."""
    return [{"config": config_label("torch", p, g), "status": SKIPPED,
             "reason": f"not run: a CUDA error in {failed} may have lost this process's CUDA context"}
            for p, g in configs]


def compare(got: Any, expected: Any, tolerance: float) -> dict[str, Any]:
    """Largest absolute differences of scores and maps, relative to the largest reference value, and whether both
    are within ``tolerance`` (:data:`export.parity.TOLERANCE`)."""
    import numpy as np

    fields: dict[str, Any] = {"status": OK, "images": len(expected.score), "tolerance": tolerance}
    for name, a, b in (("score", got.score, expected.score), ("map", got.anomaly_map, expected.anomaly_map)):
        error = float(np.abs(np.asarray(a, np.float64) - b).max())
        fields[f"max_abs_{name}"] = error
        fields[f"relative_{name}"] = error / max(float(np.abs(b).max()), 1e-12)
    fields["within"] = max(fields["relative_score"], fields["relative_map"]) <= tolerance
    return fields


def sd15_step(ctx: Context, deadline: float) -> Outcome:
    """The sd15-size pipeline (seeded random weights) at each batch and DDIM step count of the sizes."""
    from benchmarks.flops import component_flops, pipeline_flops
    from benchmarks.sd15_export import random_model
    from benchmarks.torch_pipeline import TorchBackend
    from training.models.presets import get_preset

    s = ctx.sizes
    if reason := TorchBackend.unsupported(ctx.device, s.big_precision, s.big_graph):
        return Outcome("sd15", SKIPPED, reason)
    config = get_preset(s.big_preset)
    model, scorer = random_model(config, ctx.device)
    flops = component_flops(model, scorer.to(ctx.device))
    label = config_label(s.big_preset, s.big_precision, s.big_graph)
    backend = TorchBackend(model, scorer, ctx.device, s.big_precision, cuda_graph=s.big_graph)
    gpu = ctx.gpu_name()
    info = {"preset": s.big_preset, "image_size": config.image_size, "gpu": gpu, "peak_tflops": peak_tflops(gpu),
            "gflops_per_component": {k: v / 1e9 for k, v in flops.items()}}
    rows: list[dict[str, Any]] = []
    last: tuple[int, float] | None = None  # the previous batch and its seconds
    for batch in s.big_batches:
        if last and last[1] * batch / last[0] > deadline - time.time():
            rows += [{"config": label, "batch": batch, "steps": n, "status": SKIPPED,
                      "reason": f"time short: {deadline - time.time():.0f} s left"} for n in s.big_steps]
            continue
        start = time.time()
        try:
            rows += big_rows(ctx, backend, config, batch, lambda n, b=batch: pipeline_flops(flops, n) * b, info, label)
        except Exception as exc:  # noqa: BLE001
            rows.append(failed_row(label, exc, batch=batch))
            if is_cuda_error(exc):
                break
        last = batch, time.time() - start
    backend.close()
    return result("sd15", rows, info)


def big_rows(
    ctx: Context, backend: Any, config: Any, batch: int, flops: Callable[[int], int], info: dict[str, Any], label: str,
) -> list[dict[str, Any]]:
    """:func:`benchmarks.sd15_latency.rows_at_steps` at one batch: per DDIM step count, the best of the repeats."""
    import numpy as np

    from benchmarks.sd15_latency import rows_at_steps
    from runtime.sequence import STAGES
    from runtime.schedule import fixed_noise

    images = np.random.default_rng(batch).standard_normal((batch, 3, config.image_size, config.image_size), np.float32)
    noise = fixed_noise(latent_shape(config), 0)
    timed = rows_at_steps(label, lambda plan: backend.run(images, plan, noise), list(ctx.sizes.big_steps),
                          ctx.sizes.repeats, flops)
    rows = []
    for r in timed:
        tflops = r.flops / r.wall / 1e12
        peak = info["peak_tflops"]
        rows.append({
            "config": label, "status": OK, "batch": batch, "steps": r.steps, "ms_per_image": 1e3 * r.wall / batch,
            "images_per_s": batch / r.wall,
            "stages_ms": {k: 1e3 * r.output.seconds.get(k, 0.0) / batch for k in STAGES},
            "tflop_per_image": r.flops / batch / 1e12, "tflops": tflops,
            "peak_fraction": tflops / peak if peak else None,
        })
    return rows


def plumbing_step(ctx: Context, deadline: float) -> Outcome:
    """The rows of ``benchmarks.tensorrt_plumbing.measure``, or one failed row naming why it did not run."""
    try:
        from benchmarks.tensorrt_plumbing import measure

        rows = [dict(r) for r in measure(deadline, device=int(ctx.device.partition(":")[2] or 0))]
    except Exception as exc:  # noqa: BLE001 (a missing module or a failure is the row)
        return result("plumbing", [{"name": "tensorrt_plumbing", **failed_row("tensorrt_plumbing", exc)}])
    for row in rows:
        row.setdefault("config", row.get("name", "?"))
        row.setdefault("status", FAILED)
    return result("plumbing", rows)


# ----------------------------------------------------------------------------------------------------- training
def train_step(ctx: Context, deadline: float, stage: str) -> Outcome:
    """``training.finetune_autoencoder`` or ``training.train`` for the sizes' minutes (less when the share is
    shorter); steps per second from its log, beside the CPU demo's."""
    from training import finetune_autoencoder, train

    s = ctx.sizes
    nominal = s.autoencoder_minutes if stage == "autoencoder" else s.diad_minutes
    minutes = min(nominal, (deadline - time.time() - TRAINING_START_S) / 60)
    if minutes < 0.05:
        return Outcome(stage, SKIPPED, f"time short: {deadline - time.time():.0f} s left, the start-up alone takes "
                                       f"about {TRAINING_START_S:.0f} s")
    argv = ["--preset", "tiny", "--data", ctx.data, "--out", str(ctx.run_dir), "--minutes", f"{minutes:.3f}",
            "--device", ctx.device, *(["--max-steps", str(s.max_steps)] if s.max_steps else []),
            *(s.diad_args if stage == "diad" else ())]
    (finetune_autoencoder.main if stage == "autoencoder" else train.main)(argv)
    steps, seconds = last_logged(ctx.run_dir / "logs" / ("autoencoder.csv" if stage == "autoencoder" else "train.csv"))
    cpu = CPU_DEMO[stage]["steps"] / CPU_DEMO[stage]["seconds"]
    row = {"config": stage, "status": OK, "device": ctx.device, "minutes": round(minutes, 3), "steps": steps,
           "seconds": seconds, "steps_per_s": steps / seconds, "cpu_demo_steps_per_s": cpu,
           "speedup": steps / seconds / cpu}
    return Outcome(stage, OK, rows=[row], data={"cpu_demo": CPU_DEMO_SOURCE})


def last_logged(path: Path) -> tuple[int, float]:
    """The last (step, elapsed seconds) of a training log (``logs/*.csv``)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no training step logged")
    return int(rows[-1]["step"]), float(rows[-1]["elapsed_s"])


def trained(ctx: Context) -> str:
    """Why the run cannot be scored yet ("" when the DiAD training finished)."""
    config = ctx.run_dir / "config.json"
    if config.is_file() and "trained" in json.loads(config.read_text()):
        return ""
    return f"{ctx.run_dir}: no finished DiAD training (the diad step did not finish)"


def statistics_step(ctx: Context, deadline: float) -> Outcome:
    """``training.statistics`` on the trained run: the scorer's normal statistics, as the demo fits them."""
    from training.statistics import main as fit

    if reason := trained(ctx):
        return Outcome("statistics", SKIPPED, reason)
    fit(["--run", str(ctx.run_dir), "--data", ctx.data, "--device", ctx.device])
    return Outcome("statistics", OK, data={"folder": str(ctx.run_dir / "statistics")})


def evaluate_step(ctx: Context, deadline: float) -> Outcome:
    """``training.evaluate`` of the run: the mean over classes of DiAD's and VAE-only's rows."""
    from training.evaluate import main as evaluate

    if reason := trained(ctx):
        return Outcome("evaluate", SKIPPED, reason)
    limit = ctx.sizes.eval_limit
    evaluate(["--run", str(ctx.run_dir), "--data", ctx.data, "--device", ctx.device, "--pictures", "0",
              *(["--limit", str(limit)] if limit else [])])
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    rows = []
    for method, table in metrics["metrics"].items():
        mean = next(r for r in table if r["class"] == "mean")
        rows.append({"config": method, "status": OK, **{k: mean[k] for k in ("i_auroc", "p_auroc", "aupro")}})
    data = {"metrics_md": str(ctx.run_dir / "metrics.md"), "images": metrics["dataset"]["images"],
            "seconds_per_image": metrics["seconds_per_image"], "settings": metrics["settings"]}
    return Outcome("evaluate", OK, rows=rows, data=data)


STEPS: dict[str, Callable[[Context, float], Outcome]] = {
    "export": export_step, "backends": backends_step, "tiny": tiny_step, "parity": parity_step, "sd15": sd15_step,
    "plumbing": plumbing_step, "autoencoder": lambda c, d: train_step(c, d, "autoencoder"),
    "diad": lambda c, d: train_step(c, d, "diad"), "statistics": statistics_step, "evaluate": evaluate_step,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m benchmarks.gpu_steps SPEC.json (written by benchmarks.gpu_run)", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    ctx = Context(spec)
    steps = [Step(**s) for s in spec["steps"]]
    complete = run_steps(steps, Clock(spec["deadline"]), lambda name, deadline: STEPS[name](ctx, deadline),
                         Path(spec["results"]))
    return 0 if complete else CONTEXT_LOST


if __name__ == "__main__":
    raise SystemExit(main())
