"""TensorRT export, the Polygraphy comparison and the TensorRT backend, on a tiny real ONNX model folder.

The first group runs anywhere (ONNX Runtime through Polygraphy, the engine contract, clear errors without
TensorRT); the second runs our export and backend logic on test doubles of TensorRT and cuda-python
(:mod:`helpers.fake_tensorrt`: they test our logic, not TensorRT); the last builds real engines and runs them, and
skips unless TensorRT and a CUDA GPU are present.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import onnx
import pytest
from helpers import fake_tensorrt
from helpers.model_folder import LATENT, MAX_BATCH, S, graph, make_folder
from onnx import helper

from export import compare
from export import tensorrt as export_trt
from runtime.backends import tensorrt as backend_trt
from runtime.backends import tensorrt_env as trt_env
from runtime.cli import run_cli
from runtime.errors import BackendError, ModelFolderError
from runtime.component_io import COMPONENT_IO, COMPONENTS, DRAW_COMPONENTS, expected_tensors
from runtime.manifest import MANIFEST, Manifest, file_entry
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


def test_find_engine_names_the_targets_built_and_the_command(folder32):
    entry = {"file": "scorer.trt10.3.0.sm87.engine", "bytes": 1, "sha256": "0" * 64, "tensorrt": "10.3.0",
             "compute_capability": "8.7"}
    folder32.set_engine("scorer", entry)
    assert trt_env.find_engine(folder32, "scorer", "10.3.0", "8.7", 0) is entry
    with pytest.raises(ModelFolderError) as other:
        trt_env.find_engine(folder32, "scorer", "11.1.0", "8.7", 1)
    message = str(other.value)
    assert "no scorer engine for TensorRT 11.1.0 on compute capability 8.7 (CUDA device 1)" in message
    assert "scorer.trt10.3.0.sm87.engine (TensorRT 10.3.0, compute capability 8.7)" in message
    assert message.endswith(f"python -m export.tensorrt --model {folder32.root} --device cuda:1")
    with pytest.raises(ModelFolderError, match="no vae_encoder engine .* it has none. Build them here"):
        trt_env.find_engine(folder32, "vae_encoder", "10.3.0", "8.7", 0)


def test_record_engine_in_manifest(folder32):
    path = folder32.root / trt_env.engine_filename("vae_encoder", "10.3.0", "8.7")
    path.write_bytes(b"not really an engine")
    shapes = export_trt.profile_shapes(folder32, "vae_encoder", 2, 4)
    export_trt.record_engine(folder32, "vae_encoder", path, "10.3.0", "8.7", shapes, optimization_level=3)

    reloaded = Manifest.load(folder32.root)
    entry = reloaded.engine("vae_encoder", "10.3.0", "8.7")
    assert entry["file"] == path.name and entry["bytes"] == path.stat().st_size
    assert (entry["tensorrt"], entry["compute_capability"], entry["optimization_level"]) == ("10.3.0", "8.7", 3)
    assert entry["profile"] == {"image": {"min": [1, 3, S, S], "opt": [2, 3, S, S], "max": [4, 3, S, S]}}
    assert reloaded.check_file(entry) == path
    path.write_bytes(b"replaced")
    with pytest.raises(ModelFolderError, match="bytes"):
        reloaded.check_file(entry)


def test_engines_are_kept_per_target(folder32):
    """Issue 12.3: one engine per component, so building for a second GPU overwrote the entry and orphaned a file."""
    def record(version: str, capability: str, content: bytes) -> None:
        path = folder32.root / trt_env.engine_filename("scorer", version, capability)
        path.write_bytes(content)
        export_trt.record_engine(folder32, "scorer", path, version, capability,
                                 export_trt.profile_shapes(folder32, "scorer", 1, 4))

    record("10.3.0", "8.7", b"orin")
    record("11.1.0", "9.0", b"h100")
    record("10.3.0", "8.7", b"orin, rebuilt")  # the same target: replaced
    reloaded = Manifest.load(folder32.root)
    targets = [(e["tensorrt"], e["compute_capability"]) for e in reloaded.engines["scorer"]]
    assert sorted(targets) == [("10.3.0", "8.7"), ("11.1.0", "9.0")]
    assert reloaded.check_file(reloaded.engine("scorer", "10.3.0", "8.7")).read_bytes() == b"orin, rebuilt"
    assert reloaded.check_file(reloaded.engine("scorer", "11.1.0", "9.0")).read_bytes() == b"h100"

    twin = {**reloaded.engine("scorer", "11.1.0", "9.0"), "file": "scorer.copy.engine"}
    reloaded.data["engines"]["scorer"].append(twin)
    with pytest.raises(ModelFolderError, match="engines.scorer: two engines share one TensorRT version and compute"):
        reloaded.save()


def test_a_manifest_with_one_engine_object_per_component_still_loads(folder32):
    """Folders written before engines were kept per target hold an object, not a list."""
    path = folder32.root / "scorer.trt10.3.0.sm87.engine"
    path.write_bytes(b"engine")
    entry = {**file_entry(folder32.root, path.name), "tensorrt": "10.3.0", "compute_capability": "8.7"}
    data = json.loads((folder32.root / MANIFEST).read_text())
    data["engines"] = {"scorer": entry}
    (folder32.root / MANIFEST).write_text(json.dumps(data))
    assert Manifest.load(folder32.root).engine("scorer", "10.3.0", "8.7") == entry


def test_compare_onnxrt_only(folder, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # deterministic: TensorRT "not installed" on any machine
    assert compare.main(["--model", str(folder.root)]) == 0
    out = capsys.readouterr().out
    assert "vae_encoder: pass  image (2, 3, 8, 8) -> latent (2, 4, 4, 4)" in out
    assert "scorer: pass  image (2, 3, 8, 8), reconstruction (2, 3, 8, 8) -> anomaly_map (2, 8, 8), score (2,)" in out
    assert "TensorRT comparison skipped: TensorRT's Python bindings are not installed" in out
    assert "noise_latents: pass  latent (2, 4, 4, 4), hint (2, 4, 4, 4), noise (2, 1, 4, 4, 4), signal (2,), spread " \
           "(2,) -> x_t (2, 1, 4, 4, 4), hints (2, 1, 4, 4, 4)" in out
    assert "7/7 components pass" in out


def test_compare_reports_a_failing_component(folder32, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    # the encoder graph replaced by one with 5x5 latents and its hash updated: only the comparison can tell
    conv = helper.make_node("Conv", ["image", "we"], ["latent"], strides=[2, 2], pads=[1, 1, 1, 1])
    weight = np.full((4, 3, 2, 2), 0.1, np.float32)
    encoder = graph([conv], {"image": ["B", 3, S, S]}, {"latent": ["B", 4, 5, 5]}, {"we": weight}, fp16=False)
    onnx.save(encoder, str(folder32.root / "vae_encoder.onnx"))
    folder32.data["components"]["vae_encoder"].update(file_entry(folder32.root, "vae_encoder.onnx"))
    folder32.save()
    assert compare.main(["--model", str(folder32.root), "--components", "vae_encoder,scorer", "--batch-size", "1"]) == 1
    out = capsys.readouterr().out
    assert "vae_encoder: FAIL" in out and "the manifest lists" in out and "expected (1, 4, 4, 4)" in out
    assert "scorer: pass" in out and "1/2 components pass; failed: ['vae_encoder']" in out


def test_random_inputs_use_the_schedule(folder32):
    feed = compare.random_inputs(folder32, "denoise_step", 4)
    plan = folder32.plan()
    np.testing.assert_array_equal(feed["timestep"], plan.timesteps[[0, 1, 2, 0]].astype(np.float32))
    np.testing.assert_allclose(feed["alpha_prev"], plan.alphas_prev[[0, 1, 2, 0]], rtol=1e-6)
    assert feed["x_t"].shape == (4, *LATENT) and all(v.dtype == np.float32 for v in feed.values())


def test_random_inputs_and_compare_on_a_vae_only_folder(folder32, monkeypatch, capsys):
    folder32.data["schedule"].update(ddim_plan(0).to_dict())  # the default plan VAE-only (`export --steps 0`)
    folder32.save()
    manifest = Manifest.load(folder32.root)
    assert manifest.plan().vae_only
    plan = manifest.step_plan()  # the default DDIM plan from t=999 feeds denoise_step
    np.testing.assert_array_equal(plan.timesteps, ddim_plan().timesteps)
    feed = compare.random_inputs(manifest, "denoise_step", 3)
    np.testing.assert_array_equal(feed["timestep"], plan.timesteps[:3].astype(np.float32))
    np.testing.assert_allclose(feed["alpha_t"], plan.alphas[:3], rtol=1e-6)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert compare.main(["--model", str(folder32.root), "--components", "denoise_step,vae_decoder"]) == 0
    assert "2/2 components pass" in capsys.readouterr().out


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


def test_cudart_falls_back_to_the_older_cuda_python_layout(monkeypatch):
    """Issue 12.6: cuda-python before 12.6 (JetPack 6) has ``cuda.cudart`` only; it was reported "not installed"."""
    old = types.ModuleType("cuda.cudart")
    cuda = types.ModuleType("cuda")
    cuda.cudart = old
    for name, module in (("cuda", cuda), ("cuda.bindings", None), ("cuda.bindings.runtime", None),
                         ("cuda.cudart", old)):
        monkeypatch.setitem(sys.modules, name, module)
    assert trt_env.import_cudart() is old

    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    with pytest.raises(trt_env.TensorRTUnavailableError) as missing:
        trt_env.import_cudart()
    message = str(missing.value)
    assert "cuda.bindings.runtime: " in message and "cuda.cudart: " in message and "pip install cuda-python" in message
    installed = [d for d in ("cuda-python", "cuda-bindings") if _distribution(d)]
    assert ("is installed but its runtime module does not import" in message) == bool(installed)
    assert ("cuda-python is not installed" in message) == (not installed)


def _distribution(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


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
    assert table.dtype == np.float32 and table.shape == (11, 64) and table.shape[1] * 4 % backend_trt.ALIGN == 0
    for i in range(3):
        np.testing.assert_array_equal(table[i, :3], plan.timesteps[i])
        np.testing.assert_allclose(table[3 + i, :3], plan.alphas[i], rtol=1e-6)
        np.testing.assert_allclose(table[6 + i, :3], plan.alphas_prev[i], rtol=1e-6)
    signal, spread = (np.float32(v) for v in plan.noise_scales)  # q_sample's coefficients, rounded alike
    assert (table[9, :3] == signal).all() and (table[10, :3] == spread).all()
    assert not table[:, 3:].any()
    assert backend_trt.step_inputs(plan, 65).shape == (11, 128)


def test_shared_buffers_need_equal_shapes():
    kinds = {"image": (3, S, S), "latent": LATENT, "hint": LATENT, "map": (S, S), "vector": (), "step": (),
             "draws": (2, *LATENT), "hint_draws": (2, *LATENT)}
    engines = {name: SimpleNamespace(shapes={t: (-1, *kinds[k]) for t, k in io.tensors.items()})
               for name, io in COMPONENT_IO.items()}
    backend_trt.check_shared_shapes(engines)
    engines["mean_of_draws"].shapes["samples"] = (-1, 3, *LATENT)  # three draws where noise_latents makes two
    with pytest.raises(ModelFolderError, match="noise_latents.x_t.*mean_of_draws.samples"):
        backend_trt.check_shared_shapes(engines)
    engines["mean_of_draws"].shapes["samples"] = (-1, 2, *LATENT)
    engines["denoise_step"].shapes["hint"] = (-1, 8, 4, 4)
    with pytest.raises(ModelFolderError, match="denoise_step.hint"):
        backend_trt.check_shared_shapes(engines)
    engines["denoise_step"].shapes["hint"] = (-1, *LATENT)
    engines["vae_decoder"].shapes["image"] = (-1, 3, S // 2, S // 2)  # would not fit the scorer's reconstruction
    with pytest.raises(ModelFolderError, match="vae_decoder.image"):
        backend_trt.check_shared_shapes(engines)


def test_slot_buffers_follow_the_component_table():
    assert backend_trt.BINDINGS[("vae_decoder", "image")] == "reconstruction"
    assert backend_trt.BINDINGS[("scorer", "reconstruction")] == "reconstruction"
    assert ("vae_decoder", "latent") not in backend_trt.BINDINGS  # bound to the sample per batch
    assert backend_trt.BINDINGS[("noise_latents", "x_t")] == "x0"  # the loop's first latents
    assert backend_trt.BINDINGS[("noise_latents", "hints")] == "hints"  # the loop's hint
    assert ("mean_of_draws", "samples") not in backend_trt.BINDINGS  # bound to the loop's output per batch
    assert (backend_trt.X_T, backend_trt.HINT, backend_trt.X_PREV) == ("x_t", "hint", "x_prev")


def test_tensorrt_needs_a_cuda_device(folder32):
    with pytest.raises(BackendError, match="device 'cpu': TensorRT runs on a CUDA device, cuda or cuda:N"):
        backend_trt.TensorRTBackend(folder32, "cpu")


# ------------------------------------------------------------- our logic on test doubles (helpers.fake_tensorrt)
@pytest.fixture
def fake(monkeypatch):
    """Fake ``tensorrt`` and ``cuda.bindings.runtime``: two GPUs, compute capabilities 8.6 and 8.9."""
    return fake_tensorrt.install(monkeypatch)


def build(manifest: Manifest, *args: str) -> Manifest:
    assert export_trt.main(["--model", str(manifest.root), *args]) == 0
    return Manifest.load(manifest.root)


def batches(*sizes: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, 3, S, S)).astype(np.float32) for n in sizes]


def assert_like_onnxruntime(manifest: Manifest, out, images: np.ndarray, plan, noise: np.ndarray) -> None:
    amap, score = reference(manifest, images, plan, noise)
    np.testing.assert_allclose(out.anomaly_map, amap, atol=1e-5)
    np.testing.assert_allclose(out.score, score, atol=1e-5)


def test_engines_are_built_on_the_device_asked_for(fake, folder32, capsys):
    """Issue 12.3: ``--device 1`` only changed the label; the engine was built on GPU 0 and did not load on 1."""
    _, cudart = fake
    manifest = build(folder32, "--device", "cuda:1")
    assert cudart.current == 1
    for name in COMPONENTS:
        entry = manifest.engine(name, "10.3.0", "8.9")
        assert entry["file"] == f"{name}.trt10.3.0.sm89.engine"
        header = manifest.check_file(entry).read_bytes().partition(fake_tensorrt.HEADER_END)[0]
        assert json.loads(header)["capability"] == "8.9"  # built on device 1 itself
    manifest = build(manifest, "--device", "cuda")
    assert all(len(manifest.engines[name]) == 2 for name in COMPONENTS)

    images, noise, plan = batches(3)[0], np.zeros(LATENT, np.float32), manifest.plan()
    for device in ("cuda:0", "cuda:1"):
        backend = backend_trt.TensorRTBackend(manifest, device)
        try:
            assert_like_onnxruntime(manifest, backend.run(images, plan, noise), images, plan, noise)
        finally:
            backend.close()
    assert cudart.leaks() == {}

    with pytest.raises(SystemExit) as exit_:
        run_cli(export_trt.main, ["--model", str(manifest.root), "--device", "cuda:2"])
    assert exit_.value.code == 2
    assert "error: CUDA device 2 does not exist: this machine has 2 (0 to 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # the old spelling, a bare number, is refused with the new one
        run_cli(export_trt.main, ["--model", str(manifest.root), "--device", "1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "error: device '1': expected cpu, cuda or cuda:N (cuda:1 for" in err
    with pytest.raises(trt_env.TensorRTUnavailableError, match="CUDA device 5 does not exist"):
        backend_trt.TensorRTBackend(manifest, "cuda:5")


def test_bad_engines_are_refused_with_what_to_run(fake, folder32):
    trt, cudart = fake
    manifest = build(folder32, "--device", "cuda:0",
                     "--components", "vae_encoder,hint_encoder,denoise_step,vae_decoder")
    rebuild = f"python -m export.tensorrt --model {folder32.root} --device cuda:0"
    with pytest.raises(ModelFolderError, match=r"no scorer engine for TensorRT 10.3.0 .* it has none"):
        backend_trt.TensorRTBackend(manifest, "cuda:0")
    manifest = build(manifest, "--device", "cuda:0", "--components", "scorer")
    with pytest.raises(ModelFolderError, match=r"no vae_encoder engine .* compute capability 8\.9 \(CUDA device 1\)"):
        backend_trt.TensorRTBackend(manifest, "cuda:1")  # built for 8.6 only
    trt.__version__ = "11.1.0"
    with pytest.raises(ModelFolderError) as version:
        backend_trt.TensorRTBackend(manifest, "cuda:0")
    assert "vae_encoder.trt10.3.0.sm86.engine (TensorRT 10.3.0, compute capability 8.6)" in str(version.value)
    assert str(version.value).endswith(rebuild)
    trt.__version__ = "10.3.0"

    # an engine built on another GPU behind this GPU's name (what --device used to write): TensorRT refuses it
    entry = manifest.engine("scorer", "10.3.0", "8.6")
    onnx_bytes = manifest.path("scorer").read_bytes()
    profile = {name: [list(shape) for shape in shapes] for name, shapes in
               export_trt.profile_shapes(manifest, "scorer", 1, MAX_BATCH).items()}
    path = manifest.check_file(entry)
    path.write_bytes(fake_tensorrt.engine_bytes("8.9", profile, onnx_bytes))
    with pytest.raises(ModelFolderError, match=f"{path}: TensorRT could not deserialize .*; rebuild it: {rebuild}"):
        backend_trt.TensorRTBackend(manifest, "cuda:0", verify=False)
    # a profile that does not start at batch 1
    narrow = {name: [[2, *lo[1:]], [2, *lo[1:]], hi] for name, (lo, _, hi) in profile.items()}
    path.write_bytes(fake_tensorrt.engine_bytes("8.6", narrow, onnx_bytes))
    with pytest.raises(ModelFolderError, match=f"runs batches 2 to {MAX_BATCH}; the runtime needs every batch from 1"):
        backend_trt.TensorRTBackend(manifest, "cuda:0", verify=False)
    path.unlink()
    with pytest.raises(ModelFolderError, match="listed in .* but missing"):
        backend_trt.TensorRTBackend(manifest, "cuda:0")
    assert cudart.leaks() == {}


@pytest.fixture
def engines(fake, folder32) -> Manifest:
    return build(folder32, "--device", "cuda:0")


def test_graphs_replay_after_batch_size_changes(fake, engines):
    """Issue 12.1: one denoise_step context per slot, shaped only at capture: a graph captured at batch 4, replayed
    after a batch-2 capture on the same slot, ran against batch-2 context state (wrong results, silently)."""
    _, cudart = fake
    noise, plans = np.zeros(LATENT, np.float32), [engines.plan(), ddim_plan(2, 399)]
    backend = backend_trt.TensorRTBackend(engines, "cuda:0")
    sizes = (4, 2, 2, 4, 4, 2, 3, 3)  # slot 0 runs 4, 2, 4, 3 and slot 1 runs 2, 4, 2, 3
    try:
        for plan in plans:
            for images in batches(*sizes):
                assert_like_onnxruntime(engines, backend.run(images, plan, noise), images, plan, noise)
            for images in batches(*sizes, seed=1):  # the same again: replays only
                assert_like_onnxruntime(engines, backend.run(images, plan, noise), images, plan, noise)
    finally:
        backend.close()
    assert cudart.stale_replays == 0
    assert cudart.instantiated == 2 * 6  # one graph per (slot, batch, plan): {4, 2, 3} on each slot, per plan
    assert cudart.launches == 2 * (2 * len(sizes) - 6)
    assert cudart.leaks() == {}


def test_capture_failure_falls_back_to_eager_and_says_why(fake, engines, caplog):
    """Issue 12.1: no eager fallback, and the ``finally: cudaStreamEndCapture`` raised its own error instead of the
    enqueue's."""
    _, cudart = fake
    noise, plan = np.zeros(LATENT, np.float32), engines.plan()
    backend = backend_trt.TensorRTBackend(engines, "cuda:0")
    caplog.set_level(logging.WARNING, "runtime.tensorrt")
    try:
        cudart.fail_capture = True
        for images in batches(2, 2, 2, 2):
            assert_like_onnxruntime(engines, backend.run(images, plan, noise), images, plan, noise)
        failures = [r.getMessage() for r in caplog.records]
        assert len(failures) == 2  # once per slot's loop, which stays eager: no capture is tried again
        assert all("CUDA graph capture failed (denoise_step: execute_async_v3 failed" in m and "eagerly" in m
                   for m in failures)
        cudart.fail_capture, cudart.fail_instantiate = False, True
        caplog.clear()
        images = batches(3)[0]
        assert_like_onnxruntime(engines, backend.run(images, plan, noise), images, plan, noise)
        assert "cudaGraphInstantiate failed: cudaErrorInvalidValue" in caplog.text
        assert all(stream.capture is None for stream in cudart.streams.values())  # no stream left capturing
        assert cudart.instantiated == cudart.launches == 0
    finally:
        backend.close()
    assert cudart.leaks() == {}


def test_slots_take_turns_and_unused_loops_are_freed(fake, engines):
    _, cudart = fake
    noise, plan = np.zeros(LATENT, np.float32), engines.plan()
    backend = backend_trt.TensorRTBackend(engines, "cuda:0")
    try:
        streams = [slot.handle for slot in backend._slots]
        first, second, third = batches(1, 2, 3)
        backend.submit(first, plan, noise)
        backend.submit(second, plan, noise)
        assert all(cudart.streams[handle].work > 0 for handle in streams) and backend.pending == 2
        with pytest.raises(RuntimeError, match="busy"):
            backend.submit(third, plan, noise)
        assert_like_onnxruntime(engines, backend.collect(), first, plan, noise)
        backend.submit(third, plan, noise)
        assert_like_onnxruntime(engines, backend.collect(), second, plan, noise)
        assert_like_onnxruntime(engines, backend.collect(), third, plan, noise)

        allocated, loops = len(cudart.device_memory), sum(len(slot.loops) for slot in backend._slots)
        for steps in range(1, 2 * backend_trt.MAX_LOOPS + 5):  # more plans than both slots keep
            other = ddim_plan(steps, 999)
            assert_like_onnxruntime(engines, backend.run(first, other, noise), first, other, noise)
        assert all(len(slot.loops) == backend_trt.MAX_LOOPS for slot in backend._slots)
        assert len(cudart.executables) == 2 * backend_trt.MAX_LOOPS
        assert len(cudart.device_memory) - allocated == 2 * backend_trt.MAX_LOOPS - loops  # a step table per loop
    finally:
        backend.close()
    assert cudart.leaks() == {}


def test_noise_draws_run_as_one_batch_and_average_like_separate_runs(fake, tmp_path):
    """Two antithetic draws per image: the denoiser's engine is built for every draw of the largest batch, each slot
    denoises the draws in one batch (noised, hints repeated and averaged on the device by the draw graphs), and the
    mean over draws matches running each draw on its own (``reference``); ONNX Runtime agrees. Other than the
    folder's draws are refused: the draw graphs are built for its K."""
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    _, cudart = fake
    manifest = build(make_folder(tmp_path / "model", draws=2), "--device", "cuda:0")
    step = manifest.engine("denoise_step", "10.3.0", "8.6")
    assert step["profile"]["x_t"]["max"][0] == 2 * MAX_BATCH and step["profile"]["x_t"]["opt"][0] == 2
    noise, plan = manifest.noise(), manifest.plan()
    assert noise.shape == (2, *LATENT) and np.array_equal(noise[1], -noise[0])
    backend = backend_trt.TensorRTBackend(manifest, "cuda:0")
    ort_backend = OnnxRuntimeBackend(manifest)
    try:
        assert backend.max_batch == MAX_BATCH
        for images in batches(MAX_BATCH, 1, 3, MAX_BATCH):
            out = backend.run(images, plan, noise)
            assert_like_onnxruntime(manifest, out, images, plan, noise)
            assert_like_onnxruntime(manifest, ort_backend.run(images, plan, noise), images, plan, noise)
            single = reference(manifest, images, plan, noise[0])[1]
            assert not np.allclose(out.score, single, atol=1e-4)  # the second draw changed the result
        for other in (np.stack([noise[0]] * 3), noise[0], noise[:1]):
            with pytest.raises(ValueError, match=r"expected the model folder's 2 draw\(s\), \(2, \*\(4, 4, 4\)\)$"):
                backend.submit(images, plan, other)
    finally:
        backend.close()
        ort_backend.close()
    assert cudart.stale_replays == 0
    assert cudart.leaks() == {}


H2D, D2H = "cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"


def test_a_batch_moves_only_its_images_up_and_its_map_and_score_down(fake, tmp_path):
    """Issue 22.4: the latents went down to be noised on the host and, with several draws, down and up again around
    a mid-batch synchronisation to be averaged. Now per batch the images go up, the map and score (and the
    reconstruction when asked) come down and the host waits once, in collect(); the draws go up once per slot, the
    plan's numbers once per loop."""
    _, cudart = fake
    manifest = build(make_folder(tmp_path / "model", draws=2), "--device", "cuda:0")
    noise, plan = manifest.noise(), manifest.plan()
    backend = backend_trt.TensorRTBackend(manifest, "cuda:0")
    try:
        first, second = batches(3, 3)
        backend.submit(first, plan, noise)
        backend.submit(second, plan, noise)  # the other slot
        assert dict(cudart.syncs) == {}  # nothing waited for while queueing
        assert dict(cudart.copies) == {H2D: 2 * 3, D2H: 2 * 2}  # per slot: images, draws, the loop's plan numbers
        for images in (first, second):
            assert_like_onnxruntime(manifest, backend.collect(), images, plan, noise)
        assert dict(cudart.syncs) == {"cudaEventSynchronize": 2}

        def per_batch(sizes: tuple[int, ...], noise: np.ndarray, keep: bool = False) -> dict[str, int]:
            cudart.copies.clear()
            cudart.syncs.clear()
            for images in batches(*sizes, seed=len(sizes)):
                out = backend.run(images, plan, noise, keep_reconstruction=keep)
                assert_like_onnxruntime(manifest, out, images, plan, noise)
                assert (out.reconstruction is not None) == keep
            assert dict(cudart.syncs) == {"cudaEventSynchronize": len(sizes)}
            return dict(cudart.copies)

        assert per_batch((3, 3, 3, 3), noise) == {H2D: 4, D2H: 2 * 4}
        assert per_batch((3, 3), noise, keep=True) == {H2D: 2, D2H: 3 * 2}
        assert per_batch((2, 2, 2), noise) == {H2D: 3 + 2, D2H: 2 * 3}  # a new batch size: a loop per slot
        assert per_batch((2, 2, 2), noise[::-1]) == {H2D: 3 + 2, D2H: 2 * 3}  # new draws: once per slot
        assert per_batch((2, 2, 2), noise[::-1]) == {H2D: 3, D2H: 2 * 3}
        cudart.copies.clear()
        images = batches(3)[0]
        assert_like_onnxruntime(manifest, backend.run(images, ddim_plan(0), noise), images, ddim_plan(0), noise)
        assert dict(cudart.copies) == {H2D: 1, D2H: 2}
    finally:
        backend.close()
    assert cudart.leaks() == {}


def test_draw_engines_built_for_other_draws_are_refused(fake, tmp_path):
    """The slots' buffers hold the manifest's K draws per image: engines of draw graphs for another K would write
    past them."""
    from export.draw_graphs import write_draw_graphs

    _, cudart = fake
    manifest = build(make_folder(tmp_path / "model", draws=2), "--device", "cuda:0")
    three = tmp_path / "three"
    three.mkdir()
    tensors = expected_tensors(S, LATENT, LATENT, 3)
    write_draw_graphs(three, S, LATENT, LATENT, 3)
    for name in DRAW_COMPONENTS:
        profile = {t: [[b, *dims[1:]] for b in (1, 1, MAX_BATCH)] for t, dims in tensors[name]["inputs"].items()}
        path = manifest.check_file(manifest.engine(name, "10.3.0", "8.6"))
        path.write_bytes(fake_tensorrt.engine_bytes("8.6", profile, (three / f"{name}.onnx").read_bytes()))
    with pytest.raises(ModelFolderError, match=r"noise_latents' engine noises 3 draw\(s\) per image, the model folder "
                                               r"has 2; rebuild it: python -m export.tensorrt"):
        backend_trt.TensorRTBackend(manifest, "cuda:0", verify=False)
    assert cudart.leaks() == {}


def test_a_folder_exported_before_the_draw_graphs_says_how_to_add_them(fake, tmp_path, capsys):
    from export import draw_graphs

    _, cudart = fake
    manifest = build(make_folder(tmp_path / "model", draws=2, draw_graphs=False), "--device", "cuda:0")
    with pytest.raises(ModelFolderError) as refused:
        backend_trt.TensorRTBackend(manifest, "cuda:0")
    root = manifest.root
    assert str(refused.value) == (
        f"{root / MANIFEST}: no noise_latents and mean_of_draws graphs (exported before the noise draws stayed on the "
        f"GPU); add them: python -m export.draw_graphs --model {root}, then build their engines: python -m "
        f"export.tensorrt --model {root} --device cuda:0 --components noise_latents,mean_of_draws")
    with pytest.raises(ModelFolderError, match="no noise_latents graph: the folder was exported before"):
        build(manifest, "--device", "cuda:0", "--components", "noise_latents")
    assert draw_graphs.main(["--model", str(root)]) == 0
    assert "TensorRT engines for them: python -m export.tensorrt" in capsys.readouterr().out
    manifest = build(Manifest.load(root), "--device", "cuda:0", "--components", "noise_latents,mean_of_draws")
    assert set(manifest.engines) == set(COMPONENT_IO)  # the older engines kept
    noise, plan, images = manifest.noise(), manifest.plan(), batches(3)[0]
    backend = backend_trt.TensorRTBackend(manifest, "cuda:0")
    try:
        assert_like_onnxruntime(manifest, backend.run(images, plan, noise), images, plan, noise)
    finally:
        backend.close()
    assert cudart.leaks() == {}


def test_the_vae_only_plan_runs_the_encoder_decoder_and_scorer_only(fake, tmp_path, monkeypatch):
    """Steps 0: the decoder reads the encoder's latent on the device; no hint, no noise, no loop, no graph; a slot
    that ran DDIM before decodes the right latent again, and the Detector agrees with ONNX Runtime's."""
    from runtime import Detector

    _, cudart = fake
    manifest = build(make_folder(tmp_path / "model", draws=2), "--device", "cuda:0")
    enqueued: list[str] = []
    real = backend_trt.Context.enqueue

    def counting(self, stream):
        enqueued.append(self.engine.name)
        return real(self, stream)

    monkeypatch.setattr(backend_trt.Context, "enqueue", counting)
    vae_only, noise = ddim_plan(0), manifest.noise()
    backend = backend_trt.TensorRTBackend(manifest, "cuda:0")
    try:
        for images in batches(3, 1, MAX_BATCH):
            out = backend.run(images, vae_only, noise, keep_reconstruction=True)
            assert_like_onnxruntime(manifest, out, images, vae_only, noise)  # q_sample at alpha 1: the clean latent
            nan = backend.run(images, vae_only, np.full_like(noise, np.nan))  # no noise is drawn
            np.testing.assert_array_equal(nan.score, out.score)
        assert set(enqueued) == {"vae_encoder", "vae_decoder", "scorer"} and len(enqueued) == 3 * 6
        assert all(not slot.loops for slot in backend._slots) and cudart.instantiated == 0
        assert out.seconds["steps"] < 1e-3  # two adjacent events: nothing ran between them
        images = batches(2)[0]
        for plan in (manifest.plan(), vae_only, manifest.plan()):  # each slot switches between the plans
            assert_like_onnxruntime(manifest, backend.run(images, plan, noise), images, plan, noise)
    finally:
        backend.close()
    frames = [np.full((16, 16, 3), 40 * k, np.uint8) for k in range(5)]
    with Detector(manifest.root, steps=0) as cpu, \
            Detector(manifest.root, backend="tensorrt", device="cuda:0", steps=0) as gpu:
        assert [p.score for p in gpu.predict(frames)] == pytest.approx([p.score for p in cpu.predict(frames)], abs=1e-5)
    assert cudart.stale_replays == 0
    assert cudart.leaks() == {}


def test_detector_stream_and_calibration_use_both_slots(fake, engines, tmp_path):
    """Issue 12.2: ``run`` reset the slot index, so slot 1 was never used by the detector, stream or calibration."""
    from runtime import Detector
    from runtime.calibration_images import LabelledImage, score_images
    from runtime.sources import open_source
    from runtime.stream_run import stream

    _, cudart = fake
    frames = [np.full((16, 16, 3), 30 * k, np.uint8) for k in range(5)]
    with Detector(engines.root) as cpu:
        expected = [p.score for p in cpu.predict(frames)]
    with Detector(engines.root, backend="tensorrt", device="cuda:0") as detector:
        handles = [slot.handle for slot in detector.backend._slots]

        def used() -> list[int]:
            return [cudart.streams[handle].work for handle in handles]

        scores = [p.score for p in detector.predict(frames)]  # 5 images, max_batch 4: two chunks
        assert scores == pytest.approx(expected, abs=1e-5) and all(used())

        for path, frame in zip((tmp_path / f"{k}.png" for k in range(5)), frames):
            cv2.imwrite(str(path), frame)
        before = used()
        scored = score_images(detector, [LabelledImage(tmp_path / f"{k}.png") for k in range(5)], batch_size=1)
        assert scored.scores == pytest.approx(expected, abs=1e-5)
        assert all(now > then for now, then in zip(used(), before))

        before = used()
        records = []
        summary = stream(detector, open_source(str(tmp_path)), [SimpleNamespace(write=records.append)])
        assert [r["score"] for r in records] == pytest.approx(expected, abs=1e-5) and summary["frames"] == 5
        assert all(now > then for now, then in zip(used(), before))
    assert cudart.leaks() == {}


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
    samples = []
    for draw in noise if noise.ndim == 4 else noise[None]:  # each draw on its own, then the mean
        x = q_sample(latent, draw, plan.start_alpha)
        for t, a, a_prev in zip(plan.timesteps, plan.alphas, plan.alphas_prev):
            feed = {"x_t": x, "hint": hint, **{k: np.full(batch, v, np.float32) for k, v in
                                               (("timestep", t), ("alpha_t", a), ("alpha_prev", a_prev))}}
            x = run["denoise_step"](None, feed)[0]
        samples.append(x)
    recon = run["vae_decoder"](None, {"latent": np.mean(samples, axis=0, dtype=np.float32)})[0]
    return tuple(run["scorer"](["anomaly_map", "score"], {"image": images, "reconstruction": recon}))


def test_build_compare_and_run(gpu, folder, tmp_path, capsys):
    root, cache = str(folder.root), tmp_path / "timing.cache"
    assert export_trt.main(["--model", root, "--opt-batch", "2", "--timing-cache", str(cache)]) == 0
    assert cache.is_file()
    manifest = Manifest.load(root)
    import tensorrt as trt

    capability = trt_env.compute_capability()
    for name in COMPONENTS:
        entry = manifest.engine(name, trt.__version__, capability)
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
