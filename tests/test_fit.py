"""python -m training.fit end to end on a tiny generated plain folder (one optimiser step per training stage): the
stages, the held-out split, the calibrated model folder, the summary, the cache and resume, and bad input stopped
before any training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.cli import run_cli
from runtime.datasets import CALIBRATION, TRAIN, load_index
from runtime.manifest import Manifest
from training import fit

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # ONNX export and undefined-metric notes


def make_parts(root: Path, good: int = 9) -> Path:
    """``root/<class>/good`` (``good`` images) and ``root/<class>/scratch`` with masks, 64 px, two classes."""
    rng = np.random.default_rng(0)
    for name, level in (("bolt", 90), ("nut", 170)):
        for i in range(good):
            image = np.clip(level + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
            _write(root / name / "good" / f"{i:03d}.png", image)
        for i in range(2):
            image = np.clip(level + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
            image[20:36, 20:36] = 255 - level
            mask = np.zeros((64, 64), np.uint8)
            mask[20:36, 20:36] = 255
            _write(root / name / "scratch" / f"{i:03d}.png", image)
            _write(root / name / "ground_truth" / "scratch" / f"{i:03d}_mask.png", mask)
    return root


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def _argv(data: Path, tmp: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(tmp / "models" / "parts"), "--run", str(tmp / "runs" / "parts"),
            "--device", "cpu", "--max-steps-autoencoder", "1", "--max-steps-train", "1", "--image-size", "192", *extra]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One fit of the tiny plain folder: (its folder, the tmp folder, the command's output)."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("fit")
    data = make_parts(tmp / "my parts")  # a space in the path
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert fit.main(_argv(data, tmp)) == 0
    return data, tmp, out.getvalue()


def test_images_to_a_calibrated_model_folder(fitted):
    data, tmp, output = fitted
    run, model = tmp / "runs" / "parts", tmp / "models" / "parts"
    split = json.loads((run / "split.json").read_text())
    held = {data / p for p in split[CALIBRATION]}
    assert len(held) == 4 and not held & {data / p for p in split[TRAIN]}  # 2 per class, never trained on
    index = load_index(run / "split.json")
    assert {s.image for s in index.split(CALIBRATION)} == held
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == str(run / "split.json") and config["trained"]["steps"] == 1
    assert config["autoencoder_trained"]["steps"] == 1
    statistics = next((run / "statistics").rglob("vae.safetensors"))
    assert statistics.is_file()

    manifest = Manifest.load(model)
    assert manifest.image_size == 192 and config["model"]["image_size"] == 192  # --image-size reached both stages
    thresholds = manifest.thresholds
    assert thresholds.calibrated and [c["name"] for c in thresholds.classes] == ["bolt", "nut"]
    assert thresholds.details["calibration"]["images"] == 4
    assert thresholds.details["fpr_rule"]["image"]["target"] == 0.05
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"]["images"] == 6 and metrics["dataset"]["defect"] == 4  # test images only

    lines = output.splitlines()
    assert any(line.startswith("[1/7] checking") for line in lines)
    assert any(line.startswith("[7/7] calibration on the 4 held-out normal images") for line in lines)
    assert f"model folder {model} (" in output and "manifest.json" in output
    assert any(line.startswith("I-AUROC ") and line.endswith(str(run / "metrics.md")) for line in lines)
    assert lines[-2] == f"  python -m runtime.stream --model {model} --source '{data / 'bolt' / 'scratch'}'"
    assert lines[-1].startswith("took ") and "autoencoder" in lines[-1] and "calibration" in lines[-1]


def test_a_second_run_skips_what_is_done_and_a_killed_stage_resumes(fitted, capsys):
    data, tmp, _ = fitted
    run, model = tmp / "runs" / "parts", tmp / "models" / "parts"
    onnx = {p: p.stat().st_mtime_ns for p in model.glob("*.onnx")}
    assert fit.main(_argv(data, tmp)) == 0
    output = capsys.readouterr().out
    assert output.count("skipped") == 6 and {p: p.stat().st_mtime_ns for p in model.glob("*.onnx")} == onnx

    (run / ".train-done").unlink()  # as if DiAD training had been killed: its checkpoint is there
    args = fit.parse_args(_argv(data, tmp))
    stages = fit.Stages()
    fit.train_stages(args, stages)
    output = capsys.readouterr().out
    assert "DiAD: 16 min of training, resumed from its checkpoint" in output and stages.ran
    assert (run / ".train-done").is_file() and json.loads((run / "config.json").read_text())["trained"]["steps"] == 1


def test_without_defect_images_it_says_why_there_is_no_auroc(fitted, capsys):
    data, tmp, _ = fitted
    args = fit.parse_args(_argv(data, tmp))
    index = load_index(args.run / "split.json")
    normal_only = replace(index, samples=tuple(s for s in index.samples if s.label == 0))
    why = fit.statistics_and_evaluation(args, normal_only, fit.Stages())
    assert why.startswith("the dataset has no defect images") and f"skipped: {why}" in capsys.readouterr().out
    assert f"AUROC not measured: {why}" in fit.summary(args, normal_only, why)


def test_bad_input_stops_before_any_training(tmp_path, capsys):
    data = make_parts(tmp_path / "parts", good=6)  # 5 training images: fewer than 4 + 2
    (data / "nut" / "good" / "003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(SystemExit) as exit_:
        run_cli(fit.main, _argv(data, tmp_path))
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and "3 error(s), listed above; nothing was trained" in err
    assert f"error: {data / 'nut' / 'good' / '003.png'}: not a valid PNG file" in out
    for name in ("bolt", "nut"):
        assert f"error: {data / name / 'good'}: class '{name}' has 5 normal training image(s)" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()

    (tmp_path / "models" / "parts").mkdir(parents=True)
    (tmp_path / "models" / "parts" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        run_cli(fit.main, _argv(make_parts(tmp_path / "more"), tmp_path))
    assert "is not a model folder" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_a_run_fitted_on_other_data_is_kept(fitted, tmp_path, capsys):
    _, tmp, _ = fitted
    other = make_parts(tmp_path / "other")
    with pytest.raises(SystemExit):
        run_cli(fit.main, _argv(other, tmp))
    assert f"this run was fitted on {tmp / 'my parts'}, not {other}" in capsys.readouterr().err
