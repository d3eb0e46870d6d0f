"""Find a dataset's layout and read it: MVTec AD (folders or DiAD meta files), VisA, a plain folder, or the
``split.json`` of a ``training.fit`` run."""

from __future__ import annotations

import warnings
from collections.abc import Collection
from pathlib import Path

from runtime.datasets import folder, mvtec, split_file, visa
from runtime.datasets.index import DatasetIndex
from runtime.errors import DatasetLayoutError, DatasetWarning
from runtime.files import GOOD, image_files

LAYOUTS = f"{mvtec.EXPECTED}\n\n{visa.EXPECTED}\n\n{folder.EXPECTED}"


def load_index(path: str | Path, classes: Collection[str] | None = None, strict: bool = True) -> DatasetIndex:
    """The samples under ``path``, of every class or only ``classes``, in whichever layout it follows.

    Checked in this order: a ``split.json`` file (:mod:`.split_file`), ``train.json`` / ``test.json`` (DiAD meta
    files), ``split_csv/1cls.csv`` (VisA), ``<class>/train/good`` folders (MVTec AD), ``<class>/good`` folders
    (plain folder). A path that is missing or matches no layout raises :class:`DatasetLayoutError`. With
    ``strict``, the index's errors raise it too, listing them, and each of its warnings is a
    :class:`DatasetWarning`; without, the caller reports ``index.problems``.
    """
    given = Path(path)
    if given.is_file() and given.suffix == ".json":
        index = split_file.load(given, classes, lambda root, chosen: load_index(root, chosen, strict=False))
    else:
        index = _load_folder(given, classes)
    if strict:
        index.raise_errors()
        for problem in index.warnings:
            warnings.warn(str(problem), DatasetWarning, stacklevel=2)
    return index


def _load_folder(path: Path, classes: Collection[str] | None) -> DatasetIndex:
    root = path.resolve()
    if not root.is_dir():
        raise DatasetLayoutError(f"{path}: {'not a folder' if root.exists() else 'not found'}")
    if mvtec.has_meta(root):
        return mvtec.load_meta(root, classes)
    if visa.looks_like(root):
        return visa.load(root, classes)
    if mvtec.looks_like(root):
        return mvtec.load(root, classes)
    if folder.looks_like(root):
        return folder.load(root, classes)
    raise DatasetLayoutError(f"{path}: {_what_is_there(root)}; expected one of these layouts:\n\n{LAYOUTS}")


def _what_is_there(root: Path) -> str:
    """Why a folder is no dataset, in words a user can act on."""
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        return "empty folder, not a dataset"
    images = image_files(root)
    if images:
        return (f"{len(images)} image file(s) directly in this folder (first: {images[0].name}), none in a {GOOD}/ "
                f"folder: put the normal images in {root / GOOD}/ (plain folder layout)")
    with_images = [d for d in sorted(root.iterdir()) if d.is_dir() and image_files(d)]
    hint = (f"; {with_images[0]}/ holds images: a class keeps its normal images in <class>/{GOOD}/"
            if with_images else "")
    return f"not a dataset in a known layout (no <class>/good/, <class>/train/good/ or split_csv/1cls.csv){hint}"
