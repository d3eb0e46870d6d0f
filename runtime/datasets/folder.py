"""The plain folder: ``good/`` normal images, optionally one folder of defect images per defect type and masks.

Split rule: the normal images in ``good/``, in name order, go to training except every fifth one (the 5th, 10th,
...), a normal test image, so that evaluation has normal images to score. With ``good/train/`` and
``good/test/`` instead, those folders are the split. Defect images are always test images. Masks are optional; a
class gives every defect image a mask, or none (then pixel metrics are not measured for it).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from runtime.datasets.index import (
    DatasetIndex,
    Problem,
    Sample,
    check_index,
    choose_classes,
    class_folders,
    images_in,
    stray_images,
    subfolders,
    unknown_folder,
)
from runtime.datasets.paths import GROUND_TRUTH, TRAIN_TEST, missing_masks, pair_masks
from runtime.files import GOOD

LAYOUT = "folder"
HOLD_OUT_EVERY = 5
EXPECTED = """\
  plain folder                        <root> may also be one <class> folder
  <root>/
  `-- <class>/
      |-- good/*.png                  normal images; every 5th (by name) is a test image
      |                               (or good/train/*.png and good/test/*.png)
      |-- <defect>/*.png              optional: defect images, one folder per defect type
      `-- ground_truth/<defect>/      optional: their masks, <stem>_mask.png or <stem>.png"""


def is_class_folder(folder: Path) -> bool:
    return (folder / GOOD).is_dir()


def looks_like(root: Path) -> bool:
    return bool(class_folders(root, is_class_folder))


def load(root: Path, classes: Collection[str] | None = None) -> DatasetIndex:
    """Read one class folder (``root`` itself) or one per class."""
    folders = class_folders(root, is_class_folder)
    samples: list[Sample] = []
    problems: list[Problem] = []
    if root not in folders.values():
        problems += [unknown_folder(d, "<class>/good/ in every class folder") for d in subfolders(root)
                     if d.name not in folders]
        problems += stray_images(root, "<class>/good/ or <class>/<defect>/")
    for name in choose_classes(sorted(folders), classes, root):
        normal, normal_problems = _normal_samples(folders[name], name)
        defects, defect_problems = _defect_samples(folders[name], name)
        samples += normal + defects
        problems += normal_problems + defect_problems
        if not normal:
            problems.append(Problem(folders[name] / GOOD, f"class '{name}' has no normal images; expected "
                                                          f"{folders[name] / GOOD}/*.png"))
    return check_index(DatasetIndex(LAYOUT, root, tuple(samples), tuple(problems), EXPECTED))


def _normal_samples(folder: Path, name: str) -> tuple[list[Sample], list[Problem]]:
    good = folder / GOOD
    if not any((good / split).is_dir() for split in TRAIN_TEST):
        images, problems = images_in(good, "good/train/ and good/test/ or none")
        return [
            Sample(p, None, 0, GOOD, name, "test" if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 else "train")
            for i, p in enumerate(images)
        ], problems
    problems = [unknown_folder(d, "good/train/ and good/test/") for d in subfolders(good) if d.name not in TRAIN_TEST]
    loose, _ = images_in(good)
    if loose:
        problems.append(Problem(good, f"{len(loose)} image(s) directly in good/ beside good/train/ and good/test/ "
                                      f"(first: {loose[0].name}); put each image in one of them"))
    samples = []
    for split in TRAIN_TEST:
        images, found = images_in(good / split)
        samples += [Sample(p, None, 0, GOOD, name, split) for p in images]
        problems += found
    return samples, problems


def _defect_samples(folder: Path, name: str) -> tuple[list[Sample], list[Problem]]:
    """The defect images, one folder per defect type, each with its mask when it has one."""
    problems = stray_images(folder, "good/ or <defect>/")
    problems += [unknown_folder(folder / split, "good/, <defect>/ and ground_truth/ (train/ and test/ belong to the "
                                                "MVTec AD layout: <class>/train/good/)")
                 for split in TRAIN_TEST if (folder / split).is_dir()]
    samples, unmasked = [], []
    defect_folders = [d for d in subfolders(folder) if d.name not in (GOOD, GROUND_TRUTH, *TRAIN_TEST)]
    for defect_folder in defect_folders:
        images, found = images_in(defect_folder)
        problems += found
        if not images:
            problems.append(Problem(defect_folder, "a defect folder without images; expected <defect>/*.png",
                                    error=False))
        masks, found = pair_masks(images, defect_folder, folder / GROUND_TRUTH / defect_folder.name)
        problems += found
        samples += [Sample(p, m, 1, defect_folder.name, name, "test") for p, m in zip(images, masks, strict=True)]
        missing = [p for p, m in zip(images, masks, strict=True) if m is None]
        if missing:
            unmasked.append(missing)
    names = {d.name for d in defect_folders}
    problems += [Problem(d, f"masks of a defect type without images; expected {folder / d.name}/")
                 for d in subfolders(folder / GROUND_TRUTH) if d.name not in names]
    masked = any(s.mask is not None for s in samples)
    for missing in unmasked:
        mask_folder = folder / GROUND_TRUTH / missing[0].parent.name
        why = ("other defect images of the class have masks: give every one a mask, or none" if masked else
               "masks are optional: without them pixel metrics (P-AUROC, AU-PRO) are not measured")
        problems.append(missing_masks(missing, mask_folder, masked, why))
    return samples, problems
