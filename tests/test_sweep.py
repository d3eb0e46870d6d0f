"""benchmarks.sweep on the untrained tiny model with a reduced grid: files, rows, baselines and the Pareto front;
backends that cannot open or fail part-way (issue 12.4), and the PyTorch loop that a CUDA graph captures."""
import argparse
import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from helpers import fake_tensorrt
from helpers.model_folder import make_folder

from benchmarks.sweep import Row, main, open_backends, pareto_front, sweep_plans, torch_model
from benchmarks.torch_pipeline import PipelineStages, TorchBackend
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.schedule import ddim_plan
from training.models.diad import DiAD, ModelStages

pytestmark = pytest.mark.filterwarnings("ignore:scorer. no weights:UserWarning")


@pytest.fixture(scope="module")
def sweep(model_dir, tiny_run, synthetic_data, tmp_path_factory):
    """The grid on 3 test images (one class, MVTec layout: 1 normal, 2 defects), so that the reference's 10 steps
    from t = 999 stay cheap."""
    out = tmp_path_factory.mktemp("sweep")
    one_class = tmp_path_factory.mktemp("one-class")
    shutil.copytree(synthetic_data / "fabric", one_class / "fabric")
    assert main([
        "--model", str(model_dir), "--data", str(one_class), "--run", str(tiny_run), "--out", str(out),
        "--backends", "torch,onnxruntime,tensorrt", "--precisions", "fp32", "--start-t", "399",
        "--steps", "2,1,0", "--batch-sizes", "1,2", "--limit", "3", "--latency-batches", "1",
    ]) == 0
    return out, json.loads((out / "sweep.json").read_text())


def test_grid_rows_baselines_and_files(sweep):
    out, result = sweep
    assert result["info"]["images"] == 3
    rows = result["rows"]
    diad = [(r["backend"], r["steps"], r["batch"]) for r in rows if r["method"] == "diad"]
    assert sorted(diad) == sorted((b, s, n) for b in ("torch", "onnxruntime") for s in (2, 1) for n in (1, 2))
    vae_only = [r for r in rows if r["method"] == "vae-only"]  # steps 0: per backend, per batch size
    assert sorted((r["backend"], r["batch"]) for r in vae_only) == [(b, n) for b in ("onnxruntime", "torch")
                                                                    for n in (1, 2)]
    assert all(r["steps"] == 0 and r["start_t"] is None and r["stages_ms"]["steps"] == 0 for r in vae_only)
    vae = {(r["backend"], r["batch"]): r for r in vae_only}
    assert abs(vae["torch", 1]["i_auroc"] - vae["onnxruntime", 1]["i_auroc"]) < 1e-6
    assert vae["torch", 1]["gflops"] < by_steps(rows, "torch", 1)["gflops"]  # no hint encoder, no step
    assert "| onnxruntime | fp32 | vae-only | - | 0 | 1 |" in (out / "sweep.md").read_text()
    reference = [r for r in rows if r["method"] == "reference"]
    assert len(reference) == 1 and reference[0]["steps"] == 10 and reference[0]["start_t"] == 999
    assert math.isclose(reference[0]["speedup"], 1.0)
    # on --device cpu (the default) TensorRT is skipped, and says what it needs
    assert result["skipped"]["tensorrt fp32"] == "device 'cpu': TensorRT runs on a CUDA device, cuda or cuda:N"
    for r in rows:
        assert r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] and 0 <= r["i_auroc"] <= 1
        assert r["gflops"] > 0 and math.isclose(r["speedup"], reference[0]["p50_ms"] / r["p50_ms"], rel_tol=1e-9)
    # the same configuration scores alike on both backends (one model, one fixed noise)
    by = {(r["backend"], r["steps"], r["batch"]): r for r in rows if r["method"] == "diad"}
    assert abs(by["torch", 2, 1]["i_auroc"] - by["onnxruntime", 2, 1]["i_auroc"]) < 1e-6
    # more DDIM steps cost more FLOPs; the reference's doubled steps cost the most
    assert by["torch", 2, 1]["gflops"] < reference[0]["gflops"] and by["torch", 1, 1]["gflops"] < by["torch", 2, 1]["gflops"]
    with open(out / "sweep.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (out / "sweep.md").read_text().count("\n| ") == len(rows) + 1
    assert (out / "pareto.png").stat().st_size > 10_000


def by_steps(rows: list[dict], backend: str, steps: int) -> dict:
    return next(r for r in rows if (r["backend"], r["steps"], r["batch"]) == (backend, steps, 1))


def test_sweep_plans_list_the_vae_only_plan_once():
    plans = sweep_plans([999, 399], [2, 0, 1])
    assert [(p.start_t, p.steps) for p in plans] == [(999, 2), (999, 1), (399, 2), (399, 1), (0, 0)]
    assert plans[-1].vae_only and [p.vae_only for p in sweep_plans([999], [3])] == [False]


def row(latency: float, auroc: float) -> Row:
    return Row("b", "fp32", "diad", 999, 10, 1, latency, latency, 1.0, {}, 0.0, i_auroc=auroc)


def test_pareto_front_keeps_only_undominated_rows():
    rows = [row(10, 0.7), row(20, 0.9), row(15, 0.6), row(30, 0.85), row(40, 0.95), row(5, math.nan)]
    assert [(r.p50_ms, r.i_auroc) for r in pareto_front(rows)] == [(10, 0.7), (20, 0.9), (40, 0.95)]


def test_a_backend_that_cannot_open_is_skipped_with_its_whole_reason(tmp_path, monkeypatch):
    """A model folder without engines raised ModelFolderError, which the sweep did not catch (every row lost)."""
    fake_tensorrt.install(monkeypatch)
    folder = make_folder(tmp_path / "model")
    args = argparse.Namespace(backends=["tensorrt", "onnxruntime"], model_for={"fp32": str(folder.root)},
                              device="cpu", provider=None, run=None)
    opened, skipped = open_backends(args, "fp32")
    assert list(opened) == ["onnxruntime"]
    opened["onnxruntime"].close()
    assert skipped["tensorrt"] == "device 'cpu': TensorRT runs on a CUDA device, cuda or cuda:N"
    args.backends, args.device = ["tensorrt"], "cuda:0"
    skipped = open_backends(args, "fp32")[1]
    assert skipped["tensorrt"].startswith(f"{folder.root}/manifest.json: no vae_encoder engine for TensorRT 10.3.0")
    assert skipped["tensorrt"].endswith(
        f"Build them here: python -m export.tensorrt --model {folder.root} --device cuda:0")


@pytest.fixture
def grid(tmp_path, synthetic_data):
    folder = make_folder(tmp_path / "model")
    return tmp_path / "sweep", [
        "--model", str(folder.root), "--data", str(synthetic_data), "--out", str(tmp_path / "sweep"),
        "--backends", "onnxruntime", "--precisions", "fp32", "--start-t", "399", "--steps", "2,1", "--batch-sizes", "1",
        "--limit", "1", "--warmup", "0",
    ]


def _failing_at_one_step(monkeypatch, error: BaseException) -> None:
    run = OnnxRuntimeBackend.run

    def failing(self, images, plan, noise, keep_reconstruction=False):
        if len(plan.timesteps) == 1:
            raise error
        return run(self, images, plan, noise, keep_reconstruction)

    monkeypatch.setattr(OnnxRuntimeBackend, "run", failing)


def test_a_backend_failing_part_way_keeps_the_rows_before_it(grid, monkeypatch):
    out, argv = grid
    _failing_at_one_step(monkeypatch, RuntimeError("device lost"))
    assert main(argv) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert [(r["backend"], r["steps"]) for r in result["rows"]] == [("onnxruntime", 2)]
    assert result["skipped"] == {"onnxruntime fp32": "failed after 1 row(s): RuntimeError: device lost"}
    assert (out / "pareto.png").is_file() and "device lost" in (out / "sweep.md").read_text()


def test_rows_are_on_disk_as_they_complete(grid, monkeypatch):
    out, argv = grid
    _failing_at_one_step(monkeypatch, KeyboardInterrupt())  # the sweep killed during the second configuration
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [(r["backend"], r["steps"]) for r in rows] == [("onnxruntime", 2)]
    with open(out / "sweep.csv") as f:
        assert len(list(csv.DictReader(f))) == 1


def test_the_torch_loop_makes_no_tensor_from_python_numbers(tiny_run, monkeypatch):
    """Inside a captured CUDA graph a tensor made from a Python number is a host-to-device copy, which PyTorch
    rejects: the loop takes device tensors made before the capture, and computes what the scalar loop did."""
    backend = TorchBackend(*torch_model(str(tiny_run)))
    plan = ddim_plan(2, 399)
    size = backend.model.config.image_size
    image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        x, hint = backend.model.vae.encode_mean(image), backend.model.sg.encode_hint(image)
        expected = x
        for t, a, p in zip(plan.timesteps, plan.alphas, plan.alphas_prev):
            expected = DiAD.ddim_step(expected, backend.model.denoise(expected, int(t), hint), float(a), float(p))
        stages = PipelineStages(backend, np.zeros((1, *x.shape[1:]), np.float32))
        backend.step_tensors(plan)  # made once per plan, before any capture
        made = []

        def spy(name: str):
            make = getattr(torch, name)

            def from_data(data, *args, **kwargs):
                if isinstance(data, (int, float, np.number)):
                    made.append((name, data))
                return make(data, *args, **kwargs)

            return from_data

        for name in ("tensor", "as_tensor", "scalar_tensor"):
            monkeypatch.setattr(torch, name, spy(name))
        out = ModelStages.loop(stages, x, hint, plan)  # the loop a CUDA graph captures
        monkeypatch.undo()
    assert made == []
    torch.testing.assert_close(out, expected)
