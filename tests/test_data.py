"""training.data: MVTec-AD (folders and DiAD meta files), VisA and plain-folder layouts, detection, pairing
errors, the report command, the torch Dataset and the validation split (the layouts' own tests, bad input
included: tests/test_datasets.py)."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.cli import run_cli
from runtime.errors import DatasetLayoutError
from runtime.preprocess import preprocess
from training.data import AnomalyDataset, DatasetIndex, Sample, load_index, split_validation
from training.data.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
SIDE = 24


def write_image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), rgb)
    return path


def write_mask(path: Path, value: int = 255, side: int = SIDE) -> Path:
    """A mask whose defect is the square [8, 16) x [8, 16), stored with pixel ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((side, side), np.uint8)
    mask[8:16, 8:16] = value
    assert cv2.imwrite(str(path), mask)
    return path


def make_mvtec(root: Path, classes=("bottle", "cable"), defects=("crack", "cut")) -> Path:
    for c in classes:
        for i in range(4):
            write_image(root / c / "train" / "good" / f"{i:03d}.png", i)
        for i in range(2):
            write_image(root / c / "test" / "good" / f"{i:03d}.png", 10 + i)
        for d in defects:
            for i in range(2):
                write_image(root / c / "test" / d / f"{i:03d}.png", 20 + i)
                write_mask(root / c / "ground_truth" / d / f"{i:03d}_mask.png")
    return root


def make_visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for c in ("candle", "pcb1"):
        for i in range(3):
            rows.append(f"{c},train,normal,{c}/Data/Images/Normal/{i:04d}.JPG,")
            write_image(root / c / "Data" / "Images" / "Normal" / f"{i:04d}.JPG", i)
        rows.append(f"{c},test,normal,{c}/Data/Images/Normal/0100.JPG,")
        write_image(root / c / "Data" / "Images" / "Normal" / "0100.JPG", 5)
        for i, value in enumerate((1, 255)):  # VisA masks hold small labels, not only 255
            rows.append(f"{c},test,anomaly,{c}/Data/Images/Anomaly/{i:03d}.JPG,{c}/Data/Masks/Anomaly/{i:03d}.png")
            write_image(root / c / "Data" / "Images" / "Anomaly" / f"{i:03d}.JPG", 7 + i)
            write_mask(root / c / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png", value)
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def make_folder(root: Path, normal: int = 10) -> Path:
    for i in range(normal):
        write_image(root / "good" / f"n{i:02d}.png", i)
    write_image(root / "crack" / "a0.png", 30)
    write_mask(root / "ground_truth" / "crack" / "a0.png")
    write_image(root / "scratch" / "s0.png", 31)
    write_mask(root / "ground_truth" / "scratch" / "s0_mask.png")
    return root


def counts(index: DatasetIndex) -> dict:
    return {c: (v["train"], v["test_good"], v["test_defect"], v["masks"]) for c, v in index.summary().items()}


# ------------------------------------------------------------------------------------------- layouts


def test_mvtec_layout(tmp_path):
    index = load_index(make_mvtec(tmp_path))
    assert index.layout == "mvtec" and index.classes == ["bottle", "cable"]
    assert counts(index) == {"bottle": (4, 2, 4, 4), "cable": (4, 2, 4, 4)}
    assert index.summary()["bottle"]["defects"] == {"crack": 2, "cut": 2}
    crack = next(s for s in index.split("test") if s.defect == "crack")
    assert (
        crack.label == 1
        and crack.mask == tmp_path / "bottle" / "ground_truth" / "crack" / f"{crack.image.stem}_mask.png"
    )
    assert all(s.label == 0 and s.mask is None and s.defect == "good" for s in index.split("train"))


def test_mvtec_single_class_root(tmp_path):
    make_mvtec(tmp_path)
    index = load_index(tmp_path / "cable")
    assert index.layout == "mvtec" and index.classes == ["cable"] and len(index.split("train")) == 4


def test_mvtec_meta_files_define_the_samples(tmp_path):
    make_mvtec(tmp_path)
    train = [
        {"filename": f"bottle/train/good/{i:03d}.png", "label": 0, "label_name": "good", "clsname": "bottle"}
        for i in range(3)
    ]
    test = [
        {"filename": "bottle/test/good/000.png", "label": 0, "label_name": "good", "clsname": "bottle"},
        {
            "filename": "bottle/test/crack/001.png",
            "label": 1,
            "label_name": "crack",
            "maskname": "bottle/ground_truth/crack/001_mask.png",
            "clsname": "bottle",
        },
    ]
    (tmp_path / "train.json").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "test.json").write_text("".join(json.dumps(r) + "\n" for r in test) + "\n")
    index = load_index(tmp_path)
    assert index.layout == "mvtec-json" and index.classes == ["bottle"]
    assert counts(index) == {"bottle": (3, 1, 1, 1)}
    defect = index.split("test")[1]
    assert (defect.defect, defect.mask) == ("crack", tmp_path / "bottle" / "ground_truth" / "crack" / "001_mask.png")


def test_mvtec_meta_errors_name_the_line(tmp_path):
    make_mvtec(tmp_path)
    (tmp_path / "train.json").write_text(
        '{"filename": "bottle/train/good/000.png", "label": 0, "clsname": "bottle"}\n{oops\n'
    )
    (tmp_path / "test.json").write_text("")
    with pytest.raises(DatasetLayoutError, match=r"train\.json, line 2: not a JSON object"):
        load_index(tmp_path)
    (tmp_path / "train.json").write_text('{"filename": "bottle/train/good/000.png", "label": 0, "clsname": "bottle"}\n')
    (tmp_path / "test.json").unlink()
    with pytest.raises(DatasetLayoutError, match=r"test\.json: not found"):
        load_index(tmp_path)


def test_visa_layout_and_its_masks(tmp_path):
    index = load_index(make_visa(tmp_path))
    assert index.layout == "visa" and index.classes == ["candle", "pcb1"]
    assert counts(index) == {"candle": (3, 1, 2, 2), "pcb1": (3, 1, 2, 2)}
    assert index.summary()["pcb1"]["defects"] == {"anomaly": 2}
    expected = np.zeros((1, SIDE, SIDE), np.float32)
    expected[:, 8:16, 8:16] = 1
    dataset = AnomalyDataset([s for s in index.split("test") if s.label == 1], size=SIDE)
    for item in dataset:  # masks stored as 1 and as 255 give the same binary mask
        np.testing.assert_array_equal(item["mask"].numpy(), expected)


def test_visa_rejects_bad_rows(tmp_path):
    make_visa(tmp_path)
    csv_path = tmp_path / "split_csv" / "1cls.csv"
    csv_path.write_text(csv_path.read_text() + "candle,test,broken,candle/x.JPG,\n")
    with pytest.raises(DatasetLayoutError, match="line 14: label must be normal or anomaly"):
        load_index(tmp_path)


def test_folder_layout_holds_out_every_fifth_normal_image(tmp_path):
    index = load_index(make_folder(tmp_path / "parts"))
    assert index.layout == "folder" and index.classes == ["parts"]
    assert [s.image.name for s in index.split("test") if s.label == 0] == ["n04.png", "n09.png"]
    assert counts(index) == {"parts": (8, 2, 2, 2)}
    masks = {s.defect: s.mask.relative_to(tmp_path / "parts") for s in index.samples if s.label == 1}
    assert masks == {"crack": Path("ground_truth/crack/a0.png"), "scratch": Path("ground_truth/scratch/s0_mask.png")}


def test_folder_layout_with_one_folder_per_class(tmp_path):
    make_folder(tmp_path / "with_masks", normal=5)
    write_image(tmp_path / "plain" / "good" / "a.png")
    write_image(tmp_path / "plain" / "anomaly" / "b.png")
    index = load_index(tmp_path, strict=False)  # plain's defect has no mask: a warning
    assert index.layout == "folder" and index.classes == ["plain", "with_masks"]
    assert counts(index) == {"plain": (1, 0, 1, 0), "with_masks": (4, 1, 2, 2)}


def test_class_filter(tmp_path):
    make_mvtec(tmp_path, classes=("bottle", "cable", "grid"))
    index = load_index(tmp_path, classes=["grid", "bottle"])
    assert index.classes == ["bottle", "grid"]
    assert load_index(tmp_path).filter(["cable"]).classes == ["cable"]
    with pytest.raises(DatasetLayoutError, match=r"no class named nut \(classes found: bottle, cable, grid\)"):
        load_index(tmp_path, classes=["nut"])


# -------------------------------------------------------------------------------------------- errors


def test_missing_mask_names_the_expected_path(tmp_path):
    make_mvtec(tmp_path)
    missing = tmp_path / "cable" / "ground_truth" / "cut" / "001_mask.png"
    missing.unlink()
    with pytest.raises(DatasetLayoutError) as error:
        load_index(tmp_path)
    assert (f"{tmp_path / 'cable' / 'test' / 'cut'}: 1 defect image(s) without a mask (first: 001.png); expected "
            f"{missing.parent}/<stem>_mask.png or <stem>.png") in str(error.value)
    assert "ground_truth/<defect>/<stem>_mask.png" in str(error.value)  # the expected layout


def test_mask_without_image_is_an_error(tmp_path):
    make_mvtec(tmp_path)
    orphan = write_mask(tmp_path / "bottle" / "ground_truth" / "crack" / "007_mask.png")
    with pytest.raises(DatasetLayoutError, match=rf"{orphan.parent}: 1 mask\(s\) belong to no image .*007_mask.png"):
        load_index(tmp_path)
    orphan.unlink()
    make_folder(tmp_path / "parts")
    stray = write_mask(tmp_path / "parts" / "ground_truth" / "crack" / "zz.png")
    with pytest.raises(DatasetLayoutError, match=rf"{stray.parent}: 1 mask\(s\) belong to no image"):
        load_index(tmp_path / "parts")


def test_missing_folder_mask_is_an_error(tmp_path):
    root = make_folder(tmp_path / "parts")
    (root / "ground_truth" / "crack" / "a0.png").unlink()  # the scratch image keeps its mask
    with pytest.raises(DatasetLayoutError, match=rf"{root / 'crack'}: 1 defect image\(s\) without a mask"):
        load_index(root)


def test_training_images_must_be_normal_and_present(tmp_path):
    make_mvtec(tmp_path)
    write_image(tmp_path / "bottle" / "train" / "crack" / "000.png")
    with pytest.raises(DatasetLayoutError, match="training images must be normal"):
        load_index(tmp_path)
    (tmp_path / "bottle" / "train" / "crack" / "000.png").unlink()
    (tmp_path / "bottle" / "train" / "crack").rmdir()
    for p in (tmp_path / "cable" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DatasetLayoutError, match="class 'cable' has no normal training images"):
        load_index(tmp_path)


def test_unknown_layout_lists_the_three_layouts(tmp_path):
    (tmp_path / "photos").mkdir()
    write_image(tmp_path / "photos" / "x.png")
    with pytest.raises(DatasetLayoutError) as error:
        load_index(tmp_path)
    message = str(error.value)
    assert "not a dataset in a known layout" in message
    assert "MVTec AD" in message and "split_csv/1cls.csv" in message and "good/*.png" in message
    assert f"{tmp_path / 'photos'}/ holds images" in message
    with pytest.raises(DatasetLayoutError, match="not found"):
        load_index(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------- command


def test_command_prints_counts_and_json(tmp_path, capsys):
    make_mvtec(tmp_path)
    assert main([str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert f"{tmp_path}: MVTec AD layout, 2 class(es)" in table and "no problems found" in table
    assert next(line for line in table.splitlines() if line.startswith("class")).split() == [
        "class", "train", "test", "good", "test", "defect", "masks", "sizes", "defect", "types"]
    bottle = next(line for line in table.splitlines() if line.startswith("bottle"))
    assert bottle.split() == ["bottle", "4", "2", "4", "4/4", "24x24", "crack", "2,", "cut", "2"]
    assert next(line for line in table.splitlines() if line.startswith("total")).split() == ["total", "8", "4", "8"]
    assert main([str(tmp_path), "--json", "--classes", "cable"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "mvtec" and list(report["classes"]) == ["cable"]
    assert report["classes"]["cable"] == {
        "train": 4,
        "calibration": 0,
        "test_good": 2,
        "test_defect": 4,
        "masks": 4,
        "defects": {"crack": 2, "cut": 2},
        "sizes": {"24x24": 10},
    }
    assert report["errors"] == [] and report["warnings"] == []


def test_command_lists_every_problem_and_exits_2_on_errors(tmp_path, capsys):
    root = make_folder(tmp_path / "parts")
    (root / "good" / "n03.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    (root / "scratch" / "close-ups").mkdir()
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(root), "--calibration-fraction", "0.2"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and "error: " + str(root) + ": 1 error(s), listed above" in err
    assert f"error: {root / 'good' / 'n03.png'}: not a valid PNG file" in out
    assert f"warning: {root / 'scratch' / 'close-ups'}: a folder the layout does not know" in out
    parts = next(line for line in out.splitlines() if line.startswith("parts"))
    assert parts.split()[:5] == ["parts", "6", "2", "2", "2"]  # train, held out for calibration, test good, defect


def test_command_reports_errors_with_exit_status_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "training.data", str(tmp_path / "nowhere")],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "nowhere: not found" in out.stderr


def test_reading_a_dataset_never_imports_torch(tmp_path):
    make_mvtec(tmp_path)
    code = f"import sys, training.data as d; d.load_index({str(tmp_path)!r}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# ------------------------------------------------------------------------------------- torch Dataset


def test_torch_dataset_items(tmp_path):
    index = load_index(make_mvtec(tmp_path))
    test = index.split("test")
    dataset = AnomalyDataset(test, size=32)
    assert len(dataset) == len(test)
    good = dataset[[s.label for s in test].index(0)]
    bad_at = [s.label for s in test].index(1)
    bad = dataset[bad_at]
    assert good["image"].shape == (3, 32, 32) and good["image"].dtype.is_floating_point
    assert str(good["image"].dtype) == "torch.float32" and str(good["mask"].dtype) == "torch.float32"
    assert good["mask"].shape == (1, 32, 32) and good["mask"].sum() == 0 and good["label"] == 0
    assert bad["label"] == 1 and bad["defect"] == test[bad_at].defect and bad["class_name"] == "bottle"
    assert set(bad["mask"].unique().tolist()) == {0.0, 1.0}
    rgb = cv2.cvtColor(cv2.imread(bad["path"]), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(bad["image"].numpy(), preprocess(rgb, 32))


def test_torch_dataset_rejects_a_mask_of_another_size(tmp_path):
    make_mvtec(tmp_path, classes=("bottle",))
    write_mask(tmp_path / "bottle" / "ground_truth" / "cut" / "000_mask.png", side=SIDE * 2)
    sample = next(
        s for s in load_index(tmp_path).samples if s.mask and s.mask.name == "000_mask.png" and s.defect == "cut"
    )
    with pytest.raises(DatasetLayoutError, match="mask is 48x48 pixels but its image"):
        AnomalyDataset([sample])[0]


# ----------------------------------------------------------------------------------- validation split


def test_split_validation_is_deterministic_disjoint_and_per_class(tmp_path):
    train = [Sample(Path(f"/{c}/{i:03d}.png"), None, 0, "good", c, "train") for c in ("a", "b") for i in range(20)]
    fit, val = split_validation(train, 0.25, seed=3)
    assert split_validation(train, 0.25, seed=3) == (fit, val)
    assert split_validation(list(reversed(train)), 0.25, seed=3)[1] == list(reversed(val))
    assert not {s.image for s in fit} & {s.image for s in val} and len(fit) + len(val) == len(train)
    assert sorted(s.class_name for s in val) == ["a"] * 5 + ["b"] * 5
    assert split_validation(train, 0.25, seed=4)[1] != val
    assert split_validation(train[:20], 0.25, seed=3)[1] == [s for s in val if s.class_name == "a"]
    test_sample = Sample(Path("/a/t.png"), None, 0, "good", "a", "test")
    with pytest.raises(ValueError, match="train/good only"):
        split_validation(train + [test_sample], 0.25, seed=3)
