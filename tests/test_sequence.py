"""The inference sequence is written once (runtime.sequence): every implementation calls its stage kernels in the
sequence's order, and the implementations agree on the numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import fake_tensorrt
from helpers.model_folder import LATENT, S, make_folder

from benchmarks import tensorrt_plumbing as plumbing
from benchmarks.torch_pipeline import PipelineStages, TorchBackend
from export import tensorrt as export_trt
from runtime.backends.onnxruntime import OnnxRuntimeBackend, SessionStages
from runtime.backends.tensorrt import Slot, TensorRTBackend
from runtime.manifest import Manifest
from runtime.schedule import DDIMPlan, ddim_plan, noise_draws
from runtime.sequence import STAGES, WallClock, infer
from training.models.backbones import RANDOM
from training.models.diad import DiAD, ModelStages, build_model
from training.models.presets import tiny
from training.models.scorer import FeatureScorer

KERNELS = ("encode", "encode_hint", "noise", "loop", "mean", "decode", "score")
PLANS = {"ddim": ddim_plan(2, 399), "vae-only": ddim_plan(0)}


class Recording:
    """Stage kernels on strings: each returns what it was given, tagged with its name."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        if name not in KERNELS:
            raise AttributeError(name)

        def kernel(*values):
            self.calls.append(name)
            return (name, name) if name in ("noise", "score") else name

        return kernel


class RecordingClock:
    def __init__(self) -> None:
        self.marks: list[str] = []

    def start(self) -> None:
        self.marks.append("start")

    def lap(self, stage: str) -> None:
        self.marks.append(stage)

    def skip(self, stage: str) -> None:
        self.marks.append(f"skip {stage}")


def sequence_order(plan: DDIMPlan, draws: int, score: bool = True) -> list[str]:
    """The kernels :func:`runtime.sequence.infer` calls, in order (without ``score``: up to ``decode``)."""
    stages = Recording()
    infer(stages, "images", plan, draws, RecordingClock())
    return stages.calls if score else stages.calls[:-1]


def test_the_sequence_and_its_stage_boundaries():
    clock = RecordingClock()
    stages = Recording()
    done = infer(stages, "images", PLANS["ddim"], 2, clock)
    assert stages.calls == ["encode", "encode_hint", "noise", "loop", "mean", "decode", "score"]
    assert clock.marks == ["start", *STAGES]
    assert (done.sampled.latent, done.sampled.noised, done.sampled.sample) == ("encode", "noise", "mean")
    assert sequence_order(PLANS["ddim"], 1) == ["encode", "encode_hint", "noise", "loop", "decode", "score"]
    clock = RecordingClock()
    assert sequence_order(PLANS["vae-only"], 2) == ["encode", "decode", "score"]  # no hint, noise, step or mean
    infer(Recording(), "images", PLANS["vae-only"], 2, clock)
    assert clock.marks == ["start", "encode", "skip steps", "decode", "score"]


def test_the_wall_clock_sums_stages_over_batches():
    clock = WallClock()
    for _ in range(2):
        infer(Recording(), "images", PLANS["vae-only"], 1, clock)
    assert set(clock.seconds) == set(STAGES) and clock.seconds["steps"] == 0.0
    assert all(clock.seconds[stage] > 0 for stage in ("encode", "decode", "score"))


def spy(monkeypatch, cls: type) -> list[str]:
    """Record every stage kernel ``cls`` runs (the class's own or inherited method, patched on ``cls``)."""
    calls: list[str] = []
    for name in KERNELS:
        if hasattr(cls, name):
            real = getattr(cls, name)
            monkeypatch.setattr(cls, name, lambda self, *a, _name=name, _real=real: calls.append(_name) or _real(self, *a))
    return calls


def images(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("draw_graphs", [True, False], ids=["draws-on-device", "draws-on-host"])
def test_onnxruntime_follows_the_sequence(tmp_path, monkeypatch, plan, draw_graphs):
    folder = make_folder(tmp_path / "model", draws=2, draw_graphs=draw_graphs)
    calls = spy(monkeypatch, SessionStages)
    backend = OnnxRuntimeBackend(folder)
    backend.run(images(2, S), PLANS[plan], folder.noise())
    assert calls == sequence_order(PLANS[plan], 2)


@pytest.mark.parametrize("plan", PLANS)
def test_tensorrt_follows_the_sequence_and_agrees_with_the_formulas(tmp_path, monkeypatch, plan):
    fake_tensorrt.install(monkeypatch)
    folder = make_folder(tmp_path / "model", draws=2)
    assert export_trt.main(["--model", str(folder.root)]) == 0
    manifest = Manifest.load(folder.root)
    calls = spy(monkeypatch, Slot)
    backend = TensorRTBackend(manifest, "cuda:0")
    try:
        out = backend.run(images(3, S), PLANS[plan], manifest.noise())
    finally:
        backend.close()
    assert calls == sequence_order(PLANS[plan], 2)
    assert out.anomaly_map.shape == (3, S, S) and np.isfinite(out.score).all()


def tiny_diad() -> DiAD:
    torch.manual_seed(0)
    return build_model(tiny()).eval()


@pytest.mark.parametrize("plan", PLANS)
def test_the_torch_model_and_the_torch_pipeline_follow_the_sequence_and_agree(monkeypatch, plan):
    model, steps, draws = tiny_diad(), PLANS[plan].steps, 2
    size = model.config.image_size
    model_calls = spy(monkeypatch, ModelStages)
    image = torch.from_numpy(images(2, size))
    out = model.reconstruct(image, steps, PLANS[plan].start_t, draws=draws, decode_vae_reconstruction=False)
    assert model_calls == sequence_order(PLANS[plan], draws, score=False)

    scorer = FeatureScorer("tf_efficientnet_lite0", weights=RANDOM, image_size=size).eval()
    pipeline_calls = spy(monkeypatch, PipelineStages)
    seed, latent = model.config.inference.noise_seed, tuple(out["latent"].shape[1:])
    backend = TorchBackend(model, scorer)
    result = backend.run(images(2, size), PLANS[plan], noise_draws(latent, seed, draws), keep_reconstruction=True)
    assert pipeline_calls == sequence_order(PLANS[plan], draws)
    np.testing.assert_allclose(result.reconstruction, out["reconstruction"].numpy(), rtol=1e-5, atol=1e-5)
    amap, score = scorer(image, out["reconstruction"])
    np.testing.assert_allclose(result.score, score.numpy(), rtol=1e-5, atol=1e-6)


def test_the_formula_reference_follows_the_sequence(monkeypatch):
    calls = spy(monkeypatch, plumbing.FormulaStages)
    plumbing.reference(images(2, plumbing.IMAGE), PLANS["ddim"], np.zeros((2, *plumbing.LATENT), np.float32))
    assert calls == sequence_order(PLANS["ddim"], 2)
