"""benchmarks.sweep on the untrained tiny model with a reduced grid: files, rows, baselines and the Pareto front."""
import csv
import json
import math

import pytest

from benchmarks.sweep import Row, main, pareto_front

pytestmark = pytest.mark.filterwarnings("ignore:scorer. no weights:UserWarning")


@pytest.fixture(scope="module")
def sweep(model_dir, tiny_run, synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    assert main([
        "--model", str(model_dir), "--data", str(synthetic_data), "--run", str(tiny_run), "--out", str(out),
        "--backends", "torch,onnxruntime,tensorrt", "--precisions", "fp32", "--start-t", "399",
        "--steps", "2,1", "--batch", "1,2", "--limit", "2", "--latency-batches", "1",
    ]) == 0
    return out, json.loads((out / "sweep.json").read_text())


def test_grid_rows_baselines_and_files(sweep):
    out, result = sweep
    rows = result["rows"]
    diad = [(r["backend"], r["steps"], r["batch"]) for r in rows if r["method"] == "diad"]
    assert sorted(diad) == sorted((b, s, n) for b in ("torch", "onnxruntime") for s in (2, 1) for n in (1, 2))
    assert sum(r["method"] == "vae-only" for r in rows) == 4  # per backend, per batch size
    reference = [r for r in rows if r["method"] == "reference"]
    assert len(reference) == 1 and reference[0]["steps"] == 10 and reference[0]["start_t"] == 999
    assert math.isclose(reference[0]["speedup"], 1.0)
    assert "tensorrt fp32" in result["skipped"] and "TensorRT" in result["skipped"]["tensorrt fp32"]
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


def row(latency: float, auroc: float) -> Row:
    return Row("b", "fp32", "diad", 999, 10, 1, latency, latency, 1.0, {}, 0.0, i_auroc=auroc)


def test_pareto_front_keeps_only_undominated_rows():
    rows = [row(10, 0.7), row(20, 0.9), row(15, 0.6), row(30, 0.85), row(40, 0.95), row(5, math.nan)]
    assert [(r.p50_ms, r.i_auroc) for r in pareto_front(rows)] == [(10, 0.7), (20, 0.9), (40, 0.95)]
