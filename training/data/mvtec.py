"""MVTec-AD: the official folder layout, or the DiAD reference's ``train.json`` / ``test.json`` meta files."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from runtime.files import GOOD, image_files
from training.data.index import (
    ANOMALY,
    DatasetIndex,
    Sample,
    check_index,
    check_no_orphan_masks,
    choose_classes,
    class_folders,
    layout_error,
    subfolders,
)

LAYOUT = "mvtec"
META_LAYOUT = "mvtec-json"
META_FILES = ("train.json", "test.json")
EXPECTED = """\
  MVTec-AD                            <root> may also be one <class> folder
  <root>/
  `-- <class>/
      |-- train/good/*.png            normal images only
      |-- test/good/*.png
      |-- test/<defect>/<stem>.png
      `-- ground_truth/<defect>/<stem>_mask.png
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
    for name in choose_classes(sorted(folders), classes, root):
        samples += _class_samples(folders[name], name)
    return check_index(DatasetIndex(LAYOUT, root, tuple(samples)), EXPECTED)


def _class_samples(folder: Path, name: str) -> list[Sample]:
    for sub in subfolders(folder / "train"):
        if sub.name != GOOD:
            raise layout_error(f"{sub}: training images must be normal (only train/good is allowed)", EXPECTED)
    samples = [Sample(p, None, 0, GOOD, name, "train") for p in image_files(folder / "train" / GOOD)]
    paired: set[Path] = set()
    for defect_folder in subfolders(folder / "test"):
        defect = defect_folder.name
        for image in image_files(defect_folder):
            if defect == GOOD:
                samples.append(Sample(image, None, 0, GOOD, name, "test"))
                continue
            mask = folder / "ground_truth" / defect / f"{image.stem}_mask.png"
            samples.append(Sample(image, mask, 1, defect, name, "test"))
            paired.add(mask)
    masks = [m for d in subfolders(folder / "ground_truth") for m in image_files(d)]
    check_no_orphan_masks(masks, paired, EXPECTED)
    return samples


def load_meta(root: Path, classes: Collection[str] | None = None) -> DatasetIndex:
    """Read ``train.json`` and ``test.json`` (one JSON object per line, paths relative to ``root``)."""
    samples = [
        _meta_sample(root, where, record, split)
        for split in ("train", "test")
        for where, record in _records(root, split)
    ]
    chosen = set(choose_classes(sorted({s.class_name for s in samples}), classes, root))
    return check_index(DatasetIndex(META_LAYOUT, root, tuple(s for s in samples if s.class_name in chosen)), EXPECTED)


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
