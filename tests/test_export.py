"""python -m export: model folder contents, ONNX Runtime vs PyTorch parity (per component and end to end, within
``export.parity.TOLERANCE``), FP16 graphs, and errors that name the file."""
import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from export.__main__ import main as export_main
from export.fp16 import FP32_OPS, fp32_nodes, ort_cpu_fallbacks, precision_census
from export.parity import TOLERANCE, ParityError, check_parity, format_parity, parity
from runtime import Detector
from runtime.cli import run_cli
from runtime.errors import CheckpointError, ModelFolderError
from runtime.component_io import COMPONENT_IO, COMPONENTS, DRAW_COMPONENTS
from runtime.manifest import Manifest
from runtime.metrics import auroc
from runtime.preprocess import preprocess, read_image
from runtime.schedule import ddim_plan
from training.data import load_index
from training.evaluate import evaluate
from training.models.scorer import seeded_scorer
from training.run_folder import RunFolder

pytestmark = pytest.mark.filterwarnings("ignore:scorer. no weights:UserWarning")
FP32_RELATIVE = TOLERANCE["fp32"]
DATA_MOVEMENT = {"Identity", "Constant", "Cast", "Shape", "Reshape", "Unsqueeze", "Squeeze", "Gather", "Concat",
                 "Slice", "Expand", "Transpose", "Flatten"}
FP32_MATH = {*FP32_OPS, "Sin", "Cos"}  # norms, softmax and the timestep's sinusoids: never fed FP16


@pytest.fixture(scope="module")
def model_and_scorer(tiny_run):
    model = RunFolder(tiny_run).load_model()
    config = model.config
    return model, seeded_scorer(config.scorer, config.image_size, config.inference.noise_seed)


@pytest.fixture(scope="module")
def test_images(synthetic_data):
    samples = load_index(synthetic_data).split("test")
    return samples, [read_image(s.image) for s in samples]


def test_manifest_describes_the_folder(model_dir, tiny_run):
    manifest = Manifest.load(model_dir)
    config = RunFolder(tiny_run).model_config()
    data = manifest.data
    assert data["preset"] == "tiny" and data["image_size"] == config.image_size and data["opset"] >= 17
    plan = ddim_plan(config.inference.steps, config.inference.start_t)
    assert data["schedule"]["timesteps"] == plan.timesteps.tolist()
    assert np.allclose(data["schedule"]["alphas_prev"], plan.alphas_prev)
    assert data["noise"]["policy"] == "fixed" and data["noise"]["seed"] == config.inference.noise_seed
    assert data["noise"]["draws"] == manifest.draws == config.inference.draws == 2  # the tiny preset's pair
    assert manifest.noise().shape == (2, *manifest.latent_shape)
    assert data["max_batch"] == 4 and data["precision"] == "fp32" and data["injection"] == config.injection
    assert {"torch", "onnx", "onnxruntime", "diffusers"} <= set(data["versions"])
    assert sorted(data["components"]) == sorted(COMPONENTS + DRAW_COMPONENTS) and manifest.has_draw_graphs
    step = data["components"]["denoise_step"]
    assert step["inputs"] == {
        "x_t": ["B", *manifest.latent_shape], "hint": ["B", *data["hint_shape"]],
        "timestep": ["B"], "alpha_t": ["B"], "alpha_prev": ["B"],
    }
    assert data["components"]["noise_latents"]["inputs"]["noise"] == ["B", 2, *manifest.latent_shape]
    for name in manifest.components:  # every graph has a dynamic batch axis on every input and output
        graph = onnx.load(str(manifest.path(name))).graph
        for value in list(graph.input) + list(graph.output):
            assert value.type.tensor_type.shape.dim[0].dim_param == "B", (name, value.name)
        # the graph's I/O are the table's, in its order
        assert [v.name for v in graph.input] == list(COMPONENT_IO[name].inputs), name
        assert [v.name for v in graph.output] == list(COMPONENT_IO[name].outputs), name


def test_components_match_pytorch_on_random_and_real_inputs(model_dir, model_and_scorer, test_images):
    model, scorer = model_and_scorer
    images = np.stack([preprocess(img, model.config.image_size) for img in test_images[1][:3]])
    results = parity(model, scorer, Manifest.load(model_dir), images)
    print(format_parity(results))
    assert {(r.component.split(".")[0], r.inputs) for r in results} == {
        (c, kind) for c in COMPONENTS for kind in ("random", "real")
    } | {(c, "random") for c in DRAW_COMPONENTS}  # the draw graphs against runtime.schedule's numpy
    assert all(r.max_abs == 0.0 for r in results if r.component.startswith(DRAW_COMPONENTS))
    for r in results:
        assert r.max_abs <= FP32_RELATIVE * r.max_ref, r
    check_parity(results, "fp32")


def test_verify_fails_on_a_graph_that_differs_from_pytorch(model_dir, tiny_run, monkeypatch, capsys):
    """A model that no longer matches its graphs (one decoder weight changed) fails the check, naming the graph."""
    model = RunFolder(tiny_run).load_model()
    with torch.no_grad():
        model.vae.autoencoder.decoder.conv_out.weight.mul_(1.5)
    config = model.config
    results = parity(model, seeded_scorer(config.scorer, config.image_size, 0), Manifest.load(model_dir))
    with pytest.raises(ParityError, match=r"vae_decoder on random inputs") as error:
        check_parity(results, "fp32")
    assert "vae_encoder" not in str(error.value)  # only what differs is named

    import export.__main__ as command

    monkeypatch.setattr(command, "parity", lambda *args, **kwargs: results)
    # the command's verify step on these results; the graphs are model_dir's (exporting them again is the fixture's)
    monkeypatch.setattr(command, "write_model_folder", lambda *args, **kwargs: (Manifest.load(model_dir), []))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(command.main, ["--run", str(tiny_run), "--out", str(model_dir.parent / "verify")])
    assert exit_info.value.code == 2 and "error: 1 exported graph(s) disagree" in capsys.readouterr().err


def test_end_to_end_matches_training_evaluate(model_dir, model_and_scorer, test_images):
    model, scorer = model_and_scorer
    two_classes = {s.class_name for s in test_images[0][:1]} | {test_images[0][-1].class_name}
    chosen = [k for k, s in enumerate(test_images[0]) if s.class_name in two_classes]  # 10 of the 20 images
    samples, images = [test_images[0][k] for k in chosen], [test_images[1][k] for k in chosen]
    reference = evaluate(model, scorer, samples, batch_size=4, progress=False)
    with Detector(model_dir) as detector:
        predictions = detector.predict(images)
    scores = np.array([p.score for p in predictions])
    maps = np.stack([p.raw_map for p in predictions])
    ref_scores, ref_maps = reference.scores["diad"], reference.maps["diad"]
    assert np.abs(scores - ref_scores).max() <= FP32_RELATIVE * np.abs(ref_scores).max()
    assert np.abs(maps - ref_maps).max() <= FP32_RELATIVE * np.abs(ref_maps).max()
    labels = reference.labels
    assert len(samples) == 10 and 0 < labels.sum() < len(labels)
    assert round(auroc(scores, labels), 3) == round(auroc(ref_scores, labels), 3)
    pixels = reference.masks.reshape(-1)
    assert round(auroc(maps.reshape(-1), pixels), 3) == round(auroc(ref_maps.reshape(-1), pixels), 3)
    with Detector(model_dir, steps=0) as vae_only:  # the VAE-only plan: evaluate's "vae" baseline
        vae_scores = np.array([p.score for p in vae_only.predict(images)])
    ref_vae = reference.scores["vae"]
    assert np.abs(vae_scores - ref_vae).max() <= FP32_RELATIVE * np.abs(ref_vae).max()
    assert not np.allclose(vae_scores, scores, rtol=FP32_RELATIVE)


def test_scores_do_not_depend_on_batching(model_dir, test_images):
    images = test_images[1][:5]
    with Detector(model_dir) as detector:  # max_batch 4: five images run as 4 + 1
        together = [p.score for p in detector.predict(images)]
        alone = [detector.predict(img).score for img in images]
    np.testing.assert_allclose(together, alone, rtol=1e-5)


@pytest.fixture(scope="module")
def fp16_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny-fp16"
    assert export_main(["--run", str(tiny_run), "--out", str(out), "--precision", "fp16", "--no-verify"]) == 0
    return out


def fp16_fed(model: onnx.ModelProto) -> set[str]:
    """The names of the nodes that receive an FP16 input (``model`` shape-inferred)."""
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return {n.name for n in model.graph.node if onnx.TensorProto.FLOAT16 in [types.get(i) for i in n.input]}


def on_paths(model: onnx.ModelProto, sources: list[str], sinks: list[str]) -> list[onnx.NodeProto]:
    """The nodes on a path from a tensor in ``sources`` to a tensor in ``sinks``."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        producer.update(dict.fromkeys(node.output, node))
    after, todo = set(), list(sources)
    while todo:
        for node in consumers.get(todo.pop(), []):
            if node.name not in after:
                after.add(node.name)
                todo += node.output
    before, todo = set(), list(sinks)
    while todo:
        node = producer.get(todo.pop())
        if node is not None and node.name not in before:
            before.add(node.name)
            todo += node.input
    between = after & before
    return [n for n in model.graph.node if n.name in between]


def test_fp16_graphs_run_norms_softmax_schedule_and_scoring_math_in_fp32(fp16_dir):
    """The outcome, whatever marks the regions: which ops receive FP16 inputs, along whole paths (a value that
    goes through FP16 between two FP32 ops has lost its precision too)."""
    manifest = Manifest.load(fp16_dir)
    assert manifest.precision == "fp16"
    graphs = {name: onnx.shape_inference.infer_shapes(onnx.load(str(manifest.path(name)))) for name in COMPONENTS}
    fed_by = {name: fp16_fed(model) for name, model in graphs.items()}
    for name, model in graphs.items():
        census = precision_census(model)
        assert census["fp16"] > 10 * census["fp32"], (name, census)
        fed = fed_by[name]
        assert not [n.name for n in model.graph.node if n.op_type in FP32_MATH and n.name in fed], name
        types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
        cast_to = {n.output[0]: (n.attribute[0].i, n.input[0]) for n in model.graph.node if n.op_type == "Cast"}
        round_trips = [  # FP32 -> FP16 -> FP32: FP32 regions must meet in FP32, not through FP16
            out for out, (to, source) in cast_to.items()
            if to == onnx.TensorProto.FLOAT and cast_to.get(source, (None, None))[0] == onnx.TensorProto.FLOAT16
            and types.get(cast_to[source][1]) == onnx.TensorProto.FLOAT
        ]
        assert not round_trips, (name, round_trips[:3])
        for value in list(model.graph.input) + list(model.graph.output):  # FP32 I/O
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for name in DRAW_COMPONENTS:  # the noising and the mean over draws stay FP32 throughout
        graph = onnx.shape_inference.infer_shapes(onnx.load(str(manifest.path(name)))).graph
        values = [*graph.input, *graph.value_info, *graph.output]
        assert {v.type.tensor_type.elem_type for v in values} == {onnx.TensorProto.FLOAT}, name

    step, fed = graphs["denoise_step"], fed_by["denoise_step"]
    ddim = on_paths(step, ["alpha_t", "alpha_prev"], ["x_prev"])  # the DDIM update, from the alphas to x_prev
    assert len(ddim) >= 8 and not [n.name for n in ddim if n.name in fed]
    sinusoids = [o for n in step.graph.node if n.op_type in ("Sin", "Cos") for o in n.output]
    timestep = on_paths(step, ["timestep"], sinusoids)  # integer timesteps (exact in FP16) may only be moved
    assert len(sinusoids) >= 4 and not [n.name for n in timestep if n.name in fed and n.op_type not in DATA_MOVEMENT]

    scorer, fed = graphs["scorer"], fed_by["scorer"]
    matrices = [o for n in scorer.graph.node if n.op_type == "MatMul" for o in n.output]
    distances = [n for n in scorer.graph.node if n.op_type in ("ReduceSum", "Sqrt")]  # the cosine distances
    after_features = on_paths(scorer, [o for n in distances for o in n.output], ["anomaly_map", "score"])
    assert len(matrices) >= 4 and len(distances) >= 3
    assert not [n.name for n in distances + after_features if n.name in fed]


def test_fp16_graphs_match_pytorch_within_the_fp16_tolerance(fp16_dir, model_and_scorer, test_images):
    manifest = Manifest.load(fp16_dir)
    model, scorer = model_and_scorer
    images = np.stack([preprocess(img, model.config.image_size) for img in test_images[1][:2]])
    results = parity(model, scorer, manifest, images)
    print("FP16 graphs on ONNX Runtime CPU vs PyTorch FP32\n" + format_parity(results))
    print("ops ONNX Runtime CPU ran in FP32:", ort_cpu_fallbacks(str(manifest.path("denoise_step"))))
    for r in results:
        assert r.max_abs <= TOLERANCE["fp16"] * r.max_ref, r  # FP16 weights/activations: about 1e-3 measured


def test_a_marked_fp32_region_missing_from_the_graph_is_an_error():
    """An exporter that names nodes otherwise must not silently turn the FP32 regions FP16."""
    def model(node_name: str) -> onnx.ModelProto:
        node = onnx.helper.make_node("Mul", ["a", "a"], ["b"], name=node_name)
        return onnx.helper.make_model(onnx.helper.make_graph([node], "g", [], []))

    assert fp32_nodes(model("/fp32_ddim_update/Mul"), ["fp32_ddim_update"]) == ["/fp32_ddim_update/Mul"]
    with pytest.raises(ValueError, match=r"no node in the FP32 region\(s\) \['fp32_ddim_update'\]"):
        fp32_nodes(model("/Mul_7"), ["fp32_ddim_update"])


def test_missing_or_corrupt_run_files_are_named(tiny_run, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="run folder not found"):
        export_main(["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "m")])
    broken = tmp_path / "run"
    shutil.copytree(tiny_run, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        export_main(["--run", str(broken), "--out", str(tmp_path / "m")])
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        export_main(["--run", str(broken), "--out", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()


def test_invalid_out_is_refused_before_anything_is_exported(tiny_run, tmp_path, monkeypatch, capsys):
    import export.__main__ as command
    import export.model_folder as folder

    def no_export(*args, **kwargs):
        raise AssertionError("exported although --out is invalid")

    monkeypatch.setattr(command.RunFolder, "load_model", no_export)
    monkeypatch.setattr(folder, "components", no_export)
    a_file = tmp_path / "file.onnx"
    a_file.write_text("not a folder")
    not_empty = tmp_path / "photos"
    not_empty.mkdir()
    (not_empty / "keep.jpg").write_bytes(b"")
    cases = {
        a_file: "exists and is not a folder",
        not_empty: "exists, is not empty and has no manifest.json",
        a_file / "model": "file.onnx: not a folder",
    }
    for out, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            run_cli(command.main, ["--run", str(tiny_run), "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: ") and message in err, err
        with pytest.raises(ModelFolderError, match=message):  # the library call refuses as early
            folder.write_model_folder(None, None, out)
    assert a_file.read_text() == "not a folder" and (not_empty / "keep.jpg").exists()


@pytest.mark.parametrize("flags, message", [
    (["--opset", "16"], "opset 16"), (["--max-batch", "0"], "max_batch 0"), (["--steps", "-1"], "--steps"),
    (["--start-t", "1000"], "--start-t"), (["--steps", "50", "--start-t", "20"], "do not fit"),
    (["--draws", "0"], "draws 0"),
])
def test_invalid_options_are_usage_errors(tiny_run, tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--run", str(tiny_run), "--out", str(tmp_path / "m"), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_errors_inside_the_export_are_not_usage_errors(tiny_run, tmp_path, monkeypatch):
    """A ValueError raised by the exporter is a bug to report with its traceback, not a wrong command line."""
    import export.__main__ as command

    def broken_export(*args, **kwargs):
        raise ValueError("an exporter bug")

    monkeypatch.setattr(command, "write_model_folder", broken_export)
    with pytest.raises(ValueError, match="an exporter bug"):
        command.main(["--run", str(tiny_run), "--out", str(tmp_path / "m")])


def test_steps_0_exports_every_graph_with_the_vae_only_plan_as_default(tiny_run, model_and_scorer, test_images,
                                                                       tmp_path, capsys):
    out = tmp_path / "vae-only"
    assert export_main(["--run", str(tiny_run), "--out", str(out), "--max-batch", "4", "--steps", "0",
                        "--start-t", "501", "--no-verify"]) == 0
    assert "default plan VAE-only (no DDIM steps)" in capsys.readouterr().out
    manifest = Manifest.load(out)
    assert manifest.data["schedule"]["timesteps"] == [] and manifest.data["schedule"]["start_t"] == 0
    assert sorted(manifest.data["components"]) == sorted(COMPONENTS + DRAW_COMPONENTS)  # --steps N switches back
    model, scorer = model_and_scorer
    images = test_images[1][:3]
    batch = torch.from_numpy(np.stack([preprocess(image, manifest.image_size) for image in images]))
    with torch.no_grad():
        out_torch = model.reconstruct(batch, steps=0)
        torch.testing.assert_close(out_torch["reconstruction"], out_torch["vae_reconstruction"])
        torch.testing.assert_close(out_torch["reconstruction"], model.vae.decode(model.vae.encode_mean(batch)))
        expected = scorer(batch, out_torch["reconstruction"])[1].numpy()
    with Detector(out) as detector, Detector(out, steps=2) as ddim:
        assert detector.plan.vae_only and ddim.plan.start_t == 999
        scores = np.array([p.score for p in detector.predict(images)])
        assert np.abs(scores - expected).max() <= FP32_RELATIVE * np.abs(expected).max()
        assert ddim.predict(images[0]).score != pytest.approx(scores[0], rel=FP32_RELATIVE)


def test_model_folder_damage_is_named(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    Manifest.load(copy)
    graph = copy / "scorer.onnx"
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="scorer.onnx: SHA-256"):
        Manifest.load(copy)
    graph.unlink()
    with pytest.raises(ModelFolderError, match="scorer.onnx: listed in .* but missing"):
        Manifest.load(copy)
    (copy / "manifest.json").write_text("{ truncated")
    with pytest.raises(ModelFolderError, match="manifest.json: not valid JSON"):
        Detector(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ModelFolderError, match="manifest.json: missing"):
        Detector(copy)


def test_manifest_schedule_must_match_the_runtime(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    path = copy / "manifest.json"
    data = json.loads(path.read_text())
    data["schedule"]["timesteps"][0] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="DDIM timesteps"):
        Detector(copy)


@pytest.mark.slow
def test_sd15_size_graphs_export_and_check(tmp_path):
    """The real-size graphs (random weights): the >2 GB fused step goes to external data, and every graph passes
    the checker and strict shape inference (export.onnx.check runs inside). Minutes and ~20 GB RAM: opt-in."""
    from export.model_folder import write_model_folder
    from training.models.diad import build_model
    from training.models.presets import sd15
    from training.models.scorer import FeatureScorer

    config = sd15()
    model = build_model(config)
    scorer = FeatureScorer.from_config(config.scorer, config.image_size, pretrained=False)
    manifest, _ = write_model_folder(model, scorer, tmp_path / "sd15", progress=False)
    step = manifest.component("denoise_step")
    assert step["external_data"] and step["external_data"][0]["bytes"] > 2**31


def test_a_scorer_with_normal_statistics_exports_them_into_its_one_graph(tiny_run, synthetic_data, tmp_path,
                                                                          capsys):
    """A run whose scorer measures against normal statistics: export names the command that fits them when they
    are missing, then carries them in scorer.onnx (parity with PyTorch checked) and records them in the manifest;
    a detector running another plan than the one they were fitted for warns."""
    from training.statistics import main as statistics_main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["scorer"].update(statistics="joint", statistics_scope="shared", statistics_channels=8)
    (run / "config.json").write_text(json.dumps(config))
    args = ["--run", str(run), "--out", str(tmp_path / "m"), "--max-batch", "2", "--steps", "1", "--start-t", "24"]
    fit_command = "python -m training.statistics --run .* --kind joint --scope shared --steps 1 --start-t 24"
    with pytest.raises(CheckpointError, match=fit_command):
        export_main(args)
    assert statistics_main(["--run", str(run), "--data", str(synthetic_data), "--steps", "1", "--start-t", "24",
                            "--device", "cpu"]) == 0
    assert export_main(args) == 0  # --verify: every graph, the scorer with its statistics, matches PyTorch
    assert "every graph matches PyTorch" in capsys.readouterr().out
    manifest = Manifest.load(tmp_path / "m")
    record = manifest.data["scorer"]["statistics"]
    assert record["kind"] == "joint" and record["scope"] == "shared" and record["channels"] == 8
    assert record["plan"] == {"steps": 1, "start_t": 24, "draws": 2} and record["images"] == 8
    with pytest.warns(UserWarning, match="normal statistics fitted for DDIM 1 steps from t=24"):
        Detector(tmp_path / "m", steps=2).close()
    # other statistics, fitted by the export itself from --data
    assert export_main([*args[:3], str(tmp_path / "p"), *args[4:], "--statistics", "residual", "--statistics-scope",
                        "position", "--data", str(synthetic_data), "--no-verify"]) == 0
    assert (run / "statistics" / "residual-position-8" / "t24_steps1_draws2.safetensors").is_file()
    assert Manifest.load(tmp_path / "p").data["scorer"]["statistics"]["kind"] == "residual"
