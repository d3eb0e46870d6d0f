"""The ONNX Runtime backend's execution providers and their options per device kind (issue 12.5: the TensorRT
provider got only a device id, so it rebuilt its engines at every start and for every new batch size, and allowed
FP16 kernels in FP32 folders) and its CPU session settings (issue 12: optimisation level, threads, arena, the
cache of optimised graphs), on the tiny real model folder of ``helpers.model_folder``.

ONNX Runtime here has the CPU provider only: a stand-in module records the providers each session is asked for
and opens it on the CPU."""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from helpers import fake_onnxruntime
from helpers.model_folder import LATENT, MAX_BATCH, S, make_folder

from export.draw_graphs import draw_parity
from runtime import Detector
from runtime.backends.base import BackendOutput
from runtime.backends.onnxruntime import (
    ENGINE_CACHE,
    OPTIMIZED_CACHE,
    OnnxRuntimeBackend,
    SessionSettings,
    physical_cores,
)
from runtime.schedule import ddim_plan, fixed_noise

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def asked(monkeypatch) -> dict[str, list]:
    """Per graph file name, the providers its session was opened with."""
    asked_for: dict[str, list] = {}

    def session(path, options, providers=None):
        asked_for[Path(path).name] = providers
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    ort = types.ModuleType("onnxruntime")
    ort.get_available_providers = lambda: ALL
    ort.SessionOptions, ort.OrtValue, ort.InferenceSession = onnxruntime.SessionOptions, onnxruntime.OrtValue, session
    ort.GraphOptimizationLevel, ort.__version__ = onnxruntime.GraphOptimizationLevel, onnxruntime.__version__
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    return asked_for


def _options(asked: dict[str, list], component: str) -> tuple[list[str], dict[str, dict]]:
    entries = asked[f"{component}.onnx"]
    names = [e[0] if isinstance(e, tuple) else e for e in entries]
    return names, {e[0]: e[1] for e in entries if isinstance(e, tuple)}


def test_tensorrt_provider_caches_engines_built_for_the_batch_range(asked, tmp_path):
    folder = make_folder(tmp_path / "model", "fp32")
    OnnxRuntimeBackend(folder, "cuda:1", "tensorrt").close()
    cache = folder.root / ENGINE_CACHE
    assert cache.is_dir()
    names, options = _options(asked, "denoise_step")
    assert names == ALL and options["CUDAExecutionProvider"] == {"device_id": 1}
    latent = "4x4x4"
    assert options["TensorrtExecutionProvider"] == {
        "device_id": 1,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": False,
        "trt_profile_min_shapes": f"x_t:1x{latent},hint:1x{latent},timestep:1,alpha_t:1,alpha_prev:1",
        "trt_profile_opt_shapes": f"x_t:1x{latent},hint:1x{latent},timestep:1,alpha_t:1,alpha_prev:1",
        "trt_profile_max_shapes": (f"x_t:{MAX_BATCH}x{latent},hint:{MAX_BATCH}x{latent},timestep:{MAX_BATCH},"
                                   f"alpha_t:{MAX_BATCH},alpha_prev:{MAX_BATCH}"),
    }
    scorer = _options(asked, "scorer")[1]["TensorrtExecutionProvider"]
    assert scorer["trt_profile_max_shapes"] == f"image:{MAX_BATCH}x3x{S}x{S},reconstruction:{MAX_BATCH}x3x{S}x{S}"


def test_fp16_kernels_only_for_an_fp16_folder_and_no_tensorrt_options_on_cuda(asked, tmp_path):
    OnnxRuntimeBackend(make_folder(tmp_path / "fp16", "fp16"), "cuda", "tensorrt").close()
    assert _options(asked, "vae_decoder")[1]["TensorrtExecutionProvider"]["trt_fp16_enable"] is True
    OnnxRuntimeBackend(make_folder(tmp_path / "fp32", "fp32"), "cuda:2").close()
    names, options = _options(asked, "vae_decoder")
    assert names == ALL[1:] and options == {"CUDAExecutionProvider": {"device_id": 2}}
    assert not (tmp_path / "fp32" / ENGINE_CACHE).exists()


def test_engine_cache_goes_to_the_user_cache_when_the_folder_cannot_hold_it(asked, tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "model", "fp32")
    (folder.root / ENGINE_CACHE).write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    OnnxRuntimeBackend(folder, "cuda", provider="tensorrt").close()
    path = _options(asked, "scorer")[1]["TensorrtExecutionProvider"]["trt_engine_cache_path"]
    assert path.startswith(str(tmp_path / "cache" / "diad-edge" / "ort-trt")) and Path(path).is_dir()


def _scores(backend: OnnxRuntimeBackend) -> BackendOutput:
    manifest = backend.manifest
    images = np.random.default_rng(0).standard_normal((2, 3, S, S), np.float32)
    try:
        return backend.run(images, manifest.plan(), fixed_noise(manifest.latent_shape, 0))
    finally:
        backend.close()


def test_session_settings_reach_onnx_runtime_and_keep_the_results(tmp_path):
    folder = make_folder(tmp_path / "model", "fp32")
    settings = SessionSettings(optimization="basic", threads=1, spinning=False, memory_arena=False,
                               memory_pattern=False)
    options = settings.options(onnxruntime)
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert (options.intra_op_num_threads, options.enable_cpu_mem_arena, options.enable_mem_pattern) == (1, False, False)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert SessionSettings().options(onnxruntime).intra_op_num_threads == physical_cores() <= os.cpu_count()
    default = _scores(OnnxRuntimeBackend(folder))
    other = _scores(OnnxRuntimeBackend(folder, settings=settings))
    np.testing.assert_allclose(other.score, default.score, rtol=1e-6)
    np.testing.assert_allclose(other.anomaly_map, default.anomaly_map, rtol=1e-6, atol=1e-7)
    assert len(default.step_seconds) == folder.steps and 0 < sum(default.step_seconds) <= default.seconds["steps"]


def test_optimized_cache_is_written_once_and_opened_without_optimising_again(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "model", "fp32")
    opened: list[tuple[str, object]] = []
    real = onnxruntime.InferenceSession

    def session(path, options, providers=None):
        opened.append((Path(path), options.graph_optimization_level))
        return real(path, options, providers=providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    settings = SessionSettings(optimized_cache=True)
    first = _scores(OnnxRuntimeBackend(folder, settings=settings))
    cache = folder.root / OPTIMIZED_CACHE
    graphs = sorted(cache.glob("*/graph.onnx"))
    assert len(graphs) == len(folder.components) == 7 and not list(cache.glob("*.partial"))
    assert {path.parent for path, _ in opened} == {folder.root}
    opened.clear()
    second = _scores(OnnxRuntimeBackend(folder, settings=settings))
    assert sorted(path for path, _ in opened) == graphs
    assert {level for _, level in opened} == {onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL}
    np.testing.assert_allclose(second.score, first.score, rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [({"optimization": "max"}, "graph optimisation 'max'"),
                                             ({"threads": 0}, "threads 0")])
def test_invalid_session_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SessionSettings(**kwargs)


def _vae_by_hand(manifest, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """encode -> decode -> score through the folder's own sessions: map, score, reconstruction."""
    run = {c: onnxruntime.InferenceSession(str(manifest.path(c)), providers=["CPUExecutionProvider"]).run
           for c in ("vae_encoder", "vae_decoder", "scorer")}
    recon = run["vae_decoder"](None, {"latent": run["vae_encoder"](None, {"image": images})[0]})[0]
    amap, score = run["scorer"](["anomaly_map", "score"], {"image": images, "reconstruction": recon})
    return amap, score, recon


def test_the_vae_only_plan_decodes_the_clean_latent_and_runs_no_diffusion(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "model", draws=2)
    ran: list[str] = []
    real = OnnxRuntimeBackend.run_component

    def counting(self, name, inputs, outputs):
        ran.append(name)
        return real(self, name, inputs, outputs)

    monkeypatch.setattr(OnnxRuntimeBackend, "run_component", counting)
    frames = [np.random.default_rng(k).integers(0, 256, (12, 10, 3), np.uint8) for k in range(3)]
    with Detector(folder.root, steps=0) as detector:
        batch = detector.preprocess(frames)
        out = detector.run(batch, keep_reconstruction=True)
        assert ran == ["vae_encoder", "vae_decoder", "scorer"]  # no hint_encoder, no denoise_step
        amap, score, recon = _vae_by_hand(folder, batch)
        np.testing.assert_allclose(out.score, score, rtol=1e-6)
        np.testing.assert_allclose(out.anomaly_map, amap, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out.reconstruction, recon, rtol=1e-6, atol=1e-7)
        assert out.seconds["steps"] == 0.0 and out.step_seconds == []
        nan_noise = np.full((2, *LATENT), np.nan, np.float32)  # no noise is drawn: NaN noise changes nothing
        np.testing.assert_array_equal(detector.backend.run(batch, detector.plan, nan_noise).score, out.score)
        assert detector.summary["steps"] == 0
    ran.clear()
    with Detector(folder.root) as ddim:  # the folder's default, 3 DDIM steps, still diffuses
        diffused = ddim.run(batch).score
    assert ran.count("denoise_step") == 3 and ran.count("hint_encoder") == 1
    assert not np.allclose(diffused, out.score, atol=1e-4)

    folder.data["schedule"] = ddim_plan(0).to_dict()  # the VAE-only plan as the folder's default
    folder.save()
    with Detector(folder.root) as default, Detector(folder.root, steps=3, start_t=399) as back:
        np.testing.assert_array_equal(default.run(batch).score, out.score)
        np.testing.assert_allclose(back.run(batch).score, diffused, rtol=1e-6)


def test_on_a_gpu_only_the_images_go_up_and_the_map_and_score_come_down(monkeypatch, tmp_path):
    """Issue 22.4: with the draw graphs the noising and the mean over draws stay on the device; the draws and the
    plan's numbers go up once per batch size. A folder exported before them still runs (noised on the host, which
    costs the round trips counted here), and every path gives the CPU's results."""
    transfers = fake_onnxruntime.install(monkeypatch)
    new, old = make_folder(tmp_path / "new", draws=2), make_folder(tmp_path / "old", draws=2, draw_graphs=False)
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((n, 3, S, S), np.float32) for n in (3, 3, MAX_BATCH, 3)]
    plan, noise = new.plan(), new.noise()
    with Detector(new.root) as cpu, Detector(old.root) as host_path:
        expected = [cpu.run(batch).score for batch in images]
        for batch, score in zip(images, expected):  # on the CPU the draw graphs give the host path's results
            np.testing.assert_allclose(host_path.run(batch).score, score, rtol=1e-6)
    assert (transfers.up, transfers.down) == (0, 0)

    gpu, gpu_old = OnnxRuntimeBackend(new, "cuda"), OnnxRuntimeBackend(old, "cuda")
    try:
        counts = []
        for batch in images:
            transfers.reset()
            out = gpu.run(batch, plan, noise)
            counts.append((transfers.up, transfers.down))
            np.testing.assert_allclose(out.score, expected[len(counts) - 1], rtol=1e-6)
        # the first batch of a size also uploads the draws, the noising coefficients and the 3 steps' 3 inputs
        assert counts == [(1 + 1 + 2 + 9, 2), (1, 2), (1 + 1 + 2 + 9, 2), (1, 2)]
        transfers.reset()
        out = gpu.run(images[0], plan, noise, keep_reconstruction=True)
        assert (transfers.up, transfers.down) == (1, 3) and out.reconstruction.shape == images[0].shape
        transfers.reset()
        gpu.run(images[0], plan, -noise)  # other draws: uploaded once more
        assert (transfers.up, transfers.down) == (2, 2)

        gpu_old.run(images[0], plan, noise)
        transfers.reset()
        np.testing.assert_allclose(gpu_old.run(images[0], plan, noise).score, expected[0], rtol=1e-6)
        # image, the hint per draw, the noised latents and their mean up; latent, hint, last step, map, score down
        assert (transfers.up, transfers.down) == (4, 5)
        transfers.reset()
        gpu_old.run(images[0], ddim_plan(0), noise)  # the VAE-only plan noises nothing: its latent stays on the device
        assert (transfers.up, transfers.down) == (1, 2)
    finally:
        gpu.close()
        gpu_old.close()


@pytest.mark.parametrize("draws", [1, 2, 3])
def test_the_draw_graphs_compute_the_schedules_numbers_exactly(tmp_path, draws):
    """noise_latents and mean_of_draws against runtime.schedule's numpy, the one home of that math."""
    errors = draw_parity(make_folder(tmp_path / "model", draws=draws), batch=4)
    assert set(errors) == {"noise_latents.x_t", "noise_latents.hints", "mean_of_draws"}
    assert all(value > 0 and error == 0.0 for error, value in errors.values()), errors
