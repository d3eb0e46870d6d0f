"""runtime.calibrate, runtime.threshold_rules and runtime.calibration_images: the FPR and F1 rules, folder listing,
the CLI on the synthetic data, errors and --dry-run."""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from helpers.model_folder import make_folder

from runtime import Detector
from runtime.calibrate import CalibrationWarning, calibrate, main
from runtime.calibration_images import LabelledImage, NoProgress, list_images, list_validation, progress_bar
from runtime.cli import run_cli
from runtime.datasets import find_mask
from runtime.errors import CalibrationError, DatasetLayoutError
from runtime.manifest import MANIFEST, Manifest
from runtime.preprocess import preprocess_mask, read_image, read_mask
from runtime.scoring import normalize_to_threshold
from runtime.synthetic import CLASSES, DEFECTS
from runtime.threshold_rules import f1_threshold, fpr_threshold, rejects

INF32 = np.float32(np.inf)


def above(value: float) -> float:
    """The smallest float32 above ``value``."""
    return float(np.nextafter(np.float32(value), INF32))


def allowed(rate: float, n: int) -> int:
    """``floor(rate * n)`` in exact decimal arithmetic."""
    return math.floor(Fraction(str(rate)) * n)


def assert_fpr_rule(values: np.ndarray, rate: float, threshold: float) -> None:
    """The FPR rule's defining property, whatever computed ``threshold``: at most ``floor(rate * n)`` values lie at
    or above it, and more at or above the next lower float32."""
    values = np.asarray(values, np.float32)
    lower = np.nextafter(np.float32(threshold), -INF32)
    assert np.sum(values >= np.float32(threshold)) <= allowed(rate, values.size) < np.sum(values >= lower)


def f1_oracle(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """scikit-learn's precision-recall curve: the best F1 and the highest threshold reaching it (``score >= t``)."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(np.ravel(labels), np.ravel(scores))
    p, r = precision[:-1], recall[:-1]
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    best = f1.max()
    return float(best), float(thresholds[f1 >= best - 1e-12].max())  # distinct F1s of counts differ by > 1e-11


# ------------------------------------------------------------------------------------------- the rules (pure)


@pytest.mark.parametrize(
    ("rate", "expected", "n_rejects"),
    [(0.05, above(95), 5), (0.049, above(96), 4), (0.29, above(71), 29), (0.0, above(100), 0), (0.999, above(1), 99)],
)
def test_fpr_rule_is_the_smallest_float32_above_the_k_plus_1_th_largest_value(rate, expected, n_rejects):
    values = np.random.default_rng(0).permutation(np.arange(1, 101, dtype=np.float32))  # 1 .. 100
    threshold = fpr_threshold(values, rate)
    assert threshold == expected
    assert rejects(values, threshold) == n_rejects <= rate * 100 + 1e-9
    lower = np.nextafter(np.float32(threshold), -INF32)  # any lower threshold rejects one value too many
    assert rejects(values, lower) == n_rejects + 1


def test_fpr_rule_with_ties_and_bad_rates():
    values = np.array([1.0, 2.0, 2.0, 2.0, 3.0], np.float32)
    assert fpr_threshold(values, 0.4) == above(2)  # k = 2: the third largest is 2, only 3 stays above
    assert rejects(values, above(2)) == 1
    assert fpr_threshold(values, 0.8) == above(1)  # k = 4: the fifth largest is 1
    for rate in (-0.1, 1.0):
        with pytest.raises(ValueError, match="rate"):
            fpr_threshold(values, rate)
    with pytest.raises(ValueError, match="NaN"):
        fpr_threshold(np.array([1.0, np.nan], np.float32), 0.1)


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.05, 0.1, 0.29, 0.5, 0.95])
def test_fpr_rule_against_a_search_over_every_candidate_threshold(rate):
    """An independent oracle: the count of values at or above ``t`` changes only just above a value, so the rule's
    threshold is the smallest of those candidates that lets at most ``floor(rate * n)`` values through."""
    values = np.round(np.random.default_rng(7).gamma(2.0, 1.0, 400), 2).astype(np.float32)  # many ties
    candidates = np.nextafter(np.unique(values), INF32)
    at_or_above = (values[None, :] >= candidates[:, None]).sum(axis=1)
    expected = candidates[at_or_above <= allowed(rate, values.size)].min()
    threshold = fpr_threshold(values, rate)
    assert threshold == expected
    assert np.mean(values >= np.float32(threshold)) <= rate  # the stated false-reject rate, on these values
    assert_fpr_rule(values, rate, threshold)


def test_f1_rule_is_the_best_highest_threshold():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = (rng.normal(size=300) + labels).astype(np.float32)
    scores[:20] = scores[20:40]  # ties
    threshold = f1_threshold(scores, labels)
    assert threshold == f1_oracle(scores, labels)[1]  # scikit-learn's precision-recall curve agrees

    def f1(t: float) -> float:
        flagged = scores >= t
        return 2 * np.sum(flagged & (labels == 1)) / (flagged.sum() + labels.sum())

    candidates = np.unique(scores)
    best = max(f1(t) for t in candidates)
    assert f1(threshold) == best
    assert threshold == max(t for t in candidates if f1(t) == best)


def test_progress_falls_back_without_tqdm(monkeypatch):
    assert type(progress_bar(2, "x", enabled=True)).__name__ == "tqdm"
    assert isinstance(progress_bar(2, "x", enabled=False), NoProgress)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    bar = progress_bar(2, "x", enabled=True)
    assert isinstance(bar, NoProgress)
    bar.update(2)
    bar.close()


# ------------------------------------------------------------------------------------------------- listing


def test_validation_folder_labels_and_mvtec_masks_match_the_datasets_records(synthetic_data):
    records = [json.loads(line) for line in (synthetic_data / "test.json").read_text().splitlines()]
    expected = {
        synthetic_data / r["filename"]: (r["label"], synthetic_data / r["maskname"] if r["label"] else None)
        for r in records
        if r["clsname"] == "fabric"
    }
    images, unlabelled = list_validation(synthetic_data / "fabric" / "test")
    assert {i.path: (i.label, i.mask) for i in images} == expected
    assert unlabelled == []
    images, unlabelled = list_validation(synthetic_data)  # the whole dataset: train/good counts as normal
    assert unlabelled == [synthetic_data / "contact_sheet.png"]
    assert not any("ground_truth" in i.path.parts for i in images)
    assert sum(i.label == 0 for i in images) == len(CLASSES) * 3  # 2 train + 1 test good per class


def _png(path: Path, value: int = 0) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8), value, np.uint8))
    return path


def test_explicit_mask_folder_and_missing_masks(tmp_path):
    val, masks = tmp_path / "val", tmp_path / "masks"
    _png(val / "good" / "a.png")
    crack, dent = _png(val / "crack" / "b.png"), _png(val / "dent" / "c.png")
    nested, flat = _png(masks / "crack" / "b_mask.png", 255), _png(masks / "c.png", 255)
    images, _ = list_validation(val, masks)
    assert [(i.path, i.label, i.mask) for i in images] == [(crack, 1, nested), (dent, 1, flat), (val / "good" / "a.png", 0, None)]
    flat.unlink()
    with pytest.raises(DatasetLayoutError, match=str(dent)):  # some masks but not all
        list_validation(val, masks)
    assert [i.mask for i in list_validation(val)[0]] == [None, None, None]  # no ground_truth: pixel FPR rule
    with pytest.raises(DatasetLayoutError, match="normal and defect"):
        list_validation(val / "crack")


def test_validation_masks_follow_the_datasets_rule_in_a_plain_class_folder(tmp_path):
    """<class>/ground_truth/<defect>/, <stem>_mask.<ext> before <stem>.<ext>: the rule of runtime.datasets."""
    val = tmp_path / "bolt"
    _png(val / "good" / "a.png")
    crack = _png(val / "crack" / "b.png")
    _png(val / "ground_truth" / "crack" / "b.png", 255)
    preferred = _png(val / "ground_truth" / "crack" / "b_mask.bmp", 255)
    images, _ = list_validation(val)
    assert [(i.path, i.mask) for i in images if i.label] == [(crack, preferred)]
    assert find_mask(val / "ground_truth" / "crack", "b") == preferred


def test_missing_or_empty_image_folder_is_named(tmp_path, capsys):
    missing, empty = tmp_path / "nowhere", tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    for folder, expected in ((missing, "folder not found"), (empty, "no image files")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, ["--model", str(tmp_path / "model"), "--images", str(folder)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert str(folder) in err and expected in err
    with pytest.raises(DatasetLayoutError, match="validation folder not found"):
        list_validation(missing)
    with pytest.raises(DatasetLayoutError, match="glob pattern matches no image files"):
        list_images(f"{empty}/*.png")


def test_images_from_a_glob_pattern(synthetic_data):
    files = list_images(f"{synthetic_data}/*/train/good/*.png")
    assert files == sorted(synthetic_data.glob("*/train/good/*.png")) and len(files) == 2 * len(CLASSES)


# ------------------------------------------------------------------------------------------ on the tiny model


def _good_folder(synthetic_data: Path, folder: Path) -> list[Path]:
    """The 4 normal training images of two classes in one folder, plus a corrupt ``broken.png``."""
    folder.mkdir()
    files = [shutil.copy(p, folder / f"{c}_{p.name}")
             for c in CLASSES[:2] for p in sorted((synthetic_data / c / "train" / "good").glob("*.png"))]
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return sorted(map(Path, files))


@pytest.fixture(scope="module")
def calibrated(model_dir, synthetic_data, tmp_path_factory):
    """A copy of the model folder calibrated by the CLI (--fpr 0.25) on 4 normal images and one corrupt file."""
    root = tmp_path_factory.mktemp("calibrate")
    model = root / "model"
    shutil.copytree(model_dir, model)
    good = _good_folder(synthetic_data, root / "good")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # one batch of the 4 readable images, as the test predicts them: bit-identical scores on any CPU
        assert main(["--model", str(model), "--images", str(root / "good"), "--fpr", "0.25", "--pixel-fpr", "0.01",
                     "--batch-size", "5"]) == 0
    return model, good, out.getvalue()


def test_cli_writes_fpr_thresholds_that_the_detector_applies(calibrated):
    """Wiring: the command's thresholds are the FPR rule's on the detector's raw outputs (the rules themselves are
    checked against independent computations above)."""
    model, good, printed = calibrated
    t = Manifest.load(model).thresholds
    assert t.calibrated and t.method == "fpr"
    with Detector(model) as detector:
        predictions = detector.predict([read_image(p) for p in good])
    scores = np.array([p.score for p in predictions], np.float32)
    maps = np.stack([p.raw_map for p in predictions])
    assert t.image == fpr_threshold(scores, 0.25)  # recomputed from the new detector's raw outputs
    assert t.pixel == fpr_threshold(maps, 0.01)
    assert (t.image_min, t.image_max) == (scores.min(), scores.max())
    assert (t.pixel_min, t.pixel_max) == (maps.min(), maps.max())

    labels = np.array([p.pred_label for p in predictions])
    assert labels.tolist() == (scores >= t.image).tolist()
    assert labels.sum() <= 0.25 * len(good)  # false-reject rate on the calibration set <= fpr
    assert t.details["false_reject_rate"]["image"] == labels.mean()
    assert t.details["fpr_rule"]["image"]["rejects"] == labels.sum()
    assert normalize_to_threshold(t.image, t.image, t.image_min, t.image_max) == 0.5
    pred_scores = np.array([p.pred_score for p in predictions])
    assert np.all(labels[pred_scores > 0.5]) and not np.any(labels[pred_scores < 0.5])
    for p in predictions:
        assert np.array_equal(p.pred_mask, p.anomaly_map >= 0.5)
        exact = p.raw_map >= t.pixel
        assert np.all(exact[p.anomaly_map > 0.5]) and not np.any(exact[p.anomaly_map < 0.5])
    assert (maps >= t.pixel).mean() <= 0.01

    skipped = t.details["calibration"]["skipped"]
    assert len(skipped) == 1 and "broken.png" in skipped[0]
    assert t.details["calibration"]["images"] == len(good)
    assert "4 normal images (1 unreadable skipped)" in printed and "broken.png" in printed
    assert f"image threshold {t.image:.6g}" in printed and "wrote the thresholds" in printed


@pytest.fixture(scope="module")
def detector(model_dir):
    with Detector(model_dir) as detector:
        yield detector


def test_validation_picks_f1_optimal_thresholds(detector, synthetic_data):
    """Checked against scikit-learn and the FPR rule's defining property (the wiring test above uses the rules)."""
    from sklearn.metrics import roc_auc_score

    fabric = synthetic_data / "fabric"
    good = sorted((fabric / "train" / "good").glob("*.png"))
    validation = [
        LabelledImage(p, int(p.parent.name != "good"),
                      fabric / "ground_truth" / p.parent.name / f"{p.stem}_mask.png" if p.parent.name != "good" else None)
        for p in sorted((fabric / "test").glob("*/*.png"))
    ]
    assert len(validation) == 1 + len(DEFECTS)
    with pytest.warns(CalibrationWarning, match="at least 100"):  # 2 images cannot resolve 1 %
        t = calibrate(detector, good, validation, fpr=0.01, pixel_fpr=0.001)
    calib = detector.predict([read_image(p) for p in good])
    val = detector.predict([read_image(v.path) for v in validation])
    size = detector.image_size
    scores = np.array([p.score for p in val], np.float32)
    labels = np.array([v.label for v in validation])
    maps = np.stack([p.raw_map for p in val])
    masks = np.stack([preprocess_mask(read_mask(v.mask), size) if v.mask else np.zeros((size, size), np.uint8)
                      for v in validation])
    image_f1, image_t = f1_oracle(scores, labels)
    pixel_f1, pixel_t = f1_oracle(maps, masks)
    assert t.method == "f1"
    assert (np.float32(t.image), np.float32(t.pixel)) == (np.float32(image_t), np.float32(pixel_t))
    assert t.details["f1_rule"]["image"]["f1"] == pytest.approx(image_f1)
    assert t.details["f1_rule"]["pixel"]["f1"] == pytest.approx(pixel_f1)
    assert t.details["f1_rule"]["image"]["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    calib_scores = np.array([p.score for p in calib], np.float32)
    assert t.details["fpr_rule"]["image"]["threshold"] == above(calib_scores.max())  # k = 0 with 2 images
    assert_fpr_rule(np.stack([p.raw_map for p in calib]), 0.001, t.details["fpr_rule"]["pixel"]["threshold"])
    assert t.image_min == min(calib_scores.min(), scores.min()) and t.image_max == max(calib_scores.max(), scores.max())
    assert any("at least 100" in w for w in t.details["warnings"])


def test_dry_run_leaves_the_manifest_unchanged(model_dir, synthetic_data, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    before = (model / MANIFEST).read_bytes()
    assert main(["--model", str(model), "--images", str(synthetic_data / "fabric" / "train" / "good"),
                 "--validation", str(synthetic_data / "fabric" / "test"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (model / MANIFEST).read_bytes() == before
    assert "dry run" in out and "method f1" in out and "F1-optimal threshold" in out
    assert "warning: 2 calibration images" in out
    assert not Manifest.load(model).thresholds.calibrated


def test_only_unreadable_images_is_an_error(detector, tmp_path):
    (tmp_path / "a.png").write_bytes(b"garbage")
    (tmp_path / "b.jpg").write_bytes(b"")  # OpenCV asserts on empty input: still a skipped file, not a crash
    with pytest.raises(DatasetLayoutError, match="none of the 2 image files"):
        calibrate(detector, tmp_path)


# ------------------------------------------------------------------------------------------ too few (issue 11.6)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The tiny real model folder of ``helpers.model_folder``: calibration refusals in milliseconds."""
    return make_folder(tmp_path_factory.mktemp("tiny") / "model").root


def test_one_image_is_accepted_as_a_path_but_refused_as_a_calibration(tiny_model, tmp_path, capsys):
    one = _png(tmp_path / "one.png", 90)
    assert list_images(one) == [one]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match="notes.txt: not an image file"):
        list_images(tmp_path / "notes.txt")
    before = (tiny_model / MANIFEST).read_bytes()
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--model", str(tiny_model), "--images", str(one), "--fpr", "0.05"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "one.png: 1 readable normal image(s) of 1; calibration needs at least 2 (20 to resolve" in err
    assert (tiny_model / MANIFEST).read_bytes() == before  # nothing degenerate written


def test_images_that_all_score_alike_are_refused(tiny_model, tmp_path):
    same = [_png(tmp_path / f"{k}.png", 90) for k in range(3)]
    with Detector(tiny_model) as detector, pytest.raises(CalibrationError, match="every image value of the 3 "):
        calibrate(detector, same, fpr=0.0)


def test_too_few_images_for_the_rate_are_warned_about_loudly(tiny_model, tmp_path, capsys):
    images = [_png(tmp_path / "good" / f"{k}.png", 40 * k) for k in range(3)]
    assert main(["--model", str(tiny_model), "--images", str(images[0].parent), "--fpr", "0.01", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "WARNING: 3 calibration images resolve false-reject rates only in steps of 1/3" in captured.err
    assert "needs at least 100" in captured.err


def test_calibration_records_the_vae_only_plan_and_the_detector_warns_on_another(tmp_path, capsys):
    """``--steps 0`` calibrates on VAE-only scores and records that plan; a detector running DDIM on those
    thresholds is warned, and so is one running VAE-only on thresholds calibrated with DDIM."""
    import warnings

    from runtime.schedule import ddim_plan

    root = make_folder(tmp_path / "model").root
    images = [_png(tmp_path / "good" / f"{k}.png", 40 * k) for k in range(4)]
    assert main(["--model", str(root), "--images", str(tmp_path / "good"), "--fpr", "0.25", "--steps", "0"]) == 0
    printed = capsys.readouterr().out
    assert "4 normal images (0 unreadable skipped), VAE-only (no DDIM steps); method fpr" in printed
    t = Manifest.load(root).thresholds
    assert t.details["plan"] == {"steps": 0, "start_t": 0}
    frames = [read_image(p) for p in images]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the plan calibrated for: no warning
        with Detector(root, steps=0) as detector:
            scores = np.array([p.score for p in detector.predict(frames)], np.float32)
    assert t.image == fpr_threshold(scores, 0.25)  # the VAE-only scores, not the DDIM ones
    with pytest.warns(UserWarning, match="calibrated with VAE-only .no DDIM steps., this detector runs DDIM 3 steps "
                                         "from t=399"), Detector(root) as ddim:
        assert not np.allclose([p.score for p in ddim.predict(frames)], scores, atol=1e-4)

    manifest = Manifest.load(root)  # the VAE-only plan as the default, thresholds calibrated with DDIM
    manifest.data["schedule"] = ddim_plan(0).to_dict()
    manifest.data["thresholds"] = {}
    manifest.save()
    assert main(["--model", str(root), "--images", str(tmp_path / "good"), "--fpr", "0.25", "--steps", "3",
                 "--start-t", "399"]) == 0
    assert Manifest.load(root).thresholds.details["plan"] == {"steps": 3, "start_t": 399}
    with pytest.warns(UserWarning, match="calibrated with DDIM 3 steps from t=399, this detector runs VAE-only"):
        Detector(root).close()
