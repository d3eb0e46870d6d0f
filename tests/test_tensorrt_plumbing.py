"""benchmarks.tensorrt_plumbing: without a GPU one skipped row naming what is missing; on the test doubles of
cuda-python (:mod:`helpers.fake_tensorrt`: "device" memory is host memory, a stream runs its work at once or
records it while capturing) every row as on a GPU, the stand-in's torch kernels running on the CPU."""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from helpers import fake_tensorrt

from benchmarks import tensorrt_plumbing as plumbing
from runtime.component_io import COMPONENT_IO
from runtime.schedule import ddim_plan


class HostWork:
    """The stand-in's kernels on the fake's memory and streams."""

    def __init__(self, cudart: fake_tensorrt.FakeCudart):
        self.cudart = cudart

    def tensor(self, address: int, shape: tuple[int, ...]) -> torch.Tensor:
        view = self.cudart.device_view(address, 4 * math.prod(shape))
        return torch.from_numpy(view.view(np.float32).reshape(shape))

    def launch(self, stream: int, work: Callable[[], None]) -> bool:
        return self.cudart.enqueue(stream, work)


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["name"].removeprefix("tensorrt plumbing: "): r for r in rows}


def test_without_a_gpu_measure_is_one_skipped_row_saying_why():
    rows = plumbing.measure(time.time() + 10)
    if rows[0]["status"] != "skipped":
        pytest.skip("a CUDA device and torch's CUDA are present")
    assert len(rows) == 1 and rows[0]["name"] == "tensorrt plumbing: CUDA side"
    assert any(words in rows[0]["reason"] for words in ("needs an NVIDIA GPU", "cuda-python", "CUDA is not available"))


def test_a_gpu_without_torch_cuda_is_a_skipped_row(monkeypatch):
    fake_tensorrt.install(monkeypatch)  # cuda-python sees a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (only,) = plumbing.measure(time.time() + 10)
    assert only["status"] == "skipped" and "torch, whose CUDA is not available" in only["reason"]


def test_every_row_on_the_test_doubles(monkeypatch):
    trt, cudart = fake_tensorrt.install(monkeypatch)
    rows = by_name(plumbing.run_measurements(time.time() + 20, 0, HostWork(cudart)))
    assert sys.modules["tensorrt"] is trt and sys.modules["cuda.bindings.runtime"] is cudart  # put back
    assert cudart.leaks() == {}
    for plan in plumbing.PLANS:
        for batch in plumbing.BATCHES:
            r = rows[f"batch {batch}, {plan.label}"]
            assert r["status"] == "ok", r
            assert r["max_relative_error"] == 0.0  # the same kernels on the same (host) memory
            assert r["loop"] == ("no loop (VAE-only)" if plan.vae_only else "graph")
    counts = rows[f"copies and waits per batch (batch 8, {plumbing.PLANS[0].label}, 2 draws)"]
    assert counts["status"] == "ok" and (counts["host_to_device"], counts["device_to_host"]) == (1, 2)
    assert (counts["waits"], counts["waits_while_queueing"], counts["device_to_device"]) == (1, 0, 0)
    one, two = rows["1 slot(s) in flight"], rows["2 slot(s) in flight"]
    assert one["status"] == two["status"] == "ok" and one["batches"] > 0 and two["batches"] > 0
    assert two["speedup_over_one_slot"] == pytest.approx(two["batches_per_s"] / one["batches_per_s"])
    assert cudart.instantiated == 2 * 2 * 2 + 1 + 2  # per slot: {1, 8} x two DDIM plans; one per throughput slot


def test_a_capture_that_fails_and_wrong_outputs_are_failed_rows(monkeypatch):
    _, cudart = fake_tensorrt.install(monkeypatch)
    cudart.fail_capture = True
    monkeypatch.setattr(plumbing, "PLANS", (ddim_plan(2),))
    monkeypatch.setattr(plumbing, "BATCHES", (1,))
    rows = by_name(plumbing.run_measurements(time.time() + 5, 0, HostWork(cudart)))
    r = rows[f"batch 1, {ddim_plan(2).label}"]
    assert r["status"] == "failed" and r["reason"] == "DDIM loop not captured: eager" and r["max_relative_error"] == 0

    cudart.fail_capture = False
    real = plumbing.FORMULAS["scorer"]

    def off_by_one(**tensors: torch.Tensor) -> None:
        real(**tensors)
        tensors["score"].add_(1.0)

    monkeypatch.setitem(plumbing.FORMULAS, "scorer", off_by_one)
    r = by_name(plumbing.run_measurements(time.time() + 5, 0, HostWork(cudart)))[f"batch 1, {ddim_plan(2).label}"]
    assert r["status"] == "failed" and r["reason"].startswith("outputs differ from the stand-in's on the CPU")
    assert cudart.leaks() == {}


def test_the_stand_in_folder_follows_the_component_table(tmp_path):
    manifest = plumbing.write_folder(tmp_path, "9.0")
    assert manifest.components == tuple(COMPONENT_IO) and manifest.has_draw_graphs and manifest.draws == 2
    for name in COMPONENT_IO:
        assert manifest.engine(name, plumbing.STANDIN_VERSION, "9.0")["file"].startswith(f"{name}.trtstand-in")
    noise = manifest.noise()
    images = plumbing.images_of(2)
    amap, score = plumbing.reference(images, ddim_plan(0), noise)
    assert amap.shape == (2, 256, 256) and np.array_equal(score, amap.max(axis=(1, 2)))
    # VAE-only: the map is |image - 2 * image subsampled and blown up| on channel 0
    expected = np.abs(images[:, 0] - np.repeat(np.repeat(images[:, 0, ::8, ::8], 8, 1), 8, 2))
    np.testing.assert_array_equal(amap, expected)
