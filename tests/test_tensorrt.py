"""TensorRT export, the Polygraphy comparison and the TensorRT backend, on a tiny real ONNX model folder.

The first group runs anywhere (ONNX Runtime through Polygraphy, the engine contract, clear errors without
TensorRT); the last builds engines and runs them, and skips unless TensorRT and a CUDA GPU are present.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from helpers.model_folder import LATENT, MAX_BATCH, S, graph, make_folder
from onnx import helper

from export import compare
from export import tensorrt as export_trt
from runtime.backends import tensorrt as backend_trt
from runtime.backends import tensorrt_env as trt_env
from runtime.errors import BackendError, ModelFolderError
from runtime.manifest import COMPONENTS, Manifest, file_entry
from runtime.schedule import ddim_plan, q_sample

REPO = Path(__file__).resolve().parents[1]
NO_TENSORRT = "import sys; sys.modules['tensorrt'] = None; "  # makes `import tensorrt` fail in a subprocess


@pytest.fixture(params=["fp32", "fp16"])
def folder(request, tmp_path) -> Manifest:
    return make_folder(tmp_path / f"model-{request.param}", request.param)


@pytest.fixture
def folder32(tmp_path) -> Manifest:
    return make_folder(tmp_path / "model", "fp32")


def _run(code: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code]
    return subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------ runs without TensorRT
def test_profile_shapes(folder32):
    shapes = export_trt.profile_shapes(folder32, "denoise_step", 2, 4)
    assert shapes["x_t"] == ((1, 4, 4, 4), (2, 4, 4, 4), (4, 4, 4, 4))
    assert shapes["timestep"] == ((1,), (2,), (4,))
    assert set(shapes) == {"x_t", "hint", "timestep", "alpha_t", "alpha_prev"}
    assert export_trt.profile_shapes(folder32, "scorer", 1, 1)["image"] == ((1, 3, S, S),) * 3
    with pytest.raises(ValueError, match="opt batch"):
        export_trt.profile_shapes(folder32, "scorer", 5, 4)
    folder32.data["components"]["vae_encoder"]["inputs"]["image"] = ["B", 3, "H", "W"]
    with pytest.raises(ModelFolderError, match="vae_encoder.image"):
        export_trt.profile_shapes(folder32, "vae_encoder", 1, 4)


def test_engine_filename():
    assert trt_env.engine_filename("vae_encoder", "10.3.0", "8.7") == "vae_encoder.trt10.3.0.sm87.engine"
    assert trt_env.engine_filename("scorer", "11.1.0.3", "12.0") == "scorer.trt11.1.0.3.sm120.engine"


def test_check_engine_refuses_other_version_or_gpu(tmp_path):
    entry = {"file": "scorer.trt10.3.0.sm87.engine", "tensorrt": "10.3.0", "compute_capability": "8.7"}
    trt_env.check_engine(entry, "10.3.0", "8.7", tmp_path)
    with pytest.raises(ModelFolderError) as version:
        trt_env.check_engine(entry, "11.1.0", "8.7", tmp_path)
    message = str(version.value)
    assert "built with TensorRT 10.3.0" in message and "runs TensorRT 11.1.0" in message
    assert f"python -m export.tensorrt --model {tmp_path}" in message
    assert str(tmp_path / entry["file"]) in message
    with pytest.raises(ModelFolderError, match=r"compute capability 8\.7.*compute capability 9\.0 GPU"):
        trt_env.check_engine(entry, "10.3.0", "9.0", tmp_path)


def test_record_engine_in_manifest(folder32):
    path = folder32.root / trt_env.engine_filename("vae_encoder", "10.3.0", "8.7")
    path.write_bytes(b"not really an engine")
    shapes = export_trt.profile_shapes(folder32, "vae_encoder", 2, 4)
    export_trt.record_engine(folder32, "vae_encoder", path, "10.3.0", "8.7", shapes, optimization_level=3)

    reloaded = Manifest.load(folder32.root)
    entry = reloaded.engines["vae_encoder"]
    assert entry["file"] == path.name and entry["bytes"] == path.stat().st_size
    assert (entry["tensorrt"], entry["compute_capability"], entry["optimization_level"]) == ("10.3.0", "8.7", 3)
    assert entry["profile"] == {"image": {"min": [1, 3, S, S], "opt": [2, 3, S, S], "max": [4, 3, S, S]}}
    assert reloaded.check_file(entry) == path
    path.write_bytes(b"replaced")
    with pytest.raises(ModelFolderError, match="bytes"):
        reloaded.check_file(entry)


def test_compare_onnxrt_only(folder, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # deterministic: TensorRT "not installed" on any machine
    assert compare.main(["--model", str(folder.root)]) == 0
    out = capsys.readouterr().out
    assert "vae_encoder: pass  image (2, 3, 8, 8) -> latent (2, 4, 4, 4)" in out
    assert "scorer: pass  image (2, 3, 8, 8), reconstruction (2, 3, 8, 8) -> anomaly_map (2, 8, 8), score (2,)" in out
    assert "TensorRT comparison skipped: TensorRT's Python bindings are not installed" in out
    assert "5/5 components pass" in out


def test_compare_reports_a_failing_component(folder32, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    # the encoder graph replaced by one with 5x5 latents and its hash updated: only the comparison can tell
    conv = helper.make_node("Conv", ["image", "we"], ["latent"], strides=[2, 2], pads=[1, 1, 1, 1])
    weight = np.full((4, 3, 2, 2), 0.1, np.float32)
    encoder = graph([conv], {"image": ["B", 3, S, S]}, {"latent": ["B", 4, 5, 5]}, {"we": weight}, fp16=False)
    onnx.save(encoder, str(folder32.root / "vae_encoder.onnx"))
    folder32.data["components"]["vae_encoder"].update(file_entry(folder32.root, "vae_encoder.onnx"))
    folder32.save()
    assert compare.main(["--model", str(folder32.root), "--components", "vae_encoder,scorer", "--batch", "1"]) == 1
    out = capsys.readouterr().out
    assert "vae_encoder: FAIL" in out and "the manifest lists" in out and "expected (1, 4, 4, 4)" in out
    assert "scorer: pass" in out and "1/2 components pass; failed: ['vae_encoder']" in out


def test_random_inputs_use_the_schedule(folder32):
    feed = compare.random_inputs(folder32, "denoise_step", 4)
    plan = folder32.plan()
    np.testing.assert_array_equal(feed["timestep"], plan.timesteps[[0, 1, 2, 0]].astype(np.float32))
    np.testing.assert_allclose(feed["alpha_prev"], plan.alphas_prev[[0, 1, 2, 0]], rtol=1e-6)
    assert feed["x_t"].shape == (4, *LATENT) and all(v.dtype == np.float32 for v in feed.values())


def test_cli_says_what_to_install_without_tensorrt(folder32):
    code = NO_TENSORRT + (
        f"import runpy; sys.argv = ['export.tensorrt', '--model', {str(folder32.root)!r}]; "
        "runpy.run_module('export.tensorrt', run_name='__main__')"
    )
    result = _run(code)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: TensorRT's Python bindings are not installed")
    assert "pip install tensorrt" in result.stderr and "python3-libnvinfer" in result.stderr
    assert "Traceback" not in result.stderr


def test_backend_imports_without_tensorrt_or_cuda_python():
    code = NO_TENSORRT + "sys.modules['cuda'] = None; import runtime.backends.tensorrt, export.compare; print('ok')"
    result = _run(code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_backend_construction_says_what_is_missing(folder32, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(trt_env.TensorRTUnavailableError, match="pip install tensorrt"):
        backend_trt.TensorRTBackend(folder32)


def _cuda_devices() -> int:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return 0
    err, count = cudart.cudaGetDeviceCount()
    return count if err == cudart.cudaError_t.cudaSuccess else 0


def test_no_gpu_is_a_clear_error():
    if _cuda_devices():
        pytest.skip("a CUDA device is present")
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    with pytest.raises(trt_env.TensorRTUnavailableError, match="needs an NVIDIA GPU"):
        trt_env.compute_capability()


def test_cuda_call_names_the_failing_call():
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    with pytest.raises(RuntimeError, match=r"^cudaFree failed: cudaError"):
        trt_env.cuda_call("cudaFree", 12345)  # not a device pointer: fails with or without a GPU


def test_step_inputs_layout():
    plan = ddim_plan(3, 399)
    table = backend_trt.step_inputs(plan, 3)
    assert table.dtype == np.float32 and table.shape == (9, 64) and table.shape[1] * 4 % backend_trt.ALIGN == 0
    for i in range(3):
        np.testing.assert_array_equal(table[i, :3], plan.timesteps[i])
        np.testing.assert_allclose(table[3 + i, :3], plan.alphas[i], rtol=1e-6)
        np.testing.assert_allclose(table[6 + i, :3], plan.alphas_prev[i], rtol=1e-6)
    assert not table[:, 3:].any()
    assert backend_trt.step_inputs(plan, 65).shape == (9, 128)


def test_shared_buffers_need_equal_shapes():
    shapes = {"image": (-1, 3, S, S), "latent": (-1, *LATENT), "hint": (-1, *LATENT), "x_t": (-1, *LATENT),
              "x_prev": (-1, *LATENT), "reconstruction": (-1, 3, S, S), "anomaly_map": (-1, S, S), "score": (-1,)}
    engines = {name: SimpleNamespace(shapes=dict(shapes)) for name in COMPONENTS}
    backend_trt.check_shared_shapes(engines)
    engines["denoise_step"].shapes["hint"] = (-1, 8, 4, 4)
    with pytest.raises(ModelFolderError, match="denoise_step.hint"):
        backend_trt.check_shared_shapes(engines)


def test_device_index():
    assert backend_trt.device_index("cuda") == 0 and backend_trt.device_index("cuda:1") == 1
    with pytest.raises(BackendError, match="'cuda' or 'cuda:N'"):
        backend_trt.device_index("cpu")


# ------------------------------------------------------------------------------- needs TensorRT and a GPU
@pytest.fixture
def gpu():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt, or JetPack's "
                        "python3-libnvinfer)")
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    if not _cuda_devices():
        pytest.skip("no CUDA device (TensorRT needs an NVIDIA GPU and driver)")


def reference(manifest: Manifest, images: np.ndarray, plan, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline with ONNX Runtime on the CPU: anomaly maps and scores."""
    import onnxruntime as ort

    run = {c: ort.InferenceSession(str(manifest.path(c)), providers=["CPUExecutionProvider"]).run for c in COMPONENTS}
    batch = len(images)
    latent = run["vae_encoder"](None, {"image": images})[0]
    hint = run["hint_encoder"](None, {"image": images})[0]
    x = q_sample(latent, noise, plan.start_alpha)
    for t, a, a_prev in zip(plan.timesteps, plan.alphas, plan.alphas_prev):
        feed = {"x_t": x, "hint": hint, **{k: np.full(batch, v, np.float32) for k, v in
                                           (("timestep", t), ("alpha_t", a), ("alpha_prev", a_prev))}}
        x = run["denoise_step"](None, feed)[0]
    recon = run["vae_decoder"](None, {"latent": x})[0]
    return tuple(run["scorer"](["anomaly_map", "score"], {"image": images, "reconstruction": recon}))


def test_build_compare_and_run(gpu, folder, tmp_path, capsys):
    root, cache = str(folder.root), tmp_path / "timing.cache"
    assert export_trt.main(["--model", root, "--opt-batch", "2", "--timing-cache", str(cache)]) == 0
    assert cache.is_file()
    manifest = Manifest.load(root)
    import tensorrt as trt

    capability = trt_env.compute_capability()
    for name in COMPONENTS:
        entry = manifest.engines[name]
        assert entry["file"] == trt_env.engine_filename(name, trt.__version__, capability)
        manifest.check_file(entry)

    tolerance = "1e-2" if folder.precision == "fp16" else "1e-4"
    assert compare.main(["--model", root, "--atol", tolerance, "--rtol", tolerance]) == 0
    assert "TensorRT" in capsys.readouterr().out

    rng = np.random.default_rng(1)
    images = rng.standard_normal((MAX_BATCH + 1, 3, S, S)).astype(np.float32)  # two chunks
    noise = rng.standard_normal(LATENT).astype(np.float32)
    plan = manifest.plan()
    backend = backend_trt.TensorRTBackend(manifest)
    try:
        out = backend.run(images, plan, noise, keep_reconstruction=True)
        again = backend.run(images, plan, noise)  # replays the captured loops
    finally:
        backend.close()
    amap, score = reference(manifest, images, plan, noise)
    atol = 2e-2 if folder.precision == "fp16" else 1e-4
    np.testing.assert_allclose(out.anomaly_map, amap, atol=atol)
    np.testing.assert_allclose(out.score, score, atol=atol)
    assert out.reconstruction.shape == images.shape and again.reconstruction is None
    np.testing.assert_array_equal(again.anomaly_map, out.anomaly_map)
    assert set(out.seconds) == {"encode", "steps", "decode", "score"} and all(v > 0 for v in out.seconds.values())


def test_submit_collect_double_buffering(gpu, folder32):
    assert export_trt.main(["--model", str(folder32.root)]) == 0
    manifest = Manifest.load(folder32.root)
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((b, 3, S, S)).astype(np.float32) for b in (1, 2, 2, 3)]
    noise = rng.standard_normal((1, *LATENT)).astype(np.float32)
    plan = manifest.plan()
    backend = backend_trt.TensorRTBackend(manifest)
    try:
        outputs = []
        backend.submit(batches[0], plan, np.repeat(noise, 1, 0))
        for batch in batches[1:]:
            backend.submit(batch, plan, noise[0])
            with pytest.raises(RuntimeError, match="busy"):
                backend.submit(batch, plan, noise[0])
            outputs.append(backend.collect())
        outputs.append(backend.collect())
        assert backend.pending == 0
    finally:
        backend.close()
    for batch, out in zip(batches, outputs):
        np.testing.assert_allclose(out.score, reference(manifest, batch, plan, noise[0])[1], atol=1e-4)
