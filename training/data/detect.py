"""Find a dataset's layout and read it: MVTec-AD (folders or DiAD meta files), VisA or a generic folder."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from runtime.errors import DatasetLayoutError
from training.data import folder, mvtec, visa
from training.data.index import DatasetIndex


def load_index(path: str | Path, classes: Collection[str] | None = None) -> DatasetIndex:
    """The samples under ``path``, of every class or only ``classes``, in whichever layout it follows.

    Checked in this order: ``train.json`` / ``test.json`` (DiAD meta files), ``split_csv/1cls.csv`` (VisA),
    ``<class>/train`` folders (MVTec-AD), ``normal/`` folders (generic). A folder that matches none, or a
    missing or mismatched file, raises :class:`DatasetLayoutError`.
    """
    root = Path(path).resolve()
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
    layouts = f"{mvtec.EXPECTED}\n\n{visa.EXPECTED}\n\n{folder.EXPECTED}"
    raise DatasetLayoutError(f"{path}: not a dataset in a known layout; expected one of:\n\n{layouts}")
