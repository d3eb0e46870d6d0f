"""VisA: ``split_csv/1cls.csv`` lists every image with its split, label and mask.

VisA masks are not 0/255 (defect pixels hold small labels such as 1), so they are binarised with ``> 0`` by
:func:`runtime.preprocess.preprocess_mask`, never with a mid-grey threshold. The CSV does not name defect
types, so every anomalous image has the type ``anomaly``.
"""

from __future__ import annotations

import csv
from collections.abc import Collection
from pathlib import Path

from runtime.datasets.index import (
    ANOMALY,
    DatasetIndex,
    Problem,
    Sample,
    check_index,
    choose_classes,
    layout_error,
    subfolders,
    unknown_folder,
)
from runtime.files import GOOD

LAYOUT = "visa"
CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}
EXPECTED = """\
  VisA
  <root>/
  |-- split_csv/1cls.csv              columns object,split,label,image,mask
  |                                   split train|test, label normal|anomaly, mask empty for normal
  `-- <object>/Data/Images/{Normal,Anomaly}/*.JPG, <object>/Data/Masks/Anomaly/*.png
                                      (image and mask paths relative to <root>)"""


def looks_like(root: Path) -> bool:
    return (root / CSV).is_file()


def load(root: Path, classes: Collection[str] | None = None) -> DatasetIndex:
    path = root / CSV
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise layout_error(f"{path}: missing column(s) {', '.join(missing)}", EXPECTED)
        samples = [_sample(root, row, f"{path}, line {reader.line_num}") for row in reader]
    chosen = set(choose_classes(sorted({s.class_name for s in samples}), classes, root))
    kept = tuple(s for s in samples if s.class_name in chosen)
    problems = [Problem(s.image, f"defect image without a mask in {path}") for s in kept
                if s.label == 1 and s.mask is None]
    listed = {s.image.relative_to(root).parts[0] for s in samples if s.image.is_relative_to(root)}
    problems += [unknown_folder(d, f"only the folders {path} lists images in") for d in subfolders(root)
                 if d.name not in listed and d != root / CSV.parent]
    return check_index(DatasetIndex(LAYOUT, root, kept, tuple(problems), EXPECTED))


def _sample(root: Path, row: dict[str, str | None], where: str) -> Sample:
    name, split, label, image, mask = ((row.get(c) or "").strip() for c in COLUMNS)
    if split not in ("train", "test"):
        raise layout_error(f"{where}: split must be train or test, got '{split}'", EXPECTED)
    if label not in LABELS:
        raise layout_error(f"{where}: label must be normal or anomaly, got '{label}'", EXPECTED)
    if not name or not image:
        raise layout_error(f"{where}: object and image must not be empty", EXPECTED)
    defect = GOOD if LABELS[label] == 0 else ANOMALY
    return Sample(root / image, root / mask if mask else None, LABELS[label], defect, name, split)
