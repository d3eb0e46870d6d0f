"""The samples of an anomaly-detection dataset whatever its folder layout, and the problems found reading it.

Each layout module (:mod:`.mvtec`, :mod:`.visa`, :mod:`.folder`) turns a folder into a :class:`DatasetIndex` whose
``problems`` name every file or folder that is wrong (errors) or that the layout does not use (warnings), and
passes it through :func:`check_index`, which adds the rules every layout shares: files exist, training images are
normal, normal images have no mask, every class has training images.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runtime.errors import DatasetLayoutError
from runtime.files import IMAGE_EXTENSIONS, image_files, other_files

ANOMALY = "anomaly"  # the defect type of an anomalous image whose layout does not name one
TRAIN, CALIBRATION, TEST = "train", "calibration", "test"
SPLITS = (TRAIN, CALIBRATION, TEST)  # calibration: normal training images held out by training.fit
SHOWN_ERRORS = 20  # errors listed in a DatasetLayoutError; python -m training.data lists them all


@dataclass(frozen=True)
class Sample:
    """One image: ``label`` 0 (normal, ``defect == "good"``) or 1; ``mask`` is ``None`` for normal images and for
    defect images without a mask."""

    image: Path
    mask: Path | None
    label: int
    defect: str
    class_name: str
    split: str


@dataclass(frozen=True)
class Problem:
    """What is wrong with a file or folder (``error``), or what the layout does not use or converts (a warning);
    ``text`` says what was expected."""

    path: Path
    text: str
    error: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.text}"


@dataclass(frozen=True)
class DatasetIndex:
    """All samples of a dataset, the layout they were read from (``expected``: its description) and the problems."""

    layout: str
    root: Path
    samples: tuple[Sample, ...]
    problems: tuple[Problem, ...] = ()
    expected: str = ""

    @property
    def classes(self) -> list[str]:
        return sorted({s.class_name for s in self.samples})

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.error]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if not p.error]

    def split(self, name: str) -> list[Sample]:
        """The samples of split ``"train"``, ``"calibration"`` or ``"test"``."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [s for s in self.samples if s.split == name]

    def filter(self, classes: Collection[str]) -> DatasetIndex:
        """The samples of the given classes only; an unknown class name is a :class:`DatasetLayoutError`."""
        keep = set(choose_classes(self.classes, classes, self.root))
        return replace(self, samples=tuple(s for s in self.samples if s.class_name in keep))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per class: train, calibration, test good and test defect counts, defect images with a mask, and counts
        per defect type."""
        report = {}
        for name in self.classes:
            samples = [s for s in self.samples if s.class_name == name]
            defects = [s for s in samples if s.label == 1]
            report[name] = {
                "train": sum(s.split == TRAIN for s in samples),
                "calibration": sum(s.split == CALIBRATION for s in samples),
                "test_good": sum(s.split == TEST and s.label == 0 for s in samples),
                "test_defect": len(defects),
                "masks": sum(s.mask is not None for s in defects),
                "defects": dict(sorted(Counter(s.defect for s in defects).items())),
            }
        return report

    def raise_errors(self) -> DatasetIndex:
        """``self`` when it has no errors, else a :class:`DatasetLayoutError` listing them and the expected layout."""
        errors = self.errors
        if not errors:
            return self
        lines = [f"{self.root}: {len(errors)} problem(s) in the {self.layout} dataset:"]
        lines += [f"  {p}" for p in errors[:SHOWN_ERRORS]]
        if len(errors) > SHOWN_ERRORS:
            lines.append(f"  ... and {len(errors) - SHOWN_ERRORS} more (python -m training.data {self.root} lists all)")
        raise DatasetLayoutError("\n".join(lines) + (f"\nexpected layout:\n{self.expected}" if self.expected else ""))


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


def unknown_folder(folder: Path, expected: str) -> Problem:
    """The warning for a folder a layout does not use."""
    return Problem(folder, f"a folder the layout does not know, ignored; expected {expected}", error=False)


def images_in(folder: Path, expected_subfolders: str = "no subfolders") -> tuple[list[Path], list[Problem]]:
    """The image files directly in ``folder``, with a warning for its other files and one per subfolder."""
    problems = [unknown_folder(d, f"{expected_subfolders} in {folder}") for d in subfolders(folder)]
    others = other_files(folder)
    if others:
        names = ", ".join(p.name for p in others[:3]) + (", ..." if len(others) > 3 else "")
        problems.append(Problem(folder, f"{len(others)} file(s) that are not images ignored ({names}); image files "
                                        f"end in {', '.join(IMAGE_EXTENSIONS)}", error=False))
    return image_files(folder), problems


def stray_images(folder: Path, where: str) -> list[Problem]:
    """A warning when image files lie directly in ``folder``, where the layout expects none."""
    images = image_files(folder)
    if not images:
        return []
    return [Problem(folder, f"{len(images)} image file(s) directly in this folder are not used (first: "
                            f"{images[0].name}); expected them in {where}", error=False)]


def check_index(index: DatasetIndex) -> DatasetIndex:
    """Add the problems of the rules every layout shares (a layout's own problems come first)."""
    problems = list(index.problems)
    if not index.samples:
        problems.append(Problem(index.root, "no images found"))
    for s in index.samples:
        if not s.image.is_file():
            problems.append(Problem(s.image, "image not found"))
        if s.split == TRAIN and s.label != 0:
            problems.append(Problem(s.image, f"training images must be normal, this one is '{s.defect}'"))
        if s.label == 0 and s.mask is not None:
            problems.append(Problem(s.mask, f"mask given for the normal image {s.image}"))
        if s.mask is not None and not s.mask.is_file():
            problems.append(Problem(s.mask, f"mask not found for the defect image {s.image}"))
    trained = {s.class_name for s in index.samples if s.split == TRAIN}
    for name in index.classes:
        if name not in trained:
            problems.append(Problem(index.root, f"class '{name}' has no normal training images"))
    return replace(index, problems=tuple(problems))


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
        if s.split != TRAIN or s.label != 0:
            raise ValueError(f"{s.image}: validation is carved out of train/good only, not {s.split}/{s.defect}")
    counts = {name: max(1, round(fraction * n)) if fraction > 0 else 0 for name, n in _per_class(samples).items()}
    return draw(samples, counts, seed)


def draw(samples: Sequence[Sample], counts: dict[str, int], seed: int | str) -> tuple[list[Sample], list[Sample]]:
    """``(kept, drawn)``: ``counts[c]`` samples of each class ``c`` drawn at random (at most all but one),
    seeded by ``seed`` and the class name; the order of ``samples`` is kept in both lists."""
    held_out: set[Path] = set()
    for name, n in _per_class(samples).items():
        images = sorted(s.image for s in samples if s.class_name == name)
        held_out.update(random.Random(f"{seed}:{name}").sample(images, min(counts.get(name, 0), n - 1)))
    return [s for s in samples if s.image not in held_out], [s for s in samples if s.image in held_out]


def _per_class(samples: Iterable[Sample]) -> dict[str, int]:
    return dict(sorted(Counter(s.class_name for s in samples).items()))
