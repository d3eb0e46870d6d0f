"""INT8 dynamic quantisation of a model folder (issue 12): the tiny DiAD folder's fused step quantised, its
manifest, the ops ONNX Runtime runs, and the score parity with the FP32 folder that the command enforces."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from export import quantize
from export.quantize import ParityError, main, quantize_folder, score_parity
from runtime.errors import ModelFolderError
from runtime.manifest import Manifest
from runtime.schedule import ddim_plan


@pytest.fixture(scope="module")
def int8_dir(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    assert main(["--model", str(model_dir), "--out", str(out), "--parity-images", "2"]) == 0
    return out


def test_quantised_folder_says_int8_and_records_parity(int8_dir, model_dir, capsys):
    manifest = Manifest.load(int8_dir)
    assert manifest.precision == "int8"
    record = manifest.data["quantization"]
    assert record["components"] == ["denoise_step"] and record["op_types"] == ["MatMul", "Gemm"]
    assert 0 <= record["parity"]["score_relative"] <= quantize.SCORE_TOLERANCE
    assert manifest.data["source"] == str(model_dir.resolve()) and manifest.data["thresholds"] == {}
    fp32 = Manifest.load(model_dir)
    for name in ("vae_encoder", "scorer"):  # not quantised: copied byte for byte
        assert manifest.component(name)["sha256"] == fp32.component(name)["sha256"]
    assert manifest.component("denoise_step")["bytes"] < fp32.component("denoise_step")["bytes"]


def test_quantised_step_runs_integer_matmuls_and_keeps_fp32_convs(int8_dir):
    graph = onnx.load(str(int8_dir / "denoise_step.onnx")).graph
    ops = [node.op_type for node in graph.node]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    stored = {t.name: t.data_type for t in graph.initializer}
    weights = [node.input[1] for node in graph.node if node.op_type == "MatMulInteger" and node.input[1] in stored]
    assert weights and {stored[w] for w in weights} == {onnx.TensorProto.INT8}
    assert "Conv" in ops and "ConvInteger" not in ops
    # attention's activation x activation products stay in float
    assert "MatMul" in ops


def test_parity_of_the_quantised_pipeline_with_fp32(int8_dir, model_dir):
    parity = score_parity(Manifest.load(model_dir), Manifest.load(int8_dir), images=3, seed=1)
    assert 0 < parity.score_relative <= quantize.SCORE_TOLERANCE  # changed, but within the tolerance
    assert parity.map_relative < 0.05


def test_parity_beyond_the_tolerance_fails_and_leaves_no_folder(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "SCORE_TOLERANCE", 0.0)
    out = tmp_path / "int8"
    with pytest.raises(ParityError, match="INT8 scores differ from FP32"):
        quantize_folder(model_dir, out, op_types=["MatMul", "Gemm", "Conv"], parity_images=1)
    assert not out.exists() and not (tmp_path / "int8.partial").exists()


def test_bad_requests_are_named(int8_dir, model_dir, tmp_path, capsys):
    with pytest.raises(ModelFolderError, match="precision int8; quantise an FP32 model folder"):
        quantize_folder(int8_dir, tmp_path / "again")
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir), "--out", str(tmp_path / "x"), "--op-types", "MatMul,Softmax"])
    assert "op types ['MatMul', 'Softmax']" in capsys.readouterr().err
    with pytest.raises(ModelFolderError, match="the FP32 folder itself"):
        quantize_folder(model_dir, model_dir)
    broken = json.loads((int8_dir / "manifest.json").read_text())
    broken["quantization"]["per_channel"] = "yes"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ModelFolderError, match="quantization.per_channel: expected true or false"):
        Manifest.load(tmp_path / "bad", verify=False)
    assert np.isfinite(Manifest.load(int8_dir).data["quantization"]["parity"]["map_relative"])


def test_parity_of_a_vae_only_folder_runs_the_quantised_step_on_a_ddim_plan(model_dir, tmp_path):
    # the tiny folder with the VAE-only plan as its default, as `python -m export --steps 0` writes it (same graphs)
    shutil.copytree(model_dir, tmp_path / "vae-only")
    source = Manifest.load(tmp_path / "vae-only")
    source.data["schedule"].update(ddim_plan(0).to_dict())
    source.save()
    assert Manifest.load(source.root).plan().vae_only
    manifest, parity, _ = quantize_folder(source.root, tmp_path / "int8", parity_images=1)
    # only denoise_step is quantised: the VAE-only run alone would match FP32 exactly
    assert 0 < parity.score_relative <= quantize.SCORE_TOLERANCE
    assert manifest.plan().vae_only and manifest.step_plan().steps == ddim_plan().steps
    assert manifest.data["quantization"]["parity"]["score_relative"] == parity.score_relative
