"""A generic folder dataset: a folder of normal images, a folder of anomalous images, optional masks.

Split rule: when ``normal/`` holds ``train/`` and ``test/`` subfolders, they are the split. Otherwise the normal
images, in name order, go to training except every fifth one (the 5th, 10th, ...), which is held out as a normal
test image, so that image-level metrics have normal images to score. Anomalous images are always test images.
When ``mask/`` exists, every anomalous image must have a mask; without it, anomalous images have none.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

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

LAYOUT = "folder"
NORMAL = ("normal", "good")
ABNORMAL = ("abnormal", "anomaly")
MASKS = "mask"
HOLD_OUT_EVERY = 5
EXPECTED = """\
  generic folder                      <root> may also hold one such folder per class
  <root>/
  |-- normal/ (or good/)              normal images; or normal/train/ and normal/test/
  |                                   (else every 5th normal image, by name, is a test image)
  |-- abnormal/ (or anomaly/)         anomalous images, or abnormal/<defect>/*.png
  `-- mask/                           optional: mask/[<defect>/]<stem>.png or <stem>_mask.png"""


def _first_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def is_class_folder(folder: Path) -> bool:
    return _first_folder(folder, NORMAL) is not None


def looks_like(root: Path) -> bool:
    return bool(class_folders(root, is_class_folder))


def load(root: Path, classes: Collection[str] | None = None) -> DatasetIndex:
    """Read one class folder (``root`` itself) or one per class."""
    folders = class_folders(root, is_class_folder)
    samples: list[Sample] = []
    for name in choose_classes(sorted(folders), classes, root):
        samples += _normal_samples(folders[name], name) + _anomalous_samples(folders[name], name)
    return check_index(DatasetIndex(LAYOUT, root, tuple(samples)), EXPECTED, masks_required=False)


def _normal_samples(folder: Path, name: str) -> list[Sample]:
    normal = _first_folder(folder, NORMAL)
    assert normal is not None  # only class folders get here
    if (normal / "train").is_dir() or (normal / "test").is_dir():
        loose = image_files(normal)
        if loose:
            raise layout_error(f"{loose[0]}: with normal/train/ and normal/test/, put each image in one", EXPECTED)
        return [Sample(p, None, 0, GOOD, name, s) for s in ("train", "test") for p in image_files(normal / s)]
    return [
        Sample(p, None, 0, GOOD, name, "test" if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 else "train")
        for i, p in enumerate(image_files(normal))
    ]


def _anomalous_samples(folder: Path, name: str) -> list[Sample]:
    """The anomalous test images, each with its mask path when the class has a mask folder."""
    abnormal = _first_folder(folder, ABNORMAL)
    if abnormal is None:
        return []
    mask_folder = folder / MASKS
    has_masks = mask_folder.is_dir()
    images = [(p, ANOMALY, Path()) for p in image_files(abnormal)]
    images += [(p, d.name, Path(d.name)) for d in subfolders(abnormal) for p in image_files(d)]
    samples, paired = [], set()
    for image, defect, relative in images:
        mask = _mask_for(mask_folder / relative, image.stem) if has_masks else None
        samples.append(Sample(image, mask, 1, defect, name, "test"))
        paired.add(mask)
    if has_masks:
        masks = [m for d in (mask_folder, *subfolders(mask_folder)) for m in image_files(d)]
        check_no_orphan_masks(masks, paired, EXPECTED)
    return samples


def _mask_for(folder: Path, stem: str) -> Path:
    """``<stem>.png`` or ``<stem>_mask.png``; the first when neither exists, so that the check names it."""
    candidates = [folder / f"{stem}.png", folder / f"{stem}_mask.png"]
    return next((p for p in candidates if p.is_file()), candidates[0])
