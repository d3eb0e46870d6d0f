"""training.evaluate on an untrained tiny run and a small synthetic dataset (random scorer: warnings expected)."""
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from runtime.errors import CheckpointError, DatasetLayoutError
from runtime.metrics import KEYS
from training import evaluate as ev
from training.data import AnomalyDataset, Sample, load_index
from training.models.diad import build_model
from training.models.presets import InferenceConfig, get_preset, tiny
from training.models.scorer import FeatureScorer
from training.run_folder import RunFolder
from training.synthetic import generate

pytestmark = pytest.mark.filterwarnings("ignore:scorer. no weights:UserWarning")
SIZE = tiny().image_size
STRIP_WIDTH = 5 * SIZE + 4 * 2  # five tiles, runtime.visualize.grid's 2-pixel padding


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    config = get_preset("tiny")
    config.injection, config.inference = "mid+sff", InferenceConfig(start_t=999, steps=10)  # the reference's
    config.scorer.statistics = "none"  # 1 - cos unless a test asks for statistics
    torch.manual_seed(0)
    run = RunFolder(tmp_path_factory.mktemp("run")).create()
    run.write_config({"model": config.to_dict()})
    run.save_model(build_model(config))
    return run.root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """4 classes x (1 good + 4 defect types) test images, 64 pixels (the dataset resizes them to SIZE)."""
    return generate(tmp_path_factory.mktemp("data") / "synthetic", train=1, test_good=1, test_defect=1, size=64)


def cli(run_dir: Path, data_dir: Path, *extra: str) -> None:
    assert ev.main(["--run", str(run_dir), "--data", str(data_dir), "--device", "cpu", *extra]) == 0


def read_scores(folder: Path) -> dict[str, dict[str, float]]:
    with open(folder / "scores.csv") as f:
        return {row["path"]: {m: float(row[m]) for m in ev.METHODS} for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def first(run_dir, data_dir) -> dict:
    """One command run (2 classes x 3 images, batches of 3), its files read before later runs replace them."""
    cli(run_dir, data_dir, "--steps", "2", "--pictures", "1", "--classes", "fabric,nut", "--limit", "3",
        "--batch-size", "3")
    out = run_dir / "evaluations" / "steps2"
    with open(out / "metrics.csv") as f:
        csv_rows = list(csv.DictReader(f))
    return {
        "out": out,
        "json": json.loads((out / "metrics.json").read_text()),
        "csv": csv_rows,
        "md": (out / "metrics.md").read_text(),
        "scores": read_scores(out),
        "pictures": {p.name: cv2.imread(str(p)).shape for p in (out / "images" / "eval").glob("*.png")},
        "histogram": (out / "images" / "score_histogram.png").is_file(),
    }


def test_writes_metrics_of_both_methods(first, run_dir, data_dir):
    record = first["json"]
    assert not (run_dir / "metrics.json").exists()  # --steps 2 is not the run's setting: under evaluations/
    assert record["settings"] == {
        "steps": 2, "start_t": 999, "injection": "mid+sff", "noise_seed": 0, "draws": 1, "statistics": "none",
        "tag": "steps2", "batch_size": 3,
        "device": "cpu",
    }
    assert record["dataset"] == {
        "path": str(data_dir), "layout": "mvtec-json", "classes": ["fabric", "nut"], "limit_per_class": 3, "images": 6,
        "good": 2, "defect": 4,
    }
    assert set(record["seconds_per_image"]) == {
        "encode", "steps", "decode", "score", "diad", "vae_decode", "vae_score", "wall"
    }
    assert record["scorer"]["weights"] is None or Path(record["scorer"]["weights"]).is_file()
    for method in ev.METHODS:
        rows = record["metrics"][method]
        assert [r["class"] for r in rows] == ["fabric", "nut", "mean"]
        for row in rows:
            assert set(KEYS) <= set(row) and all(0 <= row[k] <= 1 for k in KEYS)
    assert [(r["method"], r["class"]) for r in first["csv"]] == [
        (m, c) for m in ev.METHODS for c in ("fabric", "nut", "mean")
    ]
    md = first["md"]
    assert "## diad" in md and "## vae" in md and md.count("| mean |") == 2 and "I-AUROC" in md
    assert "diad vs vae (mean over classes): I-AUROC" in md
    assert len(first["scores"]) == 6


def test_pictures_are_five_tile_strips_of_defects(first):
    # one picture per class, a defect image (defects first); the histogram next to them
    assert sorted(first["pictures"]) == ["fabric_contamination_000.png", "nut_contamination_000.png"]
    assert set(first["pictures"].values()) == {(SIZE, STRIP_WIDTH, 3)}
    assert first["histogram"]


def test_rerun_replaces_results_and_scores_do_not_depend_on_batching(first, run_dir, data_dir):
    cli(run_dir, data_dir, "--steps", "2", "--pictures", "2", "--classes", "nut", "--limit", "3", "--batch-size", "1")
    out = first["out"]
    record = json.loads((out / "metrics.json").read_text())
    assert record["dataset"]["classes"] == ["nut"] and record["settings"]["batch_size"] == 1
    assert [r["class"] for r in record["metrics"]["diad"]] == ["nut", "mean"]
    assert not list((out / "images" / "eval").glob("fabric_*"))  # the first run's pictures are gone
    assert len(list((out / "images" / "eval").glob("nut_*"))) == 2
    again = read_scores(out)
    assert len(again) == 3
    for path, scores in again.items():  # batches of 1 now, of 3 in the first run
        for method in ev.METHODS:
            assert scores[method] == pytest.approx(first["scores"][path][method], abs=1e-5)


def test_overrides_are_recorded_under_their_tag(run_dir, data_dir):
    cli(run_dir, data_dir, "--steps", "1", "--start-t", "500", "--injection", "all", "--classes", "nut",
        "--limit", "2", "--pictures", "0")
    out = run_dir / "evaluations" / "steps1_t500_injection-all"
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert (settings["steps"], settings["start_t"], settings["injection"]) == (1, 500, "all")
    assert not list((out / "images" / "eval").iterdir())


def test_api_vae_method_is_decode_of_encode_mean(run_dir, data_dir):
    model = RunFolder(run_dir).load_model()
    scorer = FeatureScorer.from_config(model.config.scorer, SIZE, pretrained=False)
    samples = load_index(data_dir, ["wood"]).split("test")[:2]
    result = ev.evaluate(model, scorer, samples, steps=1, batch_size=2, pictures=[1], progress=False)
    assert result.settings == ev.Settings(steps=1, start_t=999, injection="mid+sff", noise_seed=0)
    assert result.maps["diad"].dtype == np.float32 and result.maps["vae"].shape == (2, SIZE, SIZE)
    assert list(result.pictures) == [1] and result.pictures[1]["diad"].shape == (SIZE, SIZE, 3)
    image = torch.stack([AnomalyDataset(samples, SIZE)[i]["image"] for i in range(2)])
    with torch.no_grad():
        vae_map, vae_score = scorer(image, model.vae.decode(model.vae.encode_mean(image)))
        _, diad_score = scorer(image, model.reconstruct(image, steps=1)["reconstruction"])
    np.testing.assert_allclose(result.scores["vae"], vae_score.numpy(), atol=1e-5)
    np.testing.assert_allclose(result.maps["vae"], vae_map.numpy(), atol=1e-5)
    np.testing.assert_allclose(result.scores["diad"], diad_score.numpy(), atol=1e-5)
    assert set(result.metrics()) == set(ev.METHODS)


def test_injection_switches_in_place():
    torch.manual_seed(0)
    config = get_preset("tiny")
    config.injection = "mid+sff"
    model = build_model(config).eval()
    with torch.no_grad():  # make skips 0..8 matter: their zero convs are zero at initialisation
        for p in model.sg.controlnet.controlnet_down_blocks.parameters():
            p.normal_(0, 0.05)
    image = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    mid = model.reconstruct(image, steps=1)["sample_latent"]
    ev.set_injection(model, "all")
    assert model.config.injection == "all"
    assert not torch.allclose(model.reconstruct(image, steps=1)["sample_latent"], mid)
    ev.set_injection(model, "mid+sff")
    assert torch.equal(model.reconstruct(image, steps=1)["sample_latent"], mid)


def test_errors_name_the_path(tmp_path, run_dir, data_dir, capsys):
    missing = tmp_path / "no_such_run"
    with pytest.raises(SystemExit) as exit_info:
        ev.run_cli(ev.main, ["--run", str(missing), "--data", str(data_dir)])
    assert exit_info.value.code == 2 and str(missing) in capsys.readouterr().err

    no_weights = RunFolder(tmp_path / "no_weights").create()
    no_weights.write_config(json.loads((run_dir / "config.json").read_text()))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ev.main(["--run", str(no_weights.root), "--data", str(data_dir), "--device", "cpu"])
    with pytest.raises(DatasetLayoutError, match="empty"):
        ev.main(["--run", str(run_dir), "--data", str(tmp_path / "empty"), "--device", "cpu"])
    with pytest.raises(SystemExit):  # an impossible DDIM plan is a usage error
        ev.main(["--run", str(run_dir), "--data", str(data_dir), "--steps", "2000"])


def sample(class_name: str, defect: str, number: int) -> Sample:
    label = int(defect != "good")
    mask = Path(f"{class_name}/{defect}/{number}_mask.png") if label else None
    return Sample(Path(f"{class_name}/{defect}/{number}.png"), mask, label, defect, class_name, "test")


def test_limit_keeps_both_labels_and_pictures_prefer_defects():
    samples = [sample(c, d, k) for c in ("a", "b") for d in ("good", "hole", "scratch") for k in range(3)]
    limited = ev.limit_per_class(samples, 4)
    assert [(s.class_name, s.defect) for s in limited if s.class_name == "a"] == [
        ("a", "good"), ("a", "good"), ("a", "hole"), ("a", "scratch")
    ]
    assert ev.limit_per_class(samples, None) == samples
    chosen = [samples[i] for i in ev.choose_pictures(samples, 3)]
    assert [(s.class_name, s.defect, s.image.stem) for s in chosen] == [
        ("a", "hole", "0"), ("a", "hole", "1"), ("a", "scratch", "0"),
        ("b", "hole", "0"), ("b", "hole", "1"), ("b", "scratch", "0"),
    ]


def test_settings_tag_names_the_overrides():
    config = get_preset("tiny")
    config.injection = "mid+sff"
    default = ev.Settings.of(config)
    assert default.tag(default) == ""
    assert ev.Settings.of(config, steps=5, injection="all").tag(default) == "steps5_injection-all"
    with pytest.raises(ValueError, match="injection"):
        ev.Settings.of(config, injection="none")


def test_statistics_scoring_fits_once_per_plan_and_is_tagged(run_dir, data_dir):
    """--statistics joint: statistics of the DDIM plan and of the VAE fitted on the training images, saved in the
    run folder, reused by the next evaluation; the results go to a tagged folder and say how they were scored."""
    args = ("--steps", "1", "--start-t", "24", "--classes", "fabric", "--limit", "2", "--pictures", "0")
    cli(run_dir, data_dir, *args, "--statistics", "joint", "--statistics-scope", "shared")
    folder = run_dir / "statistics" / "joint-shared-64"
    saved = sorted(p.name for p in folder.iterdir())
    assert saved == ["t24_steps1_draws1.safetensors", "vae.safetensors"]
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    out = run_dir / "evaluations" / "steps1_t24_statistics-joint-shared-64"
    record = json.loads((out / "metrics.json").read_text())
    assert record["settings"]["statistics"] == "joint-shared-64"
    assert "scored against normal statistics joint-shared-64" in (out / "metrics.md").read_text()
    first_scores = read_scores(out)
    cli(run_dir, data_dir, *args, "--statistics", "joint", "--statistics-scope", "shared")
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamp, "fitted again instead of reused"
    assert read_scores(out) == first_scores
    cli(run_dir, data_dir, *args)  # 1 - cos: other scores, in their own folder
    plain = read_scores(run_dir / "evaluations" / "steps1_t24")
    assert plain.keys() == first_scores.keys() and plain != first_scores
