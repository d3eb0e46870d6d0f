"""Drawing procedural product scenes with exactly masked defects, in numpy and OpenCV (no torch).

The toolkit of the synthetic image sets (the demo's, :mod:`runtime.synthetic`, which also feeds the synthetic
camera, and the parts set, :mod:`training.synthetic_parts`): a set draws its classes as :class:`Scene` records and
its defects as makers, and :func:`render_with` turns a class and a defect into a photograph and its mask.

One random generator drives an image, in this order: the clean scene, then the lighting and sensor noise, then
the defect. A defect is an opacity ``alpha`` and a target picture blended over the clean scene; ``alpha`` is set
to zero wherever the change would be under :data:`VISIBLE`, and the mask is ``alpha > 0``. So the mask is
exactly the set of pixels the defect changes, and two renders from equal generator states, one with and one
without a defect, differ only inside the mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from runtime.files import GOOD

VISIBLE = 0.05  # smallest change (fraction of full scale, any channel) that counts as part of a defect
MIN_AREA, MAX_AREA = 0.003, 0.05  # defect area as a fraction of the image
SHIFT = 4  # sub-pixel bits for OpenCV drawing
ATTEMPTS = 20  # defect draws until the area falls in range
NOISE = 0.012  # standard deviation of the (uniform) sensor noise


@dataclass
class Scene:
    """A clean picture in float32 RGB ``[0, 1]`` before lighting and noise."""

    image: np.ndarray  # (S, S, 3)
    backdrop: np.ndarray  # (S, S, 3): what shows where a piece is missing
    support: np.ndarray  # (S, S) coverage of the product: defects start where it is 1


SceneMaker = Callable[[np.random.Generator, int], Any]  # draws a class's Scene (or a subclass) at a size
DefectMaker = Callable[[np.random.Generator, Any], tuple[np.ndarray, np.ndarray]]  # a scene's alpha and target


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only pixel coordinates ``x, y`` of a ``size`` square."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise, about unit amplitude, with ``cells`` features across the image."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def jitter(rng: np.random.Generator, colour: tuple[float, float, float], amount: float) -> tuple[float, ...]:
    """``colour`` with each channel scaled by a factor within ``1 ± amount``."""
    return tuple(c * rng.uniform(1 - amount, 1 + amount) for c in colour)


# Per-channel helpers: OpenCV's merge and split are much faster than numpy broadcasting over a last axis of 3.
def paint(weight: np.ndarray, colour) -> np.ndarray:
    """RGB ``weight * colour`` from a ``(S, S)`` weight."""
    return cv2.merge([weight * np.float32(c) for c in colour])


def scaled(image: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """RGB ``image`` times a ``(S, S)`` weight."""
    return image * cv2.merge([weight, weight, weight])


def tinted(image: np.ndarray, colour) -> np.ndarray:
    """RGB ``image`` times a colour, channel by channel."""
    return cv2.merge([plane * np.float32(c) for plane, c in zip(cv2.split(image), colour)])


def disc(r: np.ndarray, radius: float) -> np.ndarray:
    """Anti-aliased coverage of ``r <= radius``."""
    return np.clip(radius - r + 0.5, 0.0, 1.0)


def polygon(size: int, points: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a filled polygon given in float pixel coordinates."""
    canvas = np.zeros((size, size), np.uint8)
    fixed = np.round(points * (1 << SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [fixed], 255, cv2.LINE_AA, SHIFT)
    return canvas.astype(np.float32) / 255


def blob(rng: np.random.Generator, centre: np.ndarray, radius: float, spread: float = 0.3) -> np.ndarray:
    """An irregular polygon around ``centre``, its corners within ``radius * (1 ± spread)``."""
    n = int(rng.integers(7, 12))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(1 - spread, 1 + spread, n)
    return centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def blobs(
    rng: np.random.Generator, size: int, centre: np.ndarray, reach: float, spread: float, sigma: tuple[float, float]
) -> np.ndarray:
    """A soft field in [0, 1]: the maximum of 2-4 Gaussian blobs (widths ``sigma`` x ``reach``) around ``centre``."""
    x, y = grid(size)
    field = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = (centre + rng.uniform(-spread, spread, 2) * reach).tolist()
        width = rng.uniform(*sigma) * reach
        field = np.maximum(field, np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width**2)))
    return field


def shadow(coverage: np.ndarray, k: float) -> np.ndarray:
    """The soft shadow an object of ``coverage`` casts, at scale ``k`` (image side / 256)."""
    shifted = np.roll(coverage, (round(7 * k), round(5 * k)), axis=(0, 1))
    return cv2.GaussianBlur(shifted, (0, 0), 6 * k)


def surface(rng: np.random.Generator, size: int, colour: tuple[float, float, float]) -> np.ndarray:
    """A matte, slightly uneven surface to put objects on."""
    return paint(1 + 0.05 * smooth_noise(rng, size, 5), jitter(rng, colour, 0.04))


def pose(rng: np.random.Generator, size: int) -> tuple[float, float, float]:
    """Object centre (±10 % of the image) and scale (±10 %)."""
    cx, cy = size * (0.5 + rng.uniform(-0.1, 0.1, 2))
    return float(cx), float(cy), float(rng.uniform(0.9, 1.1))


def point_on(rng: np.random.Generator, where: np.ndarray) -> np.ndarray:
    """A random pixel (x, y) where ``where`` is true."""
    ys, xs = np.nonzero(where)
    i = rng.integers(len(xs))
    return np.array([xs[i], ys[i]], np.float64)


def inside(scene: Scene, margin: float) -> np.ndarray:
    """Pixels fully on the product and at least ``margin`` pixels from the image border."""
    size = scene.support.shape[0]
    m = int(margin)
    where = scene.support >= 0.999
    where[:m], where[size - m :], where[:, :m], where[:, size - m :] = False, False, False, False
    return where


def visible(scene: Scene, alpha: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``alpha`` with zeros wherever the blended change would be under :data:`VISIBLE`."""
    difference = np.abs(target - scene.image)
    change = alpha * np.maximum(np.maximum(difference[..., 0], difference[..., 1]), difference[..., 2])
    return np.where(change >= VISIBLE, alpha, 0).astype(np.float32)


def add_defect(rng: np.random.Generator, scene: Scene, maker: DefectMaker) -> tuple[np.ndarray, np.ndarray]:
    """The defective scene and its boolean mask; draws again (up to :data:`ATTEMPTS`) until the area is in range."""
    for _ in range(ATTEMPTS):
        alpha, target = maker(rng, scene)
        alpha = visible(scene, alpha, target)
        if MIN_AREA <= np.count_nonzero(alpha) / alpha.size <= MAX_AREA:
            break
    image = scene.image + scaled(target - scene.image, alpha)
    return image, alpha > 0


def photograph(
    rng: np.random.Generator, scene: Scene, maker: DefectMaker | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``scene`` under drawn lighting and sensor noise, with the defect ``maker`` draws (last) when given:
    RGB uint8 ``(S, S, 3)`` and mask uint8 ``(S, S)``."""
    size = scene.image.shape[0]
    x, y = grid(size)
    heading = rng.uniform(0, 2 * np.pi)
    ramp = ((x - size / 2) * math.cos(heading) + (y - size / 2) * math.sin(heading)) / size
    gain = rng.uniform(0.9, 1.1) * (1 + rng.uniform(0.0, 0.25) * ramp)
    noise = (rng.random((size, size, 3), dtype=np.float32) - np.float32(0.5)) * np.float32(NOISE * math.sqrt(12))
    image, mask = scene.image, np.zeros((size, size), bool)
    if maker is not None:
        image, mask = add_defect(rng, scene, maker)
    rgb = np.clip(np.rint((scaled(image, gain) + noise) * 255), 0, 255).astype(np.uint8)
    return rgb, mask.astype(np.uint8)


def render_with(
    scenes: dict[str, SceneMaker],
    makers: dict[str, DefectMaker],
    class_name: str,
    rng: np.random.Generator,
    defect: str | None,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One image of ``class_name`` among ``scenes``, with the defect of ``makers`` named ``defect`` (``None`` or
    ``"good"``: none): RGB uint8 ``(size, size, 3)`` and mask uint8 ``(size, size)`` (0 or 1)."""
    if class_name not in scenes:
        raise ValueError(f"unknown class {class_name!r}; expected one of {', '.join(scenes)}")
    if defect not in (None, GOOD, *makers):
        raise ValueError(f"unknown defect {defect!r}; expected one of {', '.join(makers)}")
    return photograph(rng, scenes[class_name](rng, size), None if defect in (None, GOOD) else makers[defect])
