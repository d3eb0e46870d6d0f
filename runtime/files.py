"""Image files on disk, one definition for the stream, calibration and the training datasets, and the name of the
normal class."""
from __future__ import annotations

import glob
from pathlib import Path

GOOD = "good"  # the folder (and defect name) of normal images, as MVTec AD names it
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")  # a GIF: its first frame


def is_image_file(path: Path) -> bool:
    """A visible entry with an image extension (:data:`IMAGE_EXTENSIONS`, any case) that is no folder. Links,
    devices and pipes with such a name count: reading them gives an error, not a silent skip."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and not _is_dir(path)


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted; none when it is not a folder."""
    if not _is_dir(folder):
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def other_files(folder: Path) -> list[Path]:
    """The visible entries directly inside ``folder`` that are neither image files nor folders, sorted."""
    if not _is_dir(folder):
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not _is_dir(p) and not is_image_file(p))


def is_pattern(spec: str) -> bool:
    """Whether ``spec`` is a glob pattern (holds ``*``, ``?`` or ``[``)."""
    return any(c in spec for c in "*?[")


def matching_files(pattern: str) -> list[Path]:
    """The entries matching glob ``pattern`` (``**`` recursive) that are not folders, sorted."""
    return sorted(p for p in map(Path, glob.glob(pattern, recursive=True)) if not _is_dir(p))


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # unreadable: let reading it say so
        return False
