"""Labelled images for :mod:`runtime.calibrate`: listing the calibration and validation files, and scoring them.

Validation folder: searched recursively (hidden and ``ground_truth`` folders skipped); an image with a path
component ``good`` is normal, any other is a defect. Images directly inside the folder carry no label and are
ignored. A defect image's mask follows the datasets' one rule (:mod:`runtime.datasets.paths`: ``<stem>_mask.<ext>``,
else ``<stem>.<ext>``) in, with ``masks``, ``<masks>/<folder>/`` then ``<masks>/`` (``<folder>`` relative to the
validation folder), otherwise ``<class>/ground_truth/<defect>/`` (MVTec AD's ``<class>/test/<defect>/`` and the plain
folder's ``<class>/<defect>/``). Either every defect image has a mask or none.

Unreadable image (or mask) files, and those over the detector's limits, are skipped, named and counted.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import BackendOutput
from runtime.class_thresholds import describe
from runtime.datasets.paths import GROUND_TRUTH, MASK_NAMES, find_mask, ground_truth_folder
from runtime.detector import Detector
from runtime.errors import DatasetLayoutError, ImageReadError, LimitError
from runtime.files import GOOD, IMAGE_EXTENSIONS, image_files, is_image_file, is_pattern, matching_files
from runtime.inflight import drain, make_room
from runtime.limits import Limits
from runtime.preprocess import preprocess_mask, read_image, read_mask

VALIDATION_LAYOUT = (
    "DIR/.../good/*.png (normal) and DIR/.../<defect>/*.png (defects), e.g. an MVTec class's test folder or a plain "
    f"class folder, masks in <class>/ground_truth/<defect>/ or --masks, named {MASK_NAMES}"
)


@dataclass(frozen=True)
class LabelledImage:
    """One image file: ``label`` 0 (normal) or 1 (defect); ``mask``: a defect image's mask file (``> 0`` = defect)."""

    path: Path
    label: int = 0
    mask: Path | None = None


@dataclass
class ScoredSet:
    """Raw outputs of the readable images: scores ``(N,)``, maps ``(N, S, S)``, masks ``(N, S, S)`` 0/1 or None,
    class descriptors ``(N, D)`` (:func:`runtime.class_thresholds.describe`)."""

    images: list[LabelledImage]
    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray | None
    skipped: list[str]
    descriptors: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return np.array([image.label for image in self.images], np.int64)


# ---------------------------------------------------------------------------------------------- listing files


def list_images(spec: str | Path) -> list[Path]:
    """One image file, the image files directly inside a folder, or those matching a glob pattern (``**``
    recursive), sorted.

    Raises :class:`DatasetLayoutError` naming ``spec`` when the file or folder is missing or holds no image file.
    """
    path, kinds = Path(spec), ", ".join(IMAGE_EXTENSIONS)
    if path.is_file():
        if not is_image_file(path):
            raise DatasetLayoutError(f"{path}: not an image file; expected {kinds}, a folder of them or a glob")
        return [path]
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise DatasetLayoutError(
                f"{path}: no image files ({kinds}) directly in this folder; expected the normal images there "
                f"(for subfolders use a glob pattern such as '{path}/**/*.png')"
            )
        return files
    if is_pattern(str(spec)):
        files = [p for p in matching_files(str(spec)) if is_image_file(p)]
        if not files:
            raise DatasetLayoutError(f"{spec}: glob pattern matches no image files ({kinds})")
        return files
    raise DatasetLayoutError(f"{path}: file or folder not found; expected normal images ({kinds}): a folder, a "
                             "glob or one file")


def mask_folders(image: Path, root: Path, masks: Path | None) -> list[Path]:
    """The folders where a defect image's mask may be, in order of preference (see the module docstring)."""
    if masks is None:
        return [ground_truth_folder(image)]
    return [masks / image.parent.relative_to(root), masks]


def list_validation(folder: str | Path, masks: str | Path | None = None) -> tuple[list[LabelledImage], list[Path]]:
    """Labelled images below ``folder`` with their masks, and the unlabelled images directly inside it.

    Raises :class:`DatasetLayoutError` when a folder is missing, a label is absent, or only some defect images
    (or, with ``masks``, none) have masks.
    """
    root = Path(folder)
    mask_root = None if masks is None else Path(masks)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: validation folder not found; expected {VALIDATION_LAYOUT}")
    if mask_root is not None and not mask_root.is_dir():
        raise DatasetLayoutError(f"{mask_root}: mask folder not found; expected <stem>_mask.png or <stem>.png files")
    images, unlabelled = [], []
    for path in sorted(p for p in root.rglob("*") if is_image_file(p)):
        parts = path.relative_to(root).parts[:-1]
        if GROUND_TRUTH in parts or any(part.startswith(".") for part in parts):
            continue
        if not parts:
            unlabelled.append(path)
            continue
        label = int(GOOD not in parts)
        found = None
        if label:
            found = next(filter(None, (find_mask(f, path.stem) for f in mask_folders(path, root, mask_root))), None)
        images.append(LabelledImage(path, label, found))
    n_good = sum(image.label == 0 for image in images)
    if n_good == 0 or n_good == len(images):
        raise DatasetLayoutError(
            f"{root}: validation needs normal and defect images, found {n_good} normal and "
            f"{len(images) - n_good} defect; expected {VALIDATION_LAYOUT}"
        )
    defects = [image for image in images if image.label]
    missing = [image for image in defects if image.mask is None]
    if missing and (len(missing) < len(defects) or mask_root is not None):
        first = missing[0].path
        looked = ", ".join(f"{f}/" for f in mask_folders(first, root, mask_root))
        raise DatasetLayoutError(
            f"{first}: defect image without a mask ({len(missing)} of {len(defects)}); looked in {looked} for "
            f"{MASK_NAMES}"
        )
    return images, unlabelled


# ---------------------------------------------------------------------------------------------------- scoring


class NoProgress:
    """Stands in for a tqdm bar."""

    def update(self, n: int) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over ``total`` images when asked for and tqdm is installed, else a silent stand-in."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return NoProgress()
        return tqdm(total=total, desc=desc, unit="img")
    return NoProgress()


def _read(image: LabelledImage, size: int, with_masks: bool, limits: Limits) -> tuple[np.ndarray, np.ndarray | None]:
    """The RGB image and (``with_masks``) its mask at the model resolution, zeros without a mask file."""
    frame = read_image(image.path, limits)
    if not with_masks:
        return frame, None
    if image.mask is None:
        return frame, np.zeros((size, size), np.uint8)
    return frame, preprocess_mask(read_mask(image.mask, limits), size)


def score_images(
    detector: Detector,
    images: Sequence[LabelledImage],
    batch_size: int | None = None,
    with_masks: bool = False,
    progress: bool = False,
    desc: str = "score",
) -> ScoredSet:
    """Raw scores and maps of ``images`` (and their masks at the model resolution: zeros for normal images).

    Unreadable images or masks, and those over the detector's limits, are skipped and listed;
    :class:`DatasetLayoutError` if none is readable. The next batch is read and pre-processed while the backend's
    pipeline slots compute the ones before it.
    """
    step = batch_size or detector.manifest.max_batch
    kept: list[LabelledImage] = []
    masks: list[np.ndarray] = []
    outputs: list[BackendOutput] = []
    descriptors: list[np.ndarray] = []
    skipped: list[str] = []
    bar = progress_bar(len(images), desc, progress)
    try:
        for start in range(0, len(images), step):
            frames = []
            for image in images[start : start + step]:
                try:
                    frame, mask = _read(image, detector.image_size, with_masks, detector.limits)
                except (ImageReadError, LimitError) as exc:
                    skipped.append(str(exc))
                    continue
                kept.append(image)
                frames.append(frame)
                if mask is not None:
                    masks.append(mask)
            if frames:
                make_room(detector, outputs.append)
                batch = detector.preprocess(frames)
                descriptors.append(describe(batch))
                detector.submit(batch)
            bar.update(len(images[start : start + step]))
        drain(detector, outputs.append)
    finally:
        bar.close()
    if not kept:
        where = images[0].path.parent if images else "(no files)"
        raise DatasetLayoutError(f"{where}: none of the {len(images)} image files could be read; first: {skipped[0]}")
    out = BackendOutput.concat(outputs)
    return ScoredSet(kept, np.asarray(out.score, np.float32), np.asarray(out.anomaly_map, np.float32),
                     np.stack(masks) if with_masks else None, skipped,
                     np.concatenate(descriptors))
