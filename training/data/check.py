"""Check a dataset before training: every problem of its layout, files, masks and counts (the report of
``python -m training.data``, and the first stage of ``python -m training.fit``)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from runtime.datasets import CALIBRATION, Report, inspect, load_index
from runtime.datasets.split_file import hold_out, hold_out_problems


def check(path: str | Path, classes: Collection[str] | None = None, fraction: float | None = None,
          seed: int = 0) -> Report:
    """The :class:`Report` of the dataset at ``path`` (a folder or a run's ``split.json``). With ``fraction``, the
    split ``training.fit`` makes: that share of each class's normal training images held out for calibration (the
    split a ``split.json`` records is kept), and an error for each class too small to train and calibrate."""
    index = load_index(path, classes, strict=False)
    if fraction is not None and not index.split(CALIBRATION):
        problems = hold_out_problems(index, fraction)
        index = hold_out(index, fraction, seed) if not problems else index
        index = replace(index, problems=index.problems + tuple(problems))
    with tqdm(total=len(index.samples), desc="reading images", unit="img", leave=False) as bar:
        return inspect(index, progress=bar.update)
