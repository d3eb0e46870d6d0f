"""Where the layouts put things: the one rule for mask names, a defect image's mask folder, an image's class.

Mask names, in every layout and in ``runtime.calibration_images``: the mask of image ``<stem>.<ext>`` is the image file
``<stem>_mask.<ext2>`` in its mask folder, else ``<stem>.<ext2>`` (any image extension; by name order when
several match). A mask's pixels ``> 0`` mark the defect.
"""

from __future__ import annotations

from pathlib import Path

from runtime.datasets.index import Problem, images_in
from runtime.errors import DatasetLayoutError
from runtime.files import GOOD, image_files

GROUND_TRUTH = "ground_truth"
MASK_SUFFIX = "_mask"
MASK_NAMES = "<stem>_mask.png or <stem>.png (any image extension)"
TRAIN_TEST = ("train", "test")
VISA_DATA = "Data"
CLASS_MARKERS = (TRAIN_TEST, (VISA_DATA,), (GOOD,))  # the class is the folder above the first one found
CLASS_LAYOUT = ("<class>/train/good/*.png or <class>/test/good/*.png (MVTec AD), <class>/Data/Images/Normal/*.JPG "
                "(VisA), or <class>/good/*.png (plain folder)")


class MaskFolder:
    """The mask files of one folder, matched to image stems by the mask-name rule (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files = image_files(folder)
        self._by_stem: dict[str, Path] = {}
        for path in self.files:  # sorted: the first of several with one stem wins
            self._by_stem.setdefault(path.stem, path)

    def find(self, stem: str) -> Path | None:
        """The mask of the image with this stem, or None."""
        return self._by_stem.get(stem + MASK_SUFFIX) or self._by_stem.get(stem)


def find_mask(folder: Path, stem: str) -> Path | None:
    """The mask of image ``<stem>.*`` in ``folder`` by the mask-name rule, or None."""
    return MaskFolder(folder).find(stem)


def ground_truth_folder(image: Path) -> Path:
    """Where a defect image's mask lies: ``<class>/ground_truth/<defect>/`` for ``<class>/test/<defect>/<image>``
    (MVTec AD) and for ``<class>/<defect>/<image>`` (plain folder)."""
    defect = image.parent
    class_folder = defect.parent.parent if defect.parent.name == "test" else defect.parent
    return class_folder / GROUND_TRUTH / defect.name


def class_of(path: Path) -> str:
    """An image's class from its path: the folder above its ``train/`` or ``test/`` folder (MVTec AD), else above
    its ``Data/`` folder (VisA), else above its ``good/`` folder (plain folder). Raises
    :class:`DatasetLayoutError` naming the file when its path shows none of them."""
    parents = path.parts[:-1]
    for names in CLASS_MARKERS:
        found = [i for i, part in enumerate(parents) if part in names and i > 0]
        if found:
            return parents[found[-1] - 1]
    raise DatasetLayoutError(f"{path}: no class in the path; expected {CLASS_LAYOUT}")


def pair_masks(images: list[Path], image_folder: Path, mask_folder: Path) -> tuple[list[Path | None], list[Problem]]:
    """Each image's mask in ``mask_folder`` (None where it has none), and the problems of the mask folder: masks no
    image claims (an error: a misnamed mask), other files and subfolders (warnings)."""
    masks = MaskFolder(mask_folder)
    found = [masks.find(image.stem) for image in images]
    claimed = set(found)
    orphans = [m for m in masks.files if m not in claimed]
    _, problems = images_in(mask_folder)
    if orphans:
        problems.append(Problem(mask_folder, f"{len(orphans)} mask(s) belong to no image of {image_folder} (first: "
                                             f"{orphans[0].name}); the mask of image <stem>.png is {MASK_NAMES}"))
    return found, problems


def missing_masks(images: list[Path], mask_folder: Path, error: bool, why: str) -> Problem:
    """One problem for the defect images of one folder that have no mask in ``mask_folder``."""
    return Problem(images[0].parent, f"{len(images)} defect image(s) without a mask (first: {images[0].name}); "
                                     f"expected {mask_folder}/{MASK_NAMES}; {why}", error)
