"""runtime.datasets: the plain folder layout, the one mask-name rule, problems named before training (bad input, each
a test), the held-out calibration split; torch-free."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.datasets import CALIBRATION, TRAIN, class_of, find_mask, inspect, load_index
from runtime.datasets.split_file import MIN_CALIBRATION_IMAGES, hold_out, hold_out_problems, record
from runtime.errors import DatasetLayoutError, DatasetWarning, ImageReadError
from runtime.preprocess import read_image
from helpers.gif import OPENCV_READS_GIF, write_gif

SIDE = 24
pytestmark = pytest.mark.filterwarnings("error::runtime.errors.DatasetWarning")  # each test expects its own


def write(path: Path, image: np.ndarray, ext: str | None = None) -> Path:
    """Encode ``image`` (BGR, BGRA, grayscale; uint8 or uint16) in the format of the path's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(ext or path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())  # also for names OpenCV's imwrite may not take
    return path


def picture(seed: int = 0, side: int = SIDE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def mask(side: int = SIDE) -> np.ndarray:
    m = np.zeros((side, side), np.uint8)
    m[8:16, 8:16] = 255
    return m


def plain_class(root: Path, good: int = 10, defects: dict[str, int] | None = None, masks: bool = True) -> Path:
    for i in range(good):
        write(root / "good" / f"{i:03d}.png", picture(i))
    for defect, n in (defects or {"scratch": 2}).items():
        for i in range(n):
            write(root / defect / f"{i:03d}.png", picture(100 + i))
            if masks:
                write(root / "ground_truth" / defect / f"{i:03d}_mask.png", mask())
    return root


def problems(index, error: bool | None = None) -> list[str]:
    return [str(p) for p in index.problems if error is None or p.error == error]


def quiet_load(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        return load_index(path, **kwargs)


# -------------------------------------------------------------------------------------------- plain folder


def test_the_natural_layout_counts_its_defect_folders(tmp_path):
    """CLASS/good beside CLASS/scratch: scratch holds defect images (issue 23: it was ignored without a word)."""
    for name in ("bolt", "nut"):
        plain_class(tmp_path / name, defects={"scratch": 3, "dent": 1})
    index = load_index(tmp_path)
    assert index.layout == "folder" and index.classes == ["bolt", "nut"] and not index.problems
    summary = index.summary()["bolt"]
    assert (summary["train"], summary["test_good"], summary["test_defect"], summary["masks"]) == (8, 2, 4, 4)
    assert summary["defects"] == {"dent": 1, "scratch": 3}
    assert [s.image.name for s in index.split("test") if s.label == 0 and s.class_name == "bolt"] == [
        "004.png", "009.png"]  # every 5th normal image, by name
    scratch = next(s for s in index.samples if s.defect == "scratch")
    assert scratch.mask == tmp_path / "bolt" / "ground_truth" / "scratch" / f"{scratch.image.stem}_mask.png"


def test_a_single_class_folder_and_an_explicit_split(tmp_path):
    root = tmp_path / "line"
    for i in range(3):
        write(root / "good" / "train" / f"{i}.png", picture(i))
    write(root / "good" / "test" / "t.png", picture(9))
    index = load_index(root)
    assert index.classes == ["line"] and len(index.split("train")) == 3 and len(index.split("test")) == 1
    write(root / "good" / "loose.png", picture(7))
    with pytest.raises(DatasetLayoutError, match=r"good: 1 image\(s\) directly in good/ beside good/train/"):
        load_index(root)


def test_one_rule_for_mask_names_in_every_layout(tmp_path):
    """<stem>_mask.<ext> first, then <stem>.<ext>, any image extension; MVTec and the plain folder alike."""
    folder = tmp_path / "masks"
    write(folder / "a.png", mask())
    write(folder / "a_mask.bmp", mask())
    write(folder / "b.png", mask())
    assert find_mask(folder, "a") == folder / "a_mask.bmp" and find_mask(folder, "b") == folder / "b.png"
    assert find_mask(folder, "c") is None
    mvtec = tmp_path / "mvtec" / "bottle"
    for i in range(2):
        write(mvtec / "train" / "good" / f"{i}.png", picture(i))
    write(mvtec / "test" / "crack" / "0.png", picture(5))
    write(mvtec / "ground_truth" / "crack" / "0.png", mask())  # the plain name, accepted in MVTec AD too
    index = load_index(tmp_path / "mvtec")
    assert index.layout == "mvtec" and index.split("test")[0].mask == mvtec / "ground_truth" / "crack" / "0.png"


def test_the_class_of_an_image_path_in_each_layout(tmp_path):
    assert class_of(Path("d/capsule/train/good/1.png")) == "capsule"
    assert class_of(Path("VisA/candle/Data/Images/Normal/0001.JPG")) == "candle"
    assert class_of(Path("line/gear/good/1.png")) == "gear"
    with pytest.raises(DatasetLayoutError, match=r"loose\.png: no class in the path; expected"):
        class_of(tmp_path / "loose.png")


# ---------------------------------------------------------------------------- bad input: the layout


def test_an_empty_folder_says_so_and_shows_the_layouts(tmp_path):
    with pytest.raises(DatasetLayoutError) as error:
        load_index(tmp_path)
    message = str(error.value)
    assert f"{tmp_path}: empty folder" in message and "plain folder" in message and "MVTec AD" in message


def test_a_class_without_images_is_named(tmp_path):
    plain_class(tmp_path / "bolt")
    (tmp_path / "nut" / "good").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError) as error:
        load_index(tmp_path)
    assert f"{tmp_path / 'nut' / 'good'}: class 'nut' has no normal images; expected" in str(error.value)


def test_images_directly_in_the_folder_are_told_where_to_go(tmp_path):
    write(tmp_path / "a.png", picture())
    with pytest.raises(DatasetLayoutError, match=rf"1 image file\(s\) directly in this folder .*{tmp_path / 'good'}/"):
        load_index(tmp_path)


def test_a_folder_the_layout_does_not_know_is_named(tmp_path):
    plain_class(tmp_path / "bolt")
    write(tmp_path / "bolt" / "scratch" / "close-ups" / "x.png", picture())  # nested in a defect folder
    (tmp_path / "notes").mkdir()  # no good/ inside: not a class
    write(tmp_path / "notes" / "n.png", picture())
    (tmp_path / "bolt" / "good" / "readme.txt").write_text("shot on line 3")
    with pytest.warns(DatasetWarning) as caught:
        index = load_index(tmp_path)
    said = [str(w.message) for w in caught]
    assert any(s.startswith(f"{tmp_path / 'notes'}: a folder the layout does not know") for s in said)
    assert any(s.startswith(f"{tmp_path / 'bolt' / 'scratch' / 'close-ups'}: a folder the layout") for s in said)
    assert any("1 file(s) that are not images ignored (readme.txt)" in s for s in said)
    assert index.classes == ["bolt"] and not index.errors


def test_an_unknown_folder_in_an_mvtec_class_is_named(tmp_path):
    for i in range(2):
        write(tmp_path / "bottle" / "train" / "good" / f"{i}.png", picture(i))
    (tmp_path / "bottle" / "validation").mkdir()
    index = load_index(tmp_path, strict=False)
    assert problems(index, error=False) == [
        (f"{tmp_path / 'bottle' / 'validation'}: a folder the layout does not know, ignored; expected train/, test/ "
         "and ground_truth/")]


def test_a_folder_visa_does_not_list_is_named(tmp_path):
    rows = ["object,split,label,image,mask"] + [f"candle,train,normal,candle/Data/Images/Normal/{i}.JPG," for i in range(2)]
    for i in range(2):
        write(tmp_path / "candle" / "Data" / "Images" / "Normal" / f"{i}.JPG", picture(i), ".jpg")
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "capsules").mkdir()
    index = load_index(tmp_path, strict=False)
    assert index.layout == "visa" and [str(p.path) for p in index.problems] == [str(tmp_path / "capsules")]


def test_a_defect_folder_without_masks(tmp_path):
    plain_class(tmp_path / "bolt", defects={"scratch": 2}, masks=False)
    index = load_index(tmp_path, strict=False)  # no masks at all: allowed, pixel metrics are not measured
    assert not index.errors and index.summary()["bolt"]["masks"] == 0
    assert problems(index) == [(f"{tmp_path / 'bolt' / 'scratch'}: 2 defect image(s) without a mask (first: 000.png); "
                                f"expected {tmp_path / 'bolt' / 'ground_truth' / 'scratch'}/<stem>_mask.png or "
                                "<stem>.png (any image extension); masks are optional: without them pixel metrics "
                                "(P-AUROC, AU-PRO) are not measured")]
    plain_class(tmp_path / "bolt", good=0, defects={"dent": 1})  # another defect type, with masks
    index = load_index(tmp_path, strict=False)
    assert [str(p.path) for p in index.errors] == [str(tmp_path / "bolt" / "scratch")]
    assert "other defect images of the class have masks: give every one a mask, or none" in problems(index)[0]


def test_a_mask_whose_name_matches_no_image(tmp_path):
    plain_class(tmp_path / "bolt", defects={"scratch": 1})
    misnamed = tmp_path / "bolt" / "ground_truth" / "scratch" / "000_mask.png"
    misnamed.rename(misnamed.with_name("000-gt.png"))
    with pytest.raises(DatasetLayoutError) as error:
        load_index(tmp_path)
    message = str(error.value)
    assert (f"{misnamed.parent}: 1 mask(s) belong to no image of {tmp_path / 'bolt' / 'scratch'} (first: 000-gt.png); "
            "the mask of image <stem>.png is <stem>_mask.png or <stem>.png") in message


def test_too_few_images_for_training_and_calibration(tmp_path):
    plain_class(tmp_path / "bolt", good=6)  # 5 training images (every 5th is a test image)
    plain_class(tmp_path / "nut", good=12)
    index = load_index(tmp_path)
    found = hold_out_problems(index, 0.2)
    assert [str(p) for p in found] == [
        (f"{tmp_path / 'bolt' / 'good'}: class 'bolt' has 5 normal training image(s) (every 5th image of good/ is a "
         "test image); training.fit needs at least 6: 4 to train on and 2 held out for calibration "
         "(--calibration-fraction 0.2, at least 2)")]


# ------------------------------------------------------------------------- bad input: the files


def test_unreadable_and_truncated_files_are_errors_naming_the_file(tmp_path):
    plain_class(tmp_path / "bolt")
    good = tmp_path / "bolt" / "good"
    data = (good / "001.png").read_bytes()
    (good / "001.png").write_bytes(data[: len(data) // 2])  # cut short
    jpeg = write(good / "002.jpg", picture(2))
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    (good / "003.png").write_text("not an image")
    report = inspect(load_index(tmp_path))
    errors = {p.path.name: p.text for p in report.errors}
    assert set(errors) == {"001.png", "002.jpg", "003.png"}
    assert errors["001.png"].startswith("not a valid PNG file (chunk b'IDAT' at byte 33 claims")
    assert "JPEG" in errors["002.jpg"]
    assert errors["003.png"].startswith("not a PNG, JPEG, BMP, TIFF, WebP or GIF image")
    assert all(text.endswith("fix or remove the file") for text in errors.values())


def test_grayscale_rgba_and_16_bit_images_are_read_and_reported_once(tmp_path):
    plain_class(tmp_path / "data" / "bolt")
    good = tmp_path / "data" / "bolt" / "good"
    gray = [write(good / f"g{i}.png", cv2.cvtColor(picture(i), cv2.COLOR_BGR2GRAY)) for i in range(2)]
    rgba = write(good / "rgba.png", np.dstack([picture(3), np.full((SIDE, SIDE), 128, np.uint8)]))
    deep = write(good / "deep.png", picture(4).astype(np.uint16) * 257)
    for path in (*gray, rgba, deep):
        image = read_image(path)
        assert image.shape == (SIDE, SIDE, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(read_image(deep), read_image(write(tmp_path / "eight.png", picture(4))))
    report = inspect(load_index(tmp_path / "data"))
    assert not report.errors
    assert sorted(str(p) for p in report.warnings) == sorted([
        f"{deep}: 1 image(s) are 16-bit: read as 8-bit (scaled) (this is the first)",
        f"{gray[0]}: 2 image(s) are grayscale: read as RGB with three equal channels (this is the first)",
        f"{rgba}: 1 image(s) have an alpha channel: read as RGB, the alpha dropped (this is the first)",
    ])


def test_mixed_sizes_are_reported_once(tmp_path):
    plain_class(tmp_path / "bolt")
    plain_class(tmp_path / "nut")
    for i, side in enumerate((32, 40, 40)):
        write(tmp_path / "nut" / "good" / f"big{i}.png", picture(i, side))
    report = inspect(load_index(tmp_path))
    assert [str(p.path) for p in report.warnings] == [str(tmp_path)]
    assert report.warnings[0].text.startswith(f"images come in 3 sizes: 24x24 (24, first {tmp_path / 'bolt' / 'good'}")
    assert "40x40 (2, first" in report.warnings[0].text and "each is resized" in report.warnings[0].text
    assert report.sizes["bolt"] == {(SIDE, SIDE): 12} and len(report.sizes["nut"]) == 3


def test_a_mask_of_another_size_is_an_error_and_an_empty_mask_a_warning(tmp_path):
    plain_class(tmp_path / "bolt", defects={"scratch": 2})
    big = write(tmp_path / "bolt" / "ground_truth" / "scratch" / "000_mask.png", mask(SIDE * 2))
    empty = write(tmp_path / "bolt" / "ground_truth" / "scratch" / "001_mask.png", np.zeros((SIDE, SIDE), np.uint8))
    report = inspect(load_index(tmp_path))
    image = tmp_path / "bolt" / "scratch" / "000.png"
    assert [str(p) for p in report.errors] == [
        f"{big}: mask is 48x48 pixels, its image {image} is 24x24; expected a mask of its image's size"]
    assert [str(p.path) for p in report.warnings] == [str(empty)]


def test_spaces_and_non_ascii_names(tmp_path):
    root = tmp_path / "my parts" / "Schraube groß"
    plain_class(root, defects={"Kratzer ü": 1})
    write(root / "good" / "Bild 1 ä.png", picture(50))
    index = load_index(tmp_path / "my parts")
    assert index.classes == ["Schraube groß"] and index.summary()["Schraube groß"]["masks"] == 1
    report = inspect(index)
    assert not report.index.problems and report.sizes["Schraube groß"] == {(SIDE, SIDE): 12}


def test_webp_and_the_first_frame_of_a_gif_are_read(tmp_path):
    plain_class(tmp_path / "bolt")
    good = tmp_path / "bolt" / "good"
    webp = write(good / "w.webp", picture(1), ".webp")
    first, second = np.full((SIDE, SIDE, 3), 40, np.uint8), np.full((SIDE, SIDE, 3), 200, np.uint8)
    gif = write_gif(good / "anim.gif", [first, second])
    index = load_index(tmp_path)
    assert {webp, gif} <= {s.image for s in index.samples}
    if not OPENCV_READS_GIF:  # reported, naming the build, never skipped
        with pytest.raises(ImageReadError, match=f"anim.gif: .*OpenCV {cv2.__version__} build without a GIF"):
            read_image(gif)
        assert [p.path.name for p in inspect(index).errors] == ["anim.gif"]
        return
    np.testing.assert_array_equal(read_image(gif), first)
    assert not inspect(index).errors  # OpenCV decodes a GIF with an alpha channel: a warning at most
    (good / "cut.gif").write_bytes(gif.read_bytes()[:30])
    assert [p.path.name for p in inspect(load_index(tmp_path)).errors] == ["cut.gif"]


# ------------------------------------------------------------------------------ the calibration split


def test_the_held_out_split_is_per_class_seeded_and_never_trained_on(tmp_path):
    plain_class(tmp_path / "data" / "bolt", good=25)
    plain_class(tmp_path / "data" / "nut", good=10)
    index = load_index(tmp_path / "data")
    split = hold_out(index, 0.2, seed=0)
    held = split.split(CALIBRATION)
    assert [sum(s.class_name == c for s in held) for c in ("bolt", "nut")] == [4, MIN_CALIBRATION_IMAGES]
    assert not {s.image for s in held} & {s.image for s in split.split(TRAIN)}
    assert all(s.label == 0 for s in held) and hold_out(index, 0.2, seed=0) == split
    assert hold_out(index, 0.2, seed=1) != split

    path = tmp_path / "run" / "split.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record(split, None, 0.2, 0)))
    reread = load_index(path)  # every command that takes a dataset takes a run's split file
    assert reread.split(CALIBRATION) == held and reread.split(TRAIN) == split.split(TRAIN)
    assert load_index(path, classes=["nut"]).classes == ["nut"]
    held[0].image.unlink()
    with pytest.raises(DatasetLayoutError, match=rf"{held[0].image}: held out for calibration in {path} but not in"):
        load_index(path)
    path.write_text('{"format": "something else"}')
    with pytest.raises(DatasetLayoutError, match="not a split file of training.fit"):
        load_index(path)
