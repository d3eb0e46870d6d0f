"""Real photographs with drawn-in defects: a check of a recipe on images that no generator of ours drew.

The photographs are the texture samples that scikit-image installs with its wheel (``skimage.data``; nothing is
downloaded): ``brick``, ``grass`` and ``gravel`` (grey-level) and ``tissue`` (the colour immunohistochemistry
slide, ``immunohistochemistry``), each 512 x 512. Every image is a 192-pixel square crop, flipped at random, under
a small gain and contrast change and sensor noise, resized to the dataset's size. Training crops come from rows
0..319 of each photograph and test crops from rows 320..511 (:func:`render_train` / :func:`render`), so no test
pixel is ever seen in training.

Four defect types, each drawn in after the resize, with exact masks (where the blended change reaches
:data:`runtime.synthetic.VISIBLE` in some channel; area between ``MIN_AREA`` and ``MAX_AREA`` of the image):
``scratch`` (a thin light or dark curved line), ``stain`` (a soft-edged brown or grey discolouration), ``hole``
(a dark, sharp-edged irregular void) and ``foreign`` (a patch of another photograph: coffee, a cat, an astronaut,
a rocket). The defect generators of the demo, of the parts set and of any training-time anomaly synthesis are
separate code.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import cv2
import numpy as np

from runtime.files import GOOD
from runtime.synthetic import MAX_AREA, MIN_AREA, VISIBLE

SOURCES = {"brick": "brick", "grass": "grass", "gravel": "gravel", "tissue": "immunohistochemistry"}
FOREIGN = ("coffee", "chelsea", "astronaut", "rocket")  # skimage.data photographs pasted in as foreign matter
CLASSES = tuple(SOURCES)
DEFECTS = ("scratch", "stain", "hole", "foreign")
CROP = 192  # side of a crop in the photograph's pixels
TRAIN_ROWS = 320  # training crops lie in rows [0, TRAIN_ROWS), test crops below
NOISE = 0.01  # standard deviation of the Gaussian sensor noise
ATTEMPTS = 20  # defect draws until the area falls in range


@lru_cache(maxsize=16)
def photo(name: str) -> np.ndarray:
    """A ``skimage.data`` photograph as float32 RGB in ``[0, 1]`` (grey levels repeated, alpha dropped)."""
    import skimage.data  # the 'train' extra; only the dataset commands need it

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3], np.float32) / 255.0


def crop(rng: np.random.Generator, source: np.ndarray, rows: tuple[int, int], size: int) -> np.ndarray:
    """A random ``CROP`` square from ``rows`` of ``source``, flipped at random, resized to ``size``."""
    top = int(rng.integers(rows[0], rows[1] - CROP + 1))
    left = int(rng.integers(0, source.shape[1] - CROP + 1))
    patch = source[top : top + CROP, left : left + CROP]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.5:
        patch = patch[::-1]
    interpolation = cv2.INTER_AREA if size < CROP else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=interpolation)


def capture(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """``image`` under a drawn gain and contrast change (a few per cent)."""
    mean = image.mean()
    contrast, gain = rng.uniform(0.94, 1.06), rng.uniform(0.95, 1.05)
    return ((image - mean) * contrast + mean) * gain


# ------------------------------------------------------------------------------------------------ defects


def blob(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """A filled irregular polygon (0/1 float32) of about ``radius`` pixels around a random centre."""
    centre = rng.uniform(0.2, 0.8, 2) * size
    angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(7, 13))))
    radii = radius * rng.uniform(0.55, 1.3, len(angles))
    points = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.rint(points * 16).astype(np.int32)], 1, cv2.LINE_AA, shift=4)
    return mask.astype(np.float32)


def scratch(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved line, light or dark: opacity and target."""
    size = image.shape[0]
    start, heading = rng.uniform(0.2, 0.8, 2) * size, rng.uniform(0, 2 * math.pi)
    length, points = rng.uniform(0.2, 0.45) * size, [start]
    for _ in range(int(rng.integers(3, 6))):
        heading += rng.normal(0, 0.35)
        points.append(points[-1] + length / 4 * np.array([math.cos(heading), math.sin(heading)]))
    line = np.zeros((size, size), np.uint8)
    width = max(1, int(round(size / 256 * rng.uniform(1.0, 3.0))))
    cv2.polylines(line, [np.rint(np.array(points) * 16).astype(np.int32)], False, 1, width, cv2.LINE_AA, shift=4)
    tone = rng.choice([0.06, 0.92]) + rng.uniform(-0.04, 0.04)
    return line.astype(np.float32) * rng.uniform(0.75, 1.0), np.full_like(image, tone)


def stain(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged discolouration: the texture multiplied by a brown or grey tint."""
    size = image.shape[0]
    shape = blob(rng, size, rng.uniform(0.06, 0.13) * size)
    soft = cv2.GaussianBlur(shape, (0, 0), size / 64)
    tint = np.array([[0.62, 0.45, 0.28], [0.5, 0.5, 0.5], [0.75, 0.55, 0.35]][int(rng.integers(3))], np.float32)
    return soft * rng.uniform(0.6, 0.9), image * tint


def hole(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sharp-edged void: near black, a trace of the texture left."""
    size = image.shape[0]
    shape = blob(rng, size, rng.uniform(0.04, 0.09) * size)
    return shape, image * 0.12 + 0.02


def foreign(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A patch of another photograph, sharp-edged."""
    size = image.shape[0]
    source = photo(FOREIGN[int(rng.integers(len(FOREIGN)))])
    rows = (0, source.shape[0])
    return blob(rng, size, rng.uniform(0.05, 0.11) * size), crop(rng, source, rows, size)


MAKERS: dict[str, Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": scratch, "stain": stain, "hole": hole, "foreign": foreign,
}


def add_defect(rng: np.random.Generator, image: np.ndarray, defect: str) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with ``defect`` blended in and its mask; drawn again (up to ``ATTEMPTS``) until the visible area
    is in range."""
    for _ in range(ATTEMPTS):
        alpha, target = MAKERS[defect](rng, image)
        change = alpha * np.abs(target - image).max(axis=2)
        alpha = np.where(change >= VISIBLE, alpha, 0).astype(np.float32)
        if MIN_AREA <= np.count_nonzero(alpha) / alpha.size <= MAX_AREA:
            break
    return image + alpha[..., None] * (target - image), alpha > 0


# ------------------------------------------------------------------------------------------------- public


def draw(class_name: str, rng: np.random.Generator, defect: str | None, size: int, rows: tuple[int, int]):
    """One image of ``class_name`` cropped from ``rows``: RGB uint8 ``(size, size, 3)`` and mask uint8 0/1."""
    if class_name not in SOURCES:
        raise ValueError(f"unknown class {class_name!r}; expected one of {', '.join(SOURCES)}")
    if defect not in (None, GOOD, *DEFECTS):
        raise ValueError(f"unknown defect {defect!r}; expected one of {', '.join(DEFECTS)}")
    image = capture(rng, crop(rng, photo(SOURCES[class_name]), rows, size))
    mask = np.zeros((size, size), bool)
    if defect not in (None, GOOD):
        image, mask = add_defect(rng, image, defect)
    image = image + rng.normal(0, NOISE, image.shape).astype(np.float32)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), mask.astype(np.uint8)


def render(
    class_name: str, rng: np.random.Generator, defect: str | None = None, size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """A test image (rows ``TRAIN_ROWS`` and below of the photograph) with ``defect`` (None/"good": normal)."""
    return draw(class_name, rng, defect, size, (TRAIN_ROWS, photo(SOURCES[class_name]).shape[0]))


def render_train(class_name: str, rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A normal training image (rows above ``TRAIN_ROWS`` of the photograph)."""
    return draw(class_name, rng, None, size, (0, TRAIN_ROWS))
