"""The split of a ``training.fit`` run, ``RUN/split.json``: the normal training images it holds out for calibration.

Every command that reads a dataset folder reads this file in its place (``--data RUN/split.json``): the samples are
the dataset's, with the held-out images in split ``calibration``, so training and the normal statistics never see
them and the thresholds are calibrated on images the model never saw. Each class holds out ``round(fraction * n)``
of its ``n`` normal training images (at least :data:`MIN_CALIBRATION_IMAGES`), drawn with a generator seeded by
the seed and the class name; with MVTec AD layouts they come from ``train/good``, the test images stay test images.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime.datasets.index import CALIBRATION, TRAIN, DatasetIndex, Problem, choose_classes, draw
from runtime.errors import DatasetLayoutError

NAME = "split.json"
FORMAT = "diad-edge split 1"
MIN_TRAINING_IMAGES = 4  # per class, left to train on (training's validation holds out one of them)
MIN_CALIBRATION_IMAGES = 2  # per class: runtime.calibrate needs two normal images per class with differing scores

Reader = Callable[[Path, Collection[str] | None], DatasetIndex]


def calibration_counts(index: DatasetIndex, fraction: float) -> dict[str, int]:
    """Per class, how many normal training images are held out at ``fraction``."""
    if not 0 < fraction < 1:
        raise ValueError(f"calibration fraction must be in (0, 1), got {fraction}")
    counts = {name: sum(s.class_name == name for s in index.split(TRAIN)) for name in index.classes}
    return {name: max(MIN_CALIBRATION_IMAGES, round(fraction * n)) for name, n in counts.items()}


def hold_out_problems(index: DatasetIndex, fraction: float) -> list[Problem]:
    """An error for each class with too few normal training images to train and calibrate at ``fraction``."""
    problems = []
    for name, held in calibration_counts(index, fraction).items():
        train = [s for s in index.split(TRAIN) if s.class_name == name]
        if len(train) - held >= MIN_TRAINING_IMAGES:
            continue
        where = train[0].image.parent if train else index.root / name
        rule = " (every 5th image of good/ is a test image)" if index.layout == "folder" else ""
        problems.append(Problem(where, (
            f"class '{name}' has {len(train)} normal training image(s){rule}; training.fit needs at least "
            f"{MIN_TRAINING_IMAGES + held}: {MIN_TRAINING_IMAGES} to train on and {held} held out for calibration "
            f"(--calibration-fraction {fraction:g}, at least {MIN_CALIBRATION_IMAGES})")))
    return problems


def hold_out(index: DatasetIndex, fraction: float, seed: int) -> DatasetIndex:
    """``index`` with each class's calibration share of its normal training images in split ``calibration``."""
    train = index.split(TRAIN)
    _, held = draw(train, calibration_counts(index, fraction), f"calibration:{seed}")
    chosen = {s.image for s in held}
    samples = tuple(replace(s, split=CALIBRATION) if s.image in chosen else s for s in index.samples)
    return replace(index, samples=samples)


def record(index: DatasetIndex, classes: Collection[str] | None, fraction: float, seed: int) -> dict[str, Any]:
    """The JSON of a held-out split (paths relative to the dataset root)."""
    def relative(split: str) -> list[str]:
        return [s.image.relative_to(index.root).as_posix() for s in index.split(split)]

    return {"format": FORMAT, "data": str(index.root), "layout": index.layout,
            "classes": sorted(classes) if classes else None, "fraction": fraction, "seed": seed,
            CALIBRATION: relative(CALIBRATION), TRAIN: relative(TRAIN)}


def read(path: Path) -> dict[str, Any]:
    """A split file's JSON, checked; :class:`DatasetLayoutError` naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetLayoutError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetLayoutError(f"{path}: not a split file of training.fit (expected \"format\": \"{FORMAT}\"); "
                                 "give a dataset folder or a run's split.json")
    return data


def load(path: Path, classes: Collection[str] | None, reader: Reader) -> DatasetIndex:
    """The dataset a split file names, read by ``reader``, with its held-out images in split ``calibration``;
    ``classes`` narrows the classes the file records."""
    data = read(path)
    root = Path(data["data"])
    recorded = data.get("classes")
    narrowed = classes is not None
    if narrowed and recorded is not None:
        classes = choose_classes(recorded, classes, path)
    index = reader(root, classes if narrowed else recorded)
    held = {root / name for name in data[CALIBRATION]}
    samples = tuple(replace(s, split=CALIBRATION) if s.image in held else s for s in index.samples)
    problems = list(index.problems)
    known = {s.image: s for s in index.samples}
    for image in sorted(held):
        sample = known.get(image)
        if sample is None and not narrowed:
            problems.append(Problem(image, f"held out for calibration in {path} but not in the dataset"))
        elif sample is not None and sample.split != TRAIN:
            problems.append(Problem(image, f"held out for calibration in {path} but now a {sample.split} image"))
    return replace(index, samples=samples, problems=tuple(problems))
