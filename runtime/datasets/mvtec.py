"""MVTec AD: the official folder layout, or the DiAD reference's ``train.json`` / ``test.json`` meta files."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from runtime.datasets.index import (
    ANOMALY,
    DatasetIndex,
    Problem,
    Sample,
    check_index,
    choose_classes,
    class_folders,
    images_in,
    layout_error,
    stray_images,
    subfolders,
    unknown_folder,
)
from runtime.datasets.paths import GROUND_TRUTH, missing_masks, pair_masks
from runtime.files import GOOD

LAYOUT = "mvtec"
META_LAYOUT = "mvtec-json"
META_FILES = ("train.json", "test.json")
CLASS_PARTS = ("train", "test", GROUND_TRUTH)
EXPECTED = """\
  MVTec AD                            <root> may also be one <class> folder
  <root>/
  `-- <class>/
      |-- train/good/*.png            normal images only
      |-- test/good/*.png
      |-- test/<defect>/<stem>.png
      `-- ground_truth/<defect>/<stem>_mask.png   (or <stem>.png)
  or, as in the DiAD reference, <root>/train.json and <root>/test.json: one JSON object per line,
  {"filename": ..., "label": 0|1, "label_name": "good"|<defect>, "maskname": ..., "clsname": ...},
  paths relative to <root>"""


def is_class_folder(folder: Path) -> bool:
    return (folder / "train" / GOOD).is_dir()


def looks_like(root: Path) -> bool:
    return bool(class_folders(root, is_class_folder))


def has_meta(root: Path) -> bool:
    return any((root / name).is_file() for name in META_FILES)


def load(root: Path, classes: Collection[str] | None = None) -> DatasetIndex:
    """Read the official folders; ``root`` is the dataset or a single class folder."""
    folders = class_folders(root, is_class_folder)
    samples: list[Sample] = []
    problems: list[Problem] = []
    if root not in folders.values():
        problems += [unknown_folder(d, "<class>/train/good/ in every class folder")
                     for d in subfolders(root) if d.name not in folders]
        problems += stray_images(root, "<class>/train/good/ or <class>/test/<defect>/")
    for name in choose_classes(sorted(folders), classes, root):
        class_samples, class_problems = _class_samples(folders[name], name)
        samples += class_samples
        problems += class_problems
        if not class_samples:
            problems.append(Problem(folders[name] / "train" / GOOD, f"class '{name}' has no images; expected "
                                                                     f"{folders[name] / 'train' / GOOD}/*.png"))
    return check_index(DatasetIndex(LAYOUT, root, tuple(samples), tuple(problems), EXPECTED))


def _class_samples(folder: Path, name: str) -> tuple[list[Sample], list[Problem]]:
    problems = [unknown_folder(d, "train/, test/ and ground_truth/") for d in subfolders(folder)
                if d.name not in CLASS_PARTS]
    problems += stray_images(folder, "train/good/ or test/<defect>/")
    problems += [Problem(sub, "training images must be normal (only train/good/ is allowed)")
                 for sub in subfolders(folder / "train") if sub.name != GOOD]
    train, found = images_in(folder / "train" / GOOD)
    problems += found
    samples = [Sample(p, None, 0, GOOD, name, "train") for p in train]
    defects = {d.name for d in subfolders(folder / "test")}
    for defect_folder in subfolders(folder / "test"):
        images, found = images_in(defect_folder)
        problems += found
        if defect_folder.name == GOOD:
            samples += [Sample(p, None, 0, GOOD, name, "test") for p in images]
            continue
        mask_folder = folder / GROUND_TRUTH / defect_folder.name
        masks, found = pair_masks(images, defect_folder, mask_folder)
        problems += found
        samples += [Sample(p, m, 1, defect_folder.name, name, "test") for p, m in zip(images, masks, strict=True)]
        missing = [p for p, m in zip(images, masks, strict=True) if m is None]
        if missing:
            problems.append(missing_masks(missing, mask_folder, True, "MVTec AD gives every defect image a mask"))
    for mask_folder in subfolders(folder / GROUND_TRUTH):
        if mask_folder.name not in defects:
            problems.append(Problem(mask_folder, f"masks of a defect type without images; expected "
                                                 f"{folder / 'test' / mask_folder.name}/"))
    return samples, problems


def load_meta(root: Path, classes: Collection[str] | None = None) -> DatasetIndex:
    """Read ``train.json`` and ``test.json`` (one JSON object per line, paths relative to ``root``)."""
    samples = [
        _meta_sample(root, where, record, split)
        for split in ("train", "test")
        for where, record in _records(root, split)
    ]
    chosen = set(choose_classes(sorted({s.class_name for s in samples}), classes, root))
    kept = tuple(s for s in samples if s.class_name in chosen)
    problems = tuple(Problem(s.image, "defect image without a mask (no maskname)") for s in kept
                     if s.label == 1 and s.mask is None)
    return check_index(DatasetIndex(META_LAYOUT, root, kept, problems, EXPECTED))


def _records(root: Path, split: str) -> list[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for each non-empty line of ``<root>/<split>.json``."""
    path = root / f"{split}.json"
    if not path.is_file():
        raise layout_error(f"{path}: not found (the meta files come as a pair: train.json and test.json)", EXPECTED)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise layout_error(f"{where}: not a JSON object ({exc.msg})", EXPECTED) from None
        if not isinstance(record, dict):
            raise layout_error(f"{where}: not a JSON object", EXPECTED)
        missing = [key for key in ("filename", "label", "clsname") if key not in record]
        if missing:
            raise layout_error(f"{where}: missing {', '.join(missing)}", EXPECTED)
        if record["label"] not in (0, 1):
            raise layout_error(f"{where}: label must be 0 (good) or 1 (defect), got {record['label']!r}", EXPECTED)
        records.append((where, record))
    return records


def _meta_sample(root: Path, where: str, record: dict[str, Any], split: str) -> Sample:
    label = int(record["label"])
    defect = str(record.get("label_name") or (GOOD if label == 0 else ANOMALY))
    if (defect == GOOD) != (label == 0):
        raise layout_error(f"{where}: label {label} does not match label_name '{defect}'", EXPECTED)
    mask = root / record["maskname"] if record.get("maskname") else None
    return Sample(root / record["filename"], mask, label, defect, str(record["clsname"]), split)
