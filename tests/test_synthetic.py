"""runtime.synthetic, training.synthetic_parts (both drawn with runtime.scenes) and python -m training.synthetic:
exact defect masks, determinism, layout, safe overwrite."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from runtime import scenes, synthetic
from runtime.datasets.mvtec import load as load_mvtec_folders
from runtime.errors import DatasetLayoutError
from runtime.preprocess import read_image, read_mask
from training import synthetic as command
from training import photo_textures as photos
from training import synthetic_parts as parts
from training.data import load_index

SMALL = {"size": 128, "train": 2, "test_good": 1, "test_defect": 1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return command.generate(tmp_path_factory.mktemp("synthetic") / "data", seed=0, **SMALL)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ renderer


@pytest.mark.parametrize("class_name", synthetic.CLASSES)
def test_defects_change_exactly_the_masked_pixels(class_name):
    for defect in synthetic.DEFECTS:
        for seed in range(3):
            clean, none = synthetic.render(class_name, np.random.default_rng(seed))
            image, mask = synthetic.render(class_name, np.random.default_rng(seed), defect)
            assert image.shape == (256, 256, 3) and image.dtype == np.uint8 and mask.dtype == np.uint8
            assert not none.any() and set(np.unique(mask)) == {0, 1}
            changed = (image != clean).any(axis=2)
            assert not (changed & (mask == 0)).any(), f"{class_name}/{defect}: change outside the mask"
            assert changed[mask == 1].mean() > 0.99, f"{class_name}/{defect}: mask covers unchanged pixels"
            assert synthetic.MIN_AREA <= mask.mean() <= synthetic.MAX_AREA


def test_images_vary_within_a_class_and_differ_between_classes():
    images = {
        c: [synthetic.render(c, np.random.default_rng(s))[0].astype(np.float32) for s in range(2)]
        for c in synthetic.CLASSES
    }
    for c, (a, b) in images.items():
        assert np.abs(a - b).mean() > 3, f"{c}: two normal images are nearly the same"
        assert a.std() > 10, f"{c}: flat image"
    means = [images[c][0].mean(axis=(0, 1)) for c in synthetic.CLASSES]
    assert min(np.abs(m - n).max() for i, m in enumerate(means) for n in means[i + 1 :]) > 5


def test_render_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown class 'bolt'"):
        synthetic.render("bolt", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown defect 'dent'"):
        synthetic.render("nut", np.random.default_rng(0), "dent")


def test_conveyor_is_reproducible_and_labelled():
    first = [next(frames) for frames in [synthetic.conveyor(7, defect_rate=0.5, size=96)] for _ in range(12)]
    again = synthetic.conveyor(7, defect_rate=0.5, size=96)
    for rgb, mask, class_name, defect in first:
        rgb2, mask2, class2, defect2 = next(again)
        assert np.array_equal(rgb, rgb2) and np.array_equal(mask, mask2) and (class_name, defect) == (class2, defect2)
        assert rgb.shape == (96, 96, 3) and class_name in synthetic.CLASSES
        assert mask.any() == (defect != synthetic.GOOD) and defect in (synthetic.GOOD, *synthetic.DEFECTS)
    assert {d for *_, d in first} - {synthetic.GOOD}


# ------------------------------------------------------------------------------------------- command


def test_dataset_loads_in_both_mvtec_forms(dataset):
    index = load_index(dataset)
    assert index.layout == "mvtec-json"
    assert len(index.classes) >= 3 and len({s.defect for s in index.samples} - {"good"}) >= 3
    per_class = 2 + 1 + len(synthetic.DEFECTS)
    assert len(index.samples) == per_class * len(synthetic.CLASSES)
    folders = load_mvtec_folders(dataset)
    assert sorted(folders.samples, key=lambda s: s.image) == sorted(index.samples, key=lambda s: s.image)


def test_masks_are_non_empty_exactly_for_defect_images(dataset):
    for sample in load_index(dataset).samples:
        image = read_image(sample.image)
        assert image.shape == (128, 128, 3)
        if sample.label == 0:
            assert sample.mask is None
            continue
        mask = read_mask(sample.mask)
        assert set(np.unique(mask)) == {0, 255} and mask.shape == image.shape[:2]


def test_files_match_the_renderer(dataset):
    index = load_index(dataset)
    sample = next(s for s in index.samples if s.class_name == "nut" and s.defect == "stain")
    rgb, mask = synthetic.render(
        "nut",
        command.sample_rng(0, "nut", "stain", 0),
        "stain",
        128,
    )
    assert np.array_equal(read_image(sample.image), rgb) and np.array_equal(read_mask(sample.mask), mask * 255)


def test_generation_is_deterministic(dataset, tmp_path):
    same = command.generate(tmp_path / "same", seed=0, **SMALL)
    other = command.generate(tmp_path / "other", seed=1, **SMALL)
    assert files(same) == files(dataset)
    different = files(other)
    assert different.keys() == files(dataset).keys()
    assert all(different[k] != v for k, v in files(dataset).items() if k.endswith(".png"))


def test_marker_and_contact_sheet(dataset):
    marker = json.loads((dataset / command.MARKER).read_text())
    assert marker["generator"] == command.GENERATOR and marker["seed"] == 0 and marker["size"] == 128
    assert marker["kind"] == "demo" and marker["classes"] == list(synthetic.CLASSES)
    sheet = read_image(dataset / command.CONTACT_SHEET)
    columns, rows = command.SHEET_GOOD + len(synthetic.DEFECTS), len(synthetic.CLASSES)
    assert sheet.shape == (rows * 258 - 2, columns * 258 - 2, 3)


def test_rerun_replaces_its_own_output_and_refuses_anything_else(tmp_path):
    out = command.generate(tmp_path / "data", seed=3, **SMALL)
    (out / "stray.txt").write_text("from before")
    command.generate(out, seed=3, **SMALL)
    assert not (out / "stray.txt").exists() and (out / command.MARKER).is_file()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(DatasetLayoutError, match="not empty and not a synthetic dataset"):
        command.generate(foreign, **SMALL)
    assert (foreign / "holiday.jpg").read_bytes() == b"not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "photos"]  # no scratch folders left


def test_an_interrupted_run_leaves_no_dataset(tmp_path, monkeypatch):
    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "contact_sheet", fail)
    with pytest.raises(KeyboardInterrupt):
        command.generate(tmp_path / "data", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path, capsys):
    assert (
        command.main(
            [
                str(tmp_path / "cli"),
                "--seed",
                "2",
                "--size",
                "96",
                "--train",
                "1",
                "--test-good",
                "0",
                "--test-defect",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"wrote {len(synthetic.CLASSES) * (1 + len(synthetic.DEFECTS))} images" in out and "contact_sheet.png" in out
    with pytest.raises(SystemExit):
        command.main([str(tmp_path / "bad"), "--train", "0"])
    assert "need seed >= 0" in capsys.readouterr().err


def test_command_refuses_an_unknown_kind(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown kind 'toys'"):
        command.generate(tmp_path / "data", kind="toys", **SMALL)
    with pytest.raises(SystemExit):
        command.main([str(tmp_path / "bad"), "--kind", "toys"])
    assert "invalid choice: 'toys'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- the second set: parts

LOWEST_GAIN = 0.9 * (1 - 0.25 / math.sqrt(2))  # the darkest lighting of render: gain 0.9, the corner of a ramp


@pytest.mark.parametrize("class_name", parts.CLASSES)
def test_parts_defects_change_exactly_the_masked_pixels(class_name):
    least = math.floor(scenes.VISIBLE * LOWEST_GAIN * 255) - 1  # a visible change after lighting and rounding
    for defect in parts.DEFECTS:
        for seed in range(3):
            clean, none = parts.render(class_name, np.random.default_rng(seed))
            image, mask = parts.render(class_name, np.random.default_rng(seed), defect)
            assert image.shape == (256, 256, 3) and image.dtype == np.uint8 and mask.dtype == np.uint8
            assert not none.any() and set(np.unique(mask)) == {0, 1}
            change = np.abs(image.astype(np.int16) - clean).max(axis=2)
            assert not change[mask == 0].any(), f"{class_name}/{defect}: change outside the mask"
            assert (change[mask == 1] >= least).mean() > 0.99, f"{class_name}/{defect}: mask covers small changes"
            assert scenes.MIN_AREA <= mask.mean() <= scenes.MAX_AREA

            # before lighting, noise and rounding the rule is exact: every masked pixel moves by VISIBLE or more
            rng = np.random.default_rng(seed)
            scene = parts.SCENES[class_name](rng, 128)
            defective, exact = scenes.add_defect(rng, scene, parts.DEFECT_MAKERS[defect])
            change = np.abs(defective - scene.image).max(axis=2)
            assert not change[~exact].any() and change[exact].min() >= scenes.VISIBLE - 1e-6


@pytest.mark.parametrize("size", [64, 128])
def test_parts_defect_areas_stay_in_range_at_small_sizes(size):
    for class_name in parts.CLASSES:
        for defect in parts.DEFECTS:
            for seed in range(3, 6):
                _, mask = parts.render(class_name, np.random.default_rng(seed), defect, size)
                assert scenes.MIN_AREA <= mask.mean() <= scenes.MAX_AREA, f"{class_name}/{defect}/{seed} at {size}"


def test_parts_render_is_deterministic_and_varies():
    for class_name in parts.CLASSES:
        first = parts.render(class_name, np.random.default_rng(5), "crack", 96)
        again = parts.render(class_name, np.random.default_rng(5), "crack", 96)
        assert all(np.array_equal(a, b) for a, b in zip(first, again)), f"{class_name}: not reproducible"
    images = {
        c: [parts.render(c, np.random.default_rng(s))[0].astype(np.float32) for s in range(2)] for c in parts.CLASSES
    }
    for c, (a, b) in images.items():
        assert np.abs(a - b).mean() > 3, f"{c}: two normal images are nearly the same"
        assert a.std() > 10, f"{c}: flat image"
    means = [images[c][0].mean(axis=(0, 1)) for c in parts.CLASSES]
    assert min(np.abs(m - n).max() for i, m in enumerate(means) for n in means[i + 1 :]) > 5


def test_parts_is_a_different_set_with_the_same_interface():
    assert len(parts.CLASSES) == len(parts.DEFECTS) == 4 and parts.GOOD == synthetic.GOOD
    assert not set(parts.CLASSES) & set(synthetic.CLASSES) and not set(parts.DEFECTS) & set(synthetic.DEFECTS)
    with pytest.raises(ValueError, match="unknown class 'nut'"):
        parts.render("nut", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown defect 'stain'"):
        parts.render("gear", np.random.default_rng(0), "stain")


def test_command_writes_the_parts_dataset(tmp_path, capsys):
    root = tmp_path / "parts"
    argv = [str(root), "--seed", "4", "--size", "96", "--train", "2", "--test-good", "1", "--test-defect", "1"]
    assert command.main([*argv, "--kind", "parts"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {len(parts.CLASSES) * (2 + 1 + len(parts.DEFECTS))} images (tile, carpet, gear, pill" in out
    index = load_index(root)
    assert index.layout == "mvtec-json" and index.classes == sorted(parts.CLASSES)
    assert len(index.split("train")) == 2 * 4 and len(index.split("test")) == (1 + len(parts.DEFECTS)) * 4
    assert {s.defect for s in index.samples} == {parts.GOOD, *parts.DEFECTS}
    for sample in index.samples:
        assert read_image(sample.image).shape == (96, 96, 3)
        assert (sample.mask is None) == (sample.label == 0)
        if sample.mask is not None:
            assert set(np.unique(read_mask(sample.mask))) == {0, 255}
    sample = next(s for s in index.samples if s.class_name == "gear" and s.defect == "cut")
    rgb, mask = parts.render("gear", command.sample_rng(4, "gear", "cut", 0, "parts"), "cut", 96)
    assert np.array_equal(read_image(sample.image), rgb) and np.array_equal(read_mask(sample.mask), mask * 255)
    marker = json.loads((root / command.MARKER).read_text())
    assert marker["kind"] == "parts" and marker["classes"] == list(parts.CLASSES)
    assert marker["defects"] == list(parts.DEFECTS)
    sheet = read_image(root / command.CONTACT_SHEET)
    assert sheet.shape == (4 * 258 - 2, (command.SHEET_GOOD + len(parts.DEFECTS)) * 258 - 2, 3)
    command.main([*argv, "--kind", "demo"])  # a previous synthetic dataset of either kind may be replaced
    assert json.loads((root / command.MARKER).read_text())["kind"] == "demo"


def test_the_parts_set_as_a_plain_folder_is_the_same_images_and_split(tmp_path, capsys):
    argv = ["--seed", "4", "--size", "64", "--train", "2", "--test-good", "1", "--test-defect", "1", "--kind", "parts"]
    assert command.main([str(tmp_path / "mvtec"), *argv]) == 0
    assert command.main([str(tmp_path / "plain"), *argv, "--layout", "folder"]) == 0
    assert "(folder layout)" in capsys.readouterr().out
    mvtec, plain = load_index(tmp_path / "mvtec"), load_index(tmp_path / "plain")
    assert plain.layout == "folder" and not plain.problems and not (tmp_path / "plain" / command.CONTACT_SHEET).exists()

    def key(s):
        return (s.class_name, s.defect, s.split, s.image.read_bytes(), s.mask.read_bytes() if s.mask else None)

    assert sorted(map(key, mvtec.samples)) == sorted(map(key, plain.samples))
    assert (tmp_path / "plain" / "gear" / "ground_truth" / "cut" / "000_mask.png").is_file()


# ----------------------------------------------------------------------- the third set: real photographs


def test_photographs_are_split_by_region_so_no_test_pixel_is_trained_on():
    rows = np.repeat(np.arange(512, dtype=np.float32)[:, None], 512, axis=1) / 511  # each pixel holds its row
    for seed in range(20):
        patch = photos.crop(np.random.default_rng(seed), np.dstack([rows] * 3), (0, photos.TRAIN_ROWS), photos.CROP)
        assert patch.max() * 511 < photos.TRAIN_ROWS
        patch = photos.crop(np.random.default_rng(seed), np.dstack([rows] * 3), (photos.TRAIN_ROWS, 512), photos.CROP)
        assert patch.min() * 511 >= photos.TRAIN_ROWS


@pytest.mark.parametrize("class_name", photos.CLASSES)
def test_photograph_defects_are_masked_where_they_are_visible(class_name):
    for defect in photos.DEFECTS:
        for seed in range(2):
            image, mask = photos.render(class_name, np.random.default_rng(seed), defect, 128)
            assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
            assert photos.MIN_AREA <= mask.mean() <= photos.MAX_AREA, f"{class_name}/{defect}/{seed}"
        rng = np.random.default_rng(7)
        clean = photos.capture(rng, photos.crop(rng, photos.photo(photos.SOURCES[class_name]), (320, 512), 128))
        defective, exact = photos.add_defect(rng, clean, defect)
        change = np.abs(defective - clean).max(axis=2)
        assert not change[~exact].any() and change[exact].min() >= photos.VISIBLE - 1e-6


def test_command_writes_the_photograph_dataset(tmp_path):
    root = command.generate(tmp_path / "photos", seed=2, kind="photos", **SMALL)
    index = load_index(root)
    assert index.classes == sorted(photos.CLASSES) and {s.defect for s in index.samples} == {"good", *photos.DEFECTS}
    train = next(s for s in index.split("train") if s.class_name == "gravel")
    expected, _ = photos.render_train("gravel", command.sample_rng(2, "gravel", "train", 0, "photos"), 128)
    assert np.array_equal(read_image(train.image), expected)
    test = next(s for s in index.samples if s.class_name == "brick" and s.defect == "hole")
    rgb, mask = photos.render("brick", command.sample_rng(2, "brick", "hole", 0, "photos"), "hole", 128)
    assert np.array_equal(read_image(test.image), rgb) and np.array_equal(read_mask(test.mask), mask * 255)
