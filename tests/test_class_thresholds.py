"""Per-class thresholds: the class descriptor, the nearest-class rule, per-class calibration, the manifest's checks,
the detector judging each frame by its class and the stream's AUROC over margins."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.model_folder import make_folder

from runtime import Detector
from runtime.calibrate import calibrate, main
from runtime.class_thresholds import DESCRIPTOR_SIZE, assign, describe, spread
from runtime.datasets import class_of
from runtime.detector import Prediction
from runtime.errors import DatasetLayoutError, ModelFolderError
from runtime.manifest import MANIFEST, Manifest, Thresholds
from runtime.preprocess import read_image
from runtime.records import GroundTruth
from runtime.sources import Frame
from runtime.threshold_rules import fpr_threshold

CLASSES = {"dark": 40, "bright": 200}  # mean grey level of each class's images


def test_the_descriptor_ignores_where_the_part_lies_and_how_it_is_turned():
    batch = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    moved = np.roll(np.rot90(batch, 1, axes=(2, 3)), 5, axis=3)
    d = describe(batch)
    assert d.shape == (2, DESCRIPTOR_SIZE)
    np.testing.assert_allclose(describe(moved), d, atol=1e-6)
    np.testing.assert_allclose(d[:, 6:].reshape(2, 3, -1).sum(axis=-1), 1.0, atol=1e-6)  # shares per channel
    assert not np.allclose(describe(batch + 1.0), d)  # a brighter part is another part


def test_the_nearest_class_is_measured_in_units_of_each_dimensions_spread():
    centres = np.array([[0.0, 0.0], [1.0, 1.5]])
    frame = np.array([[0.0, 1.5]])
    assert assign(frame, centres, np.array([1.0, 1.0])).tolist() == [1]  # plain distances: 2.25 against 1
    assert assign(frame, centres, np.array([0.1, 10.0])).tolist() == [0]  # the first dimension varies little


def test_spread_is_the_pooled_deviation_within_classes():
    descriptors = np.array([[0.0], [2.0], [10.0], [14.0]])
    labels = np.array([0, 0, 1, 1])
    assert spread(descriptors, labels) == pytest.approx([np.sqrt((1 + 1 + 4 + 4) / 4)])


def test_the_class_is_the_folder_above_the_split_or_above_good(tmp_path):
    assert class_of(Path("data/cal/capsule/test/good/001.png")) == "capsule"
    assert class_of(Path("visa/pcb1/train/good/a.JPG")) == "pcb1"
    assert class_of(Path("VisA/candle/Data/Images/Normal/0001.JPG")) == "candle"
    assert class_of(Path("line/gear/good/1.png")) == "gear"
    with pytest.raises(DatasetLayoutError, match=r"loose\.png: no class in the path; expected"):
        class_of(tmp_path / "loose.png")


def _class_images(root: Path, per_class: int = 6) -> dict[str, list[Path]]:
    """``root/<class>/test/good/*.png``: noisy 8x8 images around each class's grey level."""
    rng = np.random.default_rng(1)
    files: dict[str, list[Path]] = {}
    for name, level in CLASSES.items():
        folder = root / name / "test" / "good"
        folder.mkdir(parents=True)
        files[name] = []
        for k in range(per_class):
            image = np.clip(level + rng.normal(0, 25, (8, 8, 3)), 0, 255).astype(np.uint8)
            assert cv2.imwrite(str(folder / f"{k}.png"), image)
            files[name].append(folder / f"{k}.png")
    return files


@pytest.fixture(scope="module")
def per_class(tmp_path_factory):
    """A tiny model folder calibrated per class by the command (--fpr 0.2) on 6 images of each of 2 classes."""
    root = tmp_path_factory.mktemp("per-class")
    model = make_folder(root / "model").root
    files = _class_images(root / "images")
    assert main(["--model", str(model), "--images", str(root / "images" / "*" / "test" / "good" / "*.png"),
                 "--fpr", "0.2", "--per-class", "--batch-size", "4"]) == 0
    return model, files


def test_each_class_gets_the_fpr_rule_on_its_own_images_and_frames_are_judged_by_their_class(per_class):
    model, files = per_class
    t = Manifest.load(model).thresholds
    assert [c["name"] for c in t.classes] == sorted(CLASSES) and len(t.class_scale) == DESCRIPTOR_SIZE
    with Detector(model) as detector:
        for name, paths in files.items():
            predictions = detector.predict([read_image(p) for p in paths])
            scores = np.array([p.score for p in predictions], np.float32)
            rule = next(c for c in t.classes if c["name"] == name)
            assert rule["image"] == fpr_threshold(scores, 0.2)  # recomputed from this class's raw scores
            assert (rule["image_min"], rule["image_max"]) == (scores.min(), scores.max())
            assert [p.pred_class for p in predictions] == [name] * len(paths)
            assert [p.pred_label for p in predictions] == (scores >= rule["image"]).tolist()
            assert sum(p.pred_label for p in predictions) <= 0.2 * len(paths)
            assert t.details["per_class"][name]["recognised"] == len(paths)
    assert {c["image"] for c in t.classes} != {t.image}  # the classes' thresholds are their own


def test_per_class_thresholds_need_classes_in_the_path_and_no_validation(tmp_path, capsys):
    model = make_folder(tmp_path / "model").root
    files = _class_images(tmp_path / "images", per_class=3)
    loose = tmp_path / "loose"
    loose.mkdir()
    for k, path in enumerate(files["dark"]):
        (loose / f"{k}.png").write_bytes(path.read_bytes())
    with Detector(model) as detector:
        with pytest.raises(DatasetLayoutError, match="no class in the path"):
            calibrate(detector, loose, fpr=0.0, per_class=True)
        with pytest.raises(ValueError, match="give no validation images"):
            calibrate(detector, loose, tmp_path / "images", per_class=True)
    with pytest.raises(SystemExit):
        main(["--model", str(model), "--images", str(loose), "--per-class", "--validation", str(tmp_path)])
    assert "--per-class uses the FPR rule on normal images" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t["classes"].append(dict(t["classes"][0])), "class names repeat"),
        (lambda t: t.pop("class_scale"), "need the global image threshold and class_scale"),
        (lambda t: t["classes"][0].update(centre=[0.0] * 3), "centre"),
        (lambda t: t["classes"][1].update(image_min=1.0, image_max=1.0), r'classes\[1\] \("dark"\).*no normalisation'),
    ],
)
def test_the_manifest_refuses_inconsistent_class_thresholds(per_class, tmp_path, change, message):
    model, _ = per_class
    copy = tmp_path / "model"
    copy.mkdir()
    for path in model.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    data = json.loads((copy / MANIFEST).read_text())
    change(data["thresholds"])
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match=message):
        Manifest.load(copy)


def test_the_streams_auroc_ranks_margins_over_each_frames_own_threshold():
    """Raw scores rank a normal frame of a high-scoring class above a defect of a low-scoring one; margins do not."""
    rule = {"image_min": 0.0, "image_max": 1.0, "centre": [0.0] * DESCRIPTOR_SIZE}
    thresholds = Thresholds(image=0.3, pixel=0.5, image_min=0.0, image_max=1.0, pixel_min=0.0, pixel_max=1.0,
                            classes=[{"name": "a", "image": 0.5, **rule}, {"name": "b", "image": 0.1, **rule}],
                            class_scale=[1.0] * DESCRIPTOR_SIZE)
    truth, raw = GroundTruth(thresholds), GroundTruth(Thresholds())
    for score, label, name in ((0.45, 0, "a"), (0.55, 1, "a"), (0.05, 0, "b"), (0.15, 1, "b")):
        frame = Frame(0, 0.0, "test", np.zeros((2, 2, 3), np.uint8), label=label)
        rule_ = thresholds.image_rule(name)
        prediction = Prediction(score, np.zeros((2, 2)), None, score >= rule_[0], None, None, pred_class=name)
        truth.add(frame, prediction)
        raw.add(frame, prediction)
    assert raw.summary()["image_auroc"] == 0.75
    assert truth.summary()["image_auroc"] == 1.0 and truth.summary()["accuracy"] == 1.0
