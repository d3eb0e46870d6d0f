"""The samples of an anomaly-detection dataset, whatever its folder layout (no torch).

Each layout module (:mod:`.mvtec`, :mod:`.visa`, :mod:`.folder`) turns a folder into a :class:`DatasetIndex`
and passes it through :func:`check_index`, which holds the rules every layout shares: files exist, training
images are normal, defect images have masks, normal images have none, every class has training images.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import DatasetLayoutError

ANOMALY = "anomaly"  # the defect type of an anomalous image whose layout does not name one
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Sample:
    """One image: ``label`` 0 (normal, ``defect == "good"``) or 1; ``mask`` is ``None`` for normal images."""

    image: Path
    mask: Path | None
    label: int
    defect: str
    class_name: str
    split: str


@dataclass(frozen=True)
class DatasetIndex:
    """All samples of a dataset, with the name of the layout they were read from."""

    layout: str
    root: Path
    samples: tuple[Sample, ...]

    @property
    def classes(self) -> list[str]:
        return sorted({s.class_name for s in self.samples})

    def split(self, name: str) -> list[Sample]:
        """The samples of split ``"train"`` or ``"test"``."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [s for s in self.samples if s.split == name]

    def filter(self, classes: Collection[str]) -> DatasetIndex:
        """The samples of the given classes only; an unknown class name is a :class:`DatasetLayoutError`."""
        keep = set(choose_classes(self.classes, classes, self.root))
        return DatasetIndex(self.layout, self.root, tuple(s for s in self.samples if s.class_name in keep))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per class: train, test good and test defect counts, masks found, and counts per defect type."""
        report = {}
        for name in self.classes:
            samples = [s for s in self.samples if s.class_name == name]
            defects = [s for s in samples if s.split == "test" and s.label == 1]
            report[name] = {
                "train": sum(s.split == "train" for s in samples),
                "test_good": sum(s.split == "test" and s.label == 0 for s in samples),
                "test_defect": len(defects),
                "masks": sum(s.mask is not None for s in samples),
                "defects": dict(sorted(Counter(s.defect for s in defects).items())),
            }
        return report


def layout_error(problem: str, expected: str) -> DatasetLayoutError:
    """A :class:`DatasetLayoutError` that states the problem, then shows the expected layout."""
    return DatasetLayoutError(f"{problem}\nexpected layout:\n{expected}")


def choose_classes(available: Sequence[str], requested: Collection[str] | None, root: Path) -> list[str]:
    """``requested`` (all of ``available`` when ``None``), checked against what the dataset holds."""
    if requested is None:
        return list(available)
    unknown = sorted(set(requested) - set(available))
    if unknown:
        raise DatasetLayoutError(
            f"{root}: no class named {', '.join(unknown)} (classes found: {', '.join(available) or 'none'})"
        )
    return [c for c in available if c in set(requested)]


def subfolders(folder: Path) -> list[Path]:
    """The visible folders directly inside ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_folders(root: Path, is_class_folder: Callable[[Path], bool]) -> dict[str, Path]:
    """``{class name: folder}``: ``root`` itself when it is one class's folder, else its class subfolders."""
    if is_class_folder(root):
        return {root.name: root}
    return {d.name: d for d in subfolders(root) if is_class_folder(d)}


def check_no_orphan_masks(masks: Iterable[Path], paired: Collection[Path], expected: str) -> None:
    """Every mask file must belong to a defect image."""
    for mask in masks:
        if mask not in paired:
            raise layout_error(f"{mask}: mask without a matching defect image", expected)


def check_index(index: DatasetIndex, expected: str, masks_required: bool = True) -> DatasetIndex:
    """Apply the rules every layout shares; the first broken one raises :class:`DatasetLayoutError`."""
    if not index.samples:
        raise layout_error(f"{index.root}: no images found", expected)
    for s in index.samples:
        if not s.image.is_file():
            raise layout_error(f"{s.image}: image not found", expected)
        if s.split == "train" and s.label != 0:
            raise layout_error(f"{s.image}: training images must be normal, this one is '{s.defect}'", expected)
        if s.label == 0 and s.mask is not None:
            raise layout_error(f"{s.mask}: mask given for the normal image {s.image}", expected)
        if s.label == 1 and s.mask is None and masks_required:
            raise layout_error(f"{s.image}: defect image without a mask", expected)
        if s.mask is not None and not s.mask.is_file():
            raise layout_error(f"{s.mask}: mask not found for the defect image {s.image}", expected)
    trained = {s.class_name for s in index.samples if s.split == "train"}
    for name in index.classes:
        if name not in trained:
            raise layout_error(f"{index.root}: class '{name}' has no training images", expected)
    return index


def split_validation(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Carve a validation set out of training images: ``(train, val)``, the same for the same ``seed``.

    Each class gives ``round(fraction * n)`` of its ``n`` images, at least one when ``fraction > 0`` (and
    keeping at least one for training), drawn
    with a generator seeded by ``seed`` and the class name, so adding a class changes no other class's split.
    Only ``train`` normal samples are accepted: validation never borrows from the test set.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    for s in samples:
        if s.split != "train" or s.label != 0:
            raise ValueError(f"{s.image}: validation is carved out of train/good only, not {s.split}/{s.defect}")
    held_out: set[Path] = set()
    for name in sorted({s.class_name for s in samples}):
        images = sorted(s.image for s in samples if s.class_name == name)
        wanted = max(1, round(fraction * len(images))) if fraction > 0 else 0
        count = min(wanted, len(images) - 1)
        held_out.update(random.Random(f"{seed}:{name}").sample(images, count))
    return [s for s in samples if s.image not in held_out], [s for s in samples if s.image in held_out]
