"""runtime.manifest: one validated schema (types, ranges, required and unknown keys), files confined to the model
folder, checked at load before any graph is opened; on the tiny real model folder of ``helpers.model_folder``."""
from __future__ import annotations

import json
import shutil
from dataclasses import fields

import numpy as np
import pytest
from helpers.model_folder import LATENT, S, make_folder

from runtime import Detector
from runtime.class_thresholds import DESCRIPTOR_SIZE
from runtime.cli import run_cli
from runtime.errors import ModelFolderError
from runtime.component_io import (
    COMPONENT_IO,
    COMPONENTS,
    DRAW_COMPONENTS,
    NOISE_INPUTS,
    SCHEDULE_INPUTS,
    expected_tensors,
    noise_inputs,
    schedule_inputs,
)
from runtime.manifest import MANIFEST, SCHEMA, Manifest, Thresholds, file_entry, write_manifest
from runtime.schedule import ddim_plan, q_sample
from runtime.schema import integer, obj, string
from runtime.stream import main as stream_main


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "model").root


def _edit(folder, change) -> None:
    """Rewrite the manifest with ``change(data)`` applied, as a hand edit would (no validation on the way)."""
    path = folder / MANIFEST
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(data):
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


def _delete(*keys):
    def change(data):
        node = data
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return change


BAD_VALUES = {
    "max_batch 0": (_set("max_batch", 0), r"max_batch: expected an integer in \[1, 1024\], got 0"),
    "max_batch negative": (_set("max_batch", -3), r"max_batch: expected an integer in \[1, 1024\], got -3"),
    "max_batch 10^9": (_set("max_batch", 10**9), r"max_batch: expected an integer in \[1, 1024\]"),
    "max_batch string": (_set("max_batch", "8"), r'max_batch: expected an integer in \[1, 1024\], got "8"'),
    "file not a string": (_set("components", "scorer", "file", 5), "components.scorer.file: expected a string"),
    "sha256 missing": (_delete("components", "scorer", "sha256"), r"components.scorer: missing key\(s\) \['sha256'\]"),
    "sha256 not hex": (_set("components", "scorer", "sha256", "xyz"),
                       "components.scorer.sha256: expected a string matching"),
    "unknown threshold key": (_set("thresholds", {"image": 1.0, "imgae_max": 2.0}),
                              r"thresholds: unknown key\(s\) \['imgae_max'\]"),
    "unknown top-level key": (_set("max_batchh", 4), r"unknown key\(s\) \['max_batchh'\]"),
    "seed not an integer": (_set("noise", "seed", 1.5), r"noise.seed: expected an integer in \[0, "),
    "seed negative": (_set("noise", "seed", -1), r"noise.seed: expected an integer"),
    "seed missing": (_delete("noise", "seed"), r"noise: missing key\(s\) \['seed'\]"),
    "no noise draws": (_set("noise", "draws", 0), r"noise.draws: expected an integer in \[1, 64\], got 0"),
    "noise draws a float": (_set("noise", "draws", 2.5), r"noise.draws: expected an integer in \[1, 64\]"),
    "image_size missing": (_delete("image_size"), r"missing key\(s\) \['image_size'\]"),
    "precision": (_set("precision", "int4"), r"precision: expected one of \['fp32', 'fp16', 'int8'\]"),
    "alpha NaN": (_set("schedule", "alphas", 0, float("nan")), r"schedule.alphas\[0\]: expected a finite number"),
    "tensor shapes disagree": (_set("image_size", 16), r"components.vae_encoder.inputs: expected"),
    "schedule not the runtime's": (_set("schedule", "start_t", 398), "DDIM timesteps/alphas differ"),
    "alphas not the runtime's": (_set("schedule", "alphas", 1, 0.5), "DDIM timesteps/alphas differ"),
    "start_t 0 with DDIM steps": (_set("schedule", "start_t", 0), "start_t is 0 exactly for the VAE-only plan"),
    "VAE-only plan with a start_t": (_set("schedule", {**ddim_plan(0).to_dict(), "start_t": 399}),
                                     r"start_t 399 with 0 DDIM step\(s\); start_t is 0 exactly for the VAE-only"),
    "VAE-only plan with a start_alpha": (_set("schedule", {**ddim_plan(0).to_dict(), "start_alpha": 0.5}),
                                         "DDIM timesteps/alphas differ"),
    "degenerate normalisation": (_set("thresholds", {"image": 1.0, "pixel": 0.5, "image_min": 1.0, "image_max": 1.0,
                                                     "pixel_min": 0.0, "pixel_max": 1.0}),
                                 "image_min 1.0 and image_max 1.0 give no normalisation span"),
}


@pytest.mark.parametrize("case", BAD_VALUES, ids=list(BAD_VALUES))
def test_bad_values_are_named_at_load(folder, case):
    change, message = BAD_VALUES[case]
    _edit(folder, change)
    with pytest.raises(ModelFolderError, match=message) as error:
        Manifest.load(folder, verify=False)
    assert str(error.value).startswith(f"{folder / MANIFEST}: ")


def test_a_bad_value_is_an_error_line_at_load_not_a_traceback_at_the_first_frame(folder, capsys):
    _edit(folder, _set("max_batch", 0))
    with pytest.raises(SystemExit) as exit_:
        run_cli(stream_main, ["--model", str(folder), "--frames", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "max_batch: expected an integer in [1, 1024], got 0" in err
    assert "Traceback" not in err


def test_files_must_stay_inside_the_model_folder(folder, tmp_path):
    """Issue 11.3: with a matching size and hash a graph from elsewhere loaded silently."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(folder / "scorer.onnx", outside / "scorer.onnx")
    entry = file_entry(outside, "scorer.onnx")
    for name in (str(outside / "scorer.onnx"), "../elsewhere/scorer.onnx", "./scorer.onnx", "sub//scorer.onnx",
                 "/etc/passwd", "..\\elsewhere\\scorer.onnx"):
        _edit(folder, _set("components", "scorer", {**Manifest.load(folder, verify=False).component("scorer"),
                                                    **entry, "file": name}))
        with pytest.raises(ModelFolderError, match="components.scorer.file: .* is not a file name inside the model"):
            Detector(folder)
        _edit(folder, _set("components", "scorer", "file", "scorer.onnx"))
    (folder / "scorer.onnx").unlink()
    (folder / "scorer.onnx").symlink_to(outside / "scorer.onnx")  # same bytes: the hash matches
    with pytest.raises(ModelFolderError, match=r"scorer.onnx: listed in .* but leads out of the model folder"):
        Detector(folder)
    (folder / "scorer.onnx").unlink()
    (folder / "graphs").mkdir()
    shutil.copy(outside / "scorer.onnx", folder / "graphs" / "scorer.onnx")
    (folder / "scorer.onnx").symlink_to("graphs/scorer.onnx")  # a link that stays inside is fine
    Manifest.load(folder)


def test_engine_files_are_confined_too(folder):
    _edit(folder, _set("engines", {"scorer": [{"file": "../scorer.engine", "bytes": 1, "sha256": "0" * 64,
                                               "tensorrt": "10.3.0", "compute_capability": "8.7"}]}))
    with pytest.raises(ModelFolderError, match=r"engines.scorer\[0\].file"):
        Manifest.load(folder)


def test_graphs_that_match_their_hash_but_not_the_manifest_are_named(folder):
    """A system file, or another graph, put in place with the manifest's hash updated to match."""
    shutil.copy(folder / "vae_decoder.onnx", folder / "scorer.onnx")  # a valid graph with other inputs
    _edit(folder, _set("components", "scorer", {**Manifest.load(folder, verify=False).component("scorer"),
                                                **file_entry(folder, "scorer.onnx")}))
    with pytest.raises(ModelFolderError, match=r"scorer.onnx: graph inputs .*'latent'.*, the manifest lists"):
        Detector(folder)
    shutil.copy("/etc/passwd", folder / "scorer.onnx")
    _edit(folder, _set("components", "scorer", {**Manifest.load(folder, verify=False).component("scorer"),
                                                **file_entry(folder, "scorer.onnx")}))
    with pytest.raises(ModelFolderError, match="scorer.onnx: ONNX Runtime cannot load this graph"):
        Detector(folder)


@pytest.mark.parametrize("text", [b"[" * 100_000 + b"]" * 100_000, b'{"format": 1' + b"0" * 5000 + b"}",
                                  b"\xff\xfe\x00", b"null"], ids=["deep", "huge int", "not utf-8", "null"])
def test_hostile_json_is_a_model_folder_error(folder, text):
    (folder / MANIFEST).write_bytes(text)
    with pytest.raises(ModelFolderError, match="manifest.json: "):
        Manifest.load(folder)


def test_save_validates_what_it_writes(folder):
    manifest = Manifest.load(folder)
    before = (folder / MANIFEST).read_bytes()
    manifest.data["max_batch"] = 0
    with pytest.raises(ModelFolderError, match="max_batch"):
        manifest.save()
    assert (folder / MANIFEST).read_bytes() == before


def test_the_component_table_gives_the_expected_tensors():
    tensors = expected_tensors(64, [4, 8, 8], [16, 8, 8], draws=2)
    assert list(tensors) == list(COMPONENTS + DRAW_COMPONENTS) == list(COMPONENT_IO)
    assert tensors["noise_latents"] == {
        "inputs": {"latent": ["B", 4, 8, 8], "hint": ["B", 16, 8, 8], "noise": ["B", 2, 4, 8, 8], "signal": ["B"],
                   "spread": ["B"]},
        "outputs": {"x_t": ["B", 2, 4, 8, 8], "hints": ["B", 2, 16, 8, 8]},
    }
    assert tensors["mean_of_draws"] == {"inputs": {"samples": ["B", 2, 4, 8, 8]}, "outputs": {"mean": ["B", 4, 8, 8]}}
    assert tensors["denoise_step"]["inputs"] == {
        "x_t": ["B", 4, 8, 8], "hint": ["B", 16, 8, 8], "timestep": ["B"], "alpha_t": ["B"], "alpha_prev": ["B"],
    }
    assert tensors["scorer"]["outputs"] == {"anomaly_map": ["B", 64, 64], "score": ["B"]}
    assert SCHEDULE_INPUTS == ("timestep", "alpha_t", "alpha_prev")
    plan = ddim_plan(3, 299)
    inputs = schedule_inputs(plan)
    assert list(inputs) == list(SCHEDULE_INPUTS)
    np.testing.assert_array_equal(inputs["alpha_prev"], plan.alphas_prev)
    assert COMPONENT_IO["scorer"].named_outputs(1, 2) == {"anomaly_map": 1, "score": 2}
    with pytest.raises(ValueError):  # a value per tensor, no more, no fewer
        COMPONENT_IO["scorer"].named_inputs(1)


def test_noise_inputs_are_q_samples_coefficients():
    plan = ddim_plan(10, 999)
    inputs = noise_inputs(plan, 3)
    assert list(inputs) == list(NOISE_INPUTS) == ["signal", "spread"]
    latent, noise = np.full((1, 2), 3.0, np.float32), np.full((2,), 5.0, np.float32)
    expected = q_sample(latent, noise, plan.start_alpha)
    assert all(v.dtype == np.float32 and v.shape == (3,) for v in inputs.values())
    assert np.array_equal(inputs["signal"][0] * latent + inputs["spread"][0] * noise, expected)


def test_folders_exported_before_the_draw_graphs_still_load(tmp_path):
    """The draw graphs are optional and come as a pair; a folder without them names the command that adds them."""
    old = make_folder(tmp_path / "old", draws=2, draw_graphs=False)
    assert Manifest.load(old.root).components == COMPONENTS and not old.has_draw_graphs
    with pytest.raises(ModelFolderError, match="no noise_latents graph: .* python -m export.draw_graphs --model"):
        old.component("noise_latents")
    new = Manifest.load(make_folder(tmp_path / "new", draws=2).root)
    assert new.components == COMPONENTS + DRAW_COMPONENTS and new.has_draw_graphs
    assert new.component("noise_latents")["inputs"]["noise"] == ["B", 2, *LATENT]
    del new.data["components"]["mean_of_draws"]
    with pytest.raises(ModelFolderError, match="noise_latents and mean_of_draws come together"):
        new.save()
    new = Manifest.load(new.root)
    new.data["noise"]["draws"] = 3  # the graphs were made for 2 draws
    with pytest.raises(ModelFolderError, match=r"components.noise_latents.inputs: expected .*\[.B., 3, 4, 4, 4\]"):
        new.save()
    (new.root / "mean_of_draws.onnx").unlink()
    with pytest.raises(ModelFolderError, match="mean_of_draws.onnx: listed in .* but missing"):
        Manifest.load(new.root)


def test_a_manifest_without_hint_shape_is_refused(tmp_path):
    folder = make_folder(tmp_path / "model")
    data = json.loads((folder.root / MANIFEST).read_text())
    del data["hint_shape"]
    (folder.root / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="hint_shape"):
        Manifest.load(folder.root)


def test_a_vae_only_manifest_validates_round_trips_and_switches_back_to_ddim(tmp_path):
    manifest = make_folder(tmp_path / "model")
    manifest.data["schedule"] = ddim_plan(0).to_dict()
    manifest.save()
    loaded = Manifest.load(manifest.root)
    assert loaded.data["schedule"] == {"start_t": 0, "start_alpha": 1.0, "timesteps": [], "alphas": [],
                                       "alphas_prev": []}
    assert loaded.steps == 0 and loaded.plan().vae_only and loaded.plan(start_t=399).vae_only
    # DDIM again from the same folder: the reference's start timestep unless one is given
    assert loaded.start_t == 999 and loaded.plan(steps=2).start_t == 999
    assert loaded.plan(steps=3, start_t=399).timesteps.tolist() == ddim_plan(3, 399).timesteps.tolist()
    text = (manifest.root / MANIFEST).read_text()
    loaded.save()
    assert (manifest.root / MANIFEST).read_text() == text
    with Detector(manifest.root) as detector:
        assert detector.plan.vae_only and detector.summary["steps"] == 0


def test_the_writer_writes_every_field_the_reader_reads(tmp_path):
    """export's writer and the reader share one schema: every field but the ones other commands add is written,
    validated, and read back as given."""
    folder = make_folder(tmp_path / "model", draws=2)
    plan = ddim_plan(3, 399)
    statistics = {"kind": "joint", "scope": "shared", "channels": 8, "plan": {"steps": 3, "start_t": 399, "draws": 2},
                  "images": 8, "data": "images"}
    write_manifest(folder.root, preset="tiny", image_size=S, latent_shape=LATENT, hint_shape=LATENT, injection="all",
                   precision="fp16", opset=17, max_batch=3, plan=plan, noise_seed=7, draws=2, backbone="resnet18",
                   layers=(1, 2), weights=None, statistics=statistics, components=folder.data["components"],
                   versions={"onnx": "1.17"}, source="run")
    manifest = Manifest.load(folder.root)
    data = manifest.data
    assert set(data) == set(SCHEMA.fields) - {"quantization"}  # added by export.quantize
    for key in ("schedule", "noise", "normalization", "scorer"):
        assert set(data[key]) == set(SCHEMA.fields[key].check.fields), key
    assert (manifest.image_size, manifest.latent_shape, manifest.hint_shape, manifest.precision, manifest.max_batch,
            manifest.noise_seed, manifest.draws) == (S, LATENT, LATENT, "fp16", 3, 7, 2)
    assert manifest.plan().timesteps.tolist() == plan.timesteps.tolist() and manifest.components == tuple(COMPONENT_IO)
    assert data["scorer"] == {"backbone": "resnet18", "layers": [1, 2], "weights": None, "statistics": statistics}
    assert manifest.engines == {} and not manifest.thresholds.calibrated
    rules = [{"name": "nut", "image": 1.0, "image_min": 0.0, "image_max": 2.0, "centre": [0.5] * DESCRIPTOR_SIZE}]
    thresholds = Thresholds(1.0, 0.5, 0.0, 2.0, 0.0, 1.0, "f1", {"images": 4}, rules, [1.0] * DESCRIPTOR_SIZE)
    assert all(getattr(thresholds, f.name) is not None for f in fields(Thresholds))  # every field of the record
    manifest.set_thresholds(thresholds)
    assert Manifest.load(folder.root).thresholds == thresholds


def test_absent_optional_fields_read_as_the_schemas_defaults(folder):
    """Manifests from before a field existed load as they did: one noise draw, no engines, no thresholds."""
    _edit(folder, _delete("noise", "draws"))
    _edit(folder, _delete("engines"))
    manifest = Manifest.load(folder)
    assert "thresholds" not in manifest.data and not manifest.thresholds.calibrated
    assert manifest.draws == 1 and manifest.engines == {}
    manifest.engines["scorer"] = []  # a copy of the default, not the schema's own
    assert SCHEMA.get({}, "engines") == {}


def test_only_optional_keys_take_a_default():
    record = obj({"size": integer(1, 8)}, {"name": string()}, defaults={"name": "nut"})
    record({"size": 2}, "")
    assert record.get({"size": 2}, "name") == "nut" and record.get({"size": 2, "name": "a"}, "name") == "a"
    assert record.get({"size": 2}, "size") == 2
    with pytest.raises(ValueError, match="only optional keys take a default"):
        obj({"size": integer(1, 8)}, defaults={"size": 1})
