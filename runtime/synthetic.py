"""Procedural product images with exactly masked defects, in numpy and OpenCV (no torch).

Four classes, two textures and two objects: ``fabric`` (a plain weave), ``wood`` (growth rings and grain),
``nut`` (a hex nut on a matte surface) and ``capsule`` (a two-tone capsule). Each varies in phase, position,
rotation, scale, colour and lighting but stays consistent within its class, with no detail finer than a few
pixels, so that a small model can learn what normal looks like. Four defect types, each on every class:
``scratch``, ``stain``, ``missing`` (a chunk cut out of an object, a hole in a texture) and ``contamination``.

One random generator drives an image, in this order: the clean scene, then the lighting and sensor noise, then
the defect. A defect is an opacity ``alpha`` and a target picture blended over the clean scene; ``alpha`` is set
to zero wherever the change would be under :data:`VISIBLE`, and the mask is ``alpha > 0``. So the mask is
exactly the set of pixels the defect changes, and two renders from equal generator states, one with and one
without a defect, differ only inside the mask. The same :func:`render` feeds the synthetic dataset and the
synthetic conveyor stream (:func:`conveyor`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from runtime.files import GOOD

CLASSES = ("fabric", "wood", "nut", "capsule")
DEFECTS = ("scratch", "stain", "missing", "contamination")

VISIBLE = 0.05  # smallest change (fraction of full scale, any channel) that counts as part of a defect
MIN_AREA, MAX_AREA = 0.003, 0.05  # defect area as a fraction of the image
_ATTEMPTS = 20  # defect draws until the area falls in range
_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_NOISE = 0.012  # standard deviation of the (uniform) sensor noise

_DARK, _LIGHT = (0.10, 0.09, 0.08), (0.92, 0.91, 0.88)
_PARTICLE_COLOURS = ((0.08, 0.08, 0.08), (0.30, 0.17, 0.08), (0.70, 0.30, 0.10), (0.15, 0.30, 0.60), (0.95, 0.95, 0.9))


@dataclass
class _Scene:
    """A clean picture in float32 RGB ``[0, 1]`` before lighting and noise."""

    image: np.ndarray  # (S, S, 3)
    backdrop: np.ndarray  # (S, S, 3): what shows where a piece is missing
    support: np.ndarray  # (S, S) coverage of the product: defects start where it is 1


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise, about unit amplitude, with ``cells`` features across the image."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _jitter(rng: np.random.Generator, colour: tuple[float, float, float], amount: float) -> tuple[float, ...]:
    return tuple(c * rng.uniform(1 - amount, 1 + amount) for c in colour)


# Per-channel helpers: OpenCV's merge and split are much faster than numpy broadcasting over a last axis of 3.
def _paint(weight: np.ndarray, colour) -> np.ndarray:
    """RGB ``weight * colour`` from a ``(S, S)`` weight."""
    return cv2.merge([weight * np.float32(c) for c in colour])


def _scaled(image: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """RGB ``image`` times a ``(S, S)`` weight."""
    return image * cv2.merge([weight, weight, weight])


def _tinted(image: np.ndarray, colour) -> np.ndarray:
    """RGB ``image`` times a colour, channel by channel."""
    return cv2.merge([plane * np.float32(c) for plane, c in zip(cv2.split(image), colour)])


def _disc(r: np.ndarray, radius: float) -> np.ndarray:
    """Anti-aliased coverage of ``r <= radius``."""
    return np.clip(radius - r + 0.5, 0.0, 1.0)


def _polygon(size: int, points: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a filled polygon given in float pixel coordinates."""
    canvas = np.zeros((size, size), np.uint8)
    fixed = np.round(points * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [fixed], 255, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255


def _blob(rng: np.random.Generator, centre: np.ndarray, radius: float, jitter: float = 0.3) -> np.ndarray:
    """An irregular polygon around ``centre``."""
    n = int(rng.integers(7, 12))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(1 - jitter, 1 + jitter, n)
    return centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _shadow(coverage: np.ndarray, k: float) -> np.ndarray:
    shifted = np.roll(coverage, (round(7 * k), round(5 * k)), axis=(0, 1))
    return cv2.GaussianBlur(shifted, (0, 0), 6 * k)


def _surface(rng: np.random.Generator, size: int, colour: tuple[float, float, float]) -> np.ndarray:
    """A matte, slightly uneven surface to put objects on."""
    return _paint(1 + 0.05 * _smooth_noise(rng, size, 5), _jitter(rng, colour, 0.04))


# ---------------------------------------------------------------------------------------------- scenes


def _fabric(rng: np.random.Generator, size: int) -> _Scene:
    """A plain weave of round threads, slightly rotated and wavy."""
    k = size / 256
    x, y = _grid(size)
    period = 30 * k * rng.uniform(0.96, 1.04)
    theta = math.radians(rng.uniform(-4, 4))
    c, s = math.cos(theta), math.sin(theta)
    u = (x * c + y * s + 1.5 * k * _smooth_noise(rng, size, 4)) / period + rng.uniform()
    v = (y * c - x * s + 1.5 * k * _smooth_noise(rng, size, 4)) / period + rng.uniform()
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    warp_on_top = ((iu + iv).astype(np.int32) & 1) == 0

    def thread(across: np.ndarray, along: np.ndarray) -> np.ndarray:
        round_profile = np.sqrt(np.clip(1 - ((2 * across - 1) / 0.86) ** 2, 0, 1))
        return round_profile * (0.75 + 0.25 * np.sin(np.pi * along))

    brightness = 0.30 + 0.70 * np.where(warp_on_top, thread(fu, fv), thread(fv, fu))
    warp, weft = _jitter(rng, (0.72, 0.60, 0.44), 0.04), _jitter(rng, (0.60, 0.50, 0.40), 0.04)
    image = _paint(brightness * warp_on_top, warp) + _paint(brightness * ~warp_on_top, weft)
    backdrop = _surface(rng, size, (0.09, 0.07, 0.06))
    return _Scene(image.astype(np.float32), backdrop, np.ones((size, size), np.float32))


def _wood(rng: np.random.Generator, size: int) -> _Scene:
    """Flat-sawn wood: bent growth rings with grain streaks that follow them."""
    k = size / 256
    x, y = _grid(size)
    theta = math.radians(rng.uniform(-6, 6))
    c, s = math.cos(theta), math.sin(theta)
    along, across = x * c + y * s, y * c - x * s
    bend = rng.uniform(5, 12) * k * np.sin(2 * np.pi * along / (rng.uniform(260, 420) * k) + rng.uniform(0, 6.3))
    depth = across + bend + 9 * k * _smooth_noise(rng, size, 3) + 2.5 * k * _smooth_noise(rng, size, 8)
    period = 28 * k * rng.uniform(0.9, 1.1)
    phase = depth / period + rng.uniform()
    rings = (0.5 - 0.5 * np.cos(2 * np.pi * (phase - np.floor(phase)))) ** 1.6
    fine = depth / (3.5 * k)
    lo = np.floor(fine.min())
    streak_values = rng.standard_normal(int(np.ceil(fine.max() - lo)) + 2).astype(np.float32)
    streaks = np.interp(fine - lo, np.arange(streak_values.size), streak_values).astype(np.float32)
    tone = np.clip(0.8 * rings + 0.07 * streaks + 0.1, 0, 1)
    light, dark = _jitter(rng, (0.80, 0.60, 0.40), 0.04), _jitter(rng, (0.50, 0.31, 0.17), 0.04)
    image = _paint(1 - tone, light) + _paint(tone, dark)
    backdrop = _surface(rng, size, (0.13, 0.08, 0.05))
    return _Scene(image.astype(np.float32), backdrop, np.ones((size, size), np.float32))


def _pose(rng: np.random.Generator, size: int) -> tuple[float, float, float]:
    """Object centre (±10 % of the image) and scale (±10 %)."""
    cx, cy = size * (0.5 + rng.uniform(-0.1, 0.1, 2))
    return float(cx), float(cy), float(rng.uniform(0.9, 1.1))


def _nut(rng: np.random.Generator, size: int) -> _Scene:
    """A hex nut seen from above: flat turned face, chamfered corners, threaded bore."""
    k = size / 256
    x, y = _grid(size)
    cx, cy, scale = _pose(rng, size)
    outer = 0.32 * size * scale
    rotation = rng.uniform(0, np.pi / 3)
    corners = np.arange(6) * np.pi / 3 + rotation
    hexagon = _polygon(size, np.stack([cx + outer * np.cos(corners), cy + outer * np.sin(corners)], axis=1))
    dx, dy = x - cx, y - cy
    r = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)
    bore, thread_outer, face = 0.40 * outer, 0.53 * outer, 0.84 * outer
    body = hexagon * (1 - _disc(r, bore))
    background = _scaled(_surface(rng, size, (0.24, 0.27, 0.31)), 1 - 0.5 * _shadow(body, k))
    light = rng.uniform(-np.pi, np.pi)
    turned = 0.80 + 0.04 * np.sin(2 * np.pi * r / (8 * k))
    chamfer = 0.62 + 0.30 * np.cos(phi - light)
    thread = 0.40 + 0.25 * (r - bore) / (thread_outer - bore) + 0.08 * np.sin(2 * np.pi * (r / (6 * k) + phi / np.pi))
    on_chamfer = np.clip((r - face) / (2 * k), 0, 1)
    on_face = _disc(r, thread_outer)
    shade = thread * on_face + (1 - on_face) * (turned * (1 - on_chamfer) + chamfer * on_chamfer)
    metal = _paint(shade, _jitter(rng, (0.70, 0.71, 0.74), 0.03))
    image = background + _scaled(metal - background, body)
    return _Scene(image.astype(np.float32), background.astype(np.float32), body.astype(np.float32))


def _capsule(rng: np.random.Generator, size: int) -> _Scene:
    """A two-tone capsule (coloured cap, cream body) on a dark tray, rotated up to ±30°."""
    k = size / 256
    x, y = _grid(size)
    cx, cy, scale = _pose(rng, size)
    radius, half = 0.13 * size * scale, 0.20 * size * scale
    theta = math.radians(rng.uniform(-30, 30))
    c, s = math.cos(theta), math.sin(theta)
    a, b = (x - cx) * c + (y - cy) * s, (y - cy) * c - (x - cx) * s
    beyond = np.maximum(np.abs(a) - half, 0)
    d = np.hypot(beyond, b)
    body = _disc(d, radius)
    background = _scaled(_surface(rng, size, (0.15, 0.17, 0.19)), 1 - 0.5 * _shadow(body, k))
    height = np.sqrt(np.clip(1 - (d / radius) ** 2, 0, 1))
    light = rng.uniform(-0.3, 0.3) - np.pi / 2
    slope = (np.sign(a) * beyond * math.cos(light) + b * math.sin(light)) / radius  # toward the light
    shade = 0.55 + 0.35 * height + 0.15 * slope
    seam_at = -0.15 * half
    cap_share = np.clip((seam_at - a) / (1.5 * k) + 0.5, 0, 1)
    cap, rest = _jitter(rng, (0.85, 0.36, 0.14), 0.04), _jitter(rng, (0.93, 0.89, 0.80), 0.03)
    shade = shade * (1 - 0.25 * np.exp(-(((a - seam_at) / (1.5 * k)) ** 2)))  # the seam
    capsule = _paint(shade * cap_share, cap) + _paint(shade * (1 - cap_share), rest)
    image = background + _scaled(capsule - background, body)
    return _Scene(image.astype(np.float32), background.astype(np.float32), body.astype(np.float32))


_SCENES: dict[str, Callable[[np.random.Generator, int], _Scene]] = {
    "fabric": _fabric,
    "wood": _wood,
    "nut": _nut,
    "capsule": _capsule,
}

# --------------------------------------------------------------------------------------------- defects


def _point_on(rng: np.random.Generator, where: np.ndarray) -> np.ndarray:
    """A random pixel (x, y) where ``where`` is true."""
    ys, xs = np.nonzero(where)
    i = rng.integers(len(xs))
    return np.array([xs[i], ys[i]], np.float64)


def _inside(scene: _Scene, margin: float) -> np.ndarray:
    """Pixels fully on the product and at least ``margin`` pixels from the image border."""
    size = scene.support.shape[0]
    m = int(margin)
    where = scene.support >= 0.999
    where[:m], where[size - m :], where[:, :m], where[:, size - m :] = False, False, False, False
    return where


def _contrasting(rng: np.random.Generator, scene: _Scene, alpha: np.ndarray, palette) -> np.ndarray:
    """A colour from ``palette`` that stands out from the scene under ``alpha``."""
    under = scene.image[alpha > 0.5].mean(axis=0) if (alpha > 0.5).any() else scene.image.mean(axis=(0, 1))
    colours = np.asarray(palette, np.float32)
    distance = np.linalg.norm(colours - under, axis=1)
    candidates = colours[distance >= 0.45] if (distance >= 0.45).any() else colours[[np.argmax(distance)]]
    return candidates[rng.integers(len(candidates))]


def _scratch(rng: np.random.Generator, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """One or two thin curved lines, 2-5 px wide, each in a colour that contrasts with it, on the product only."""
    size = scene.support.shape[0]
    k = size / 256
    alpha, target = np.zeros((size, size), np.float32), np.zeros((size, size, 3), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        canvas = np.zeros((size, size), np.uint8)
        start = _point_on(rng, _inside(scene, 20 * k))
        heading, bend = rng.uniform(0, 2 * np.pi), rng.uniform(-0.025, 0.025) / k
        steps = np.linspace(0, rng.uniform(45, 120) * k, 24)
        angles = heading + bend * steps
        dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        points = start + np.cumsum(dirs * (steps[1] - steps[0]), axis=0)
        width = max(1, round(rng.uniform(2, 5) * k))
        fixed = np.round(points * (1 << _SHIFT)).astype(np.int32)
        cv2.polylines(canvas, [fixed], False, 255, width, cv2.LINE_AA, _SHIFT)
        stroke = canvas.astype(np.float32) / 255 * scene.support
        colour = _paint(np.ones_like(stroke), _contrasting(rng, scene, stroke, (_DARK, _LIGHT)))
        target += _scaled(colour - target, (stroke > alpha).astype(np.float32))
        alpha = np.maximum(alpha, stroke)
    return alpha, target


def _blobs(
    rng: np.random.Generator, size: int, centre: np.ndarray, reach: float, spread: float, sigma: tuple[float, float]
) -> np.ndarray:
    """A soft field in [0, 1]: the maximum of 2-4 Gaussian blobs (widths ``sigma`` x ``reach``) around ``centre``."""
    x, y = _grid(size)
    field = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = (centre + rng.uniform(-spread, spread, 2) * reach).tolist()
        width = rng.uniform(*sigma) * reach
        field = np.maximum(field, np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width**2)))
    return field


def _stain(rng: np.random.Generator, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged blob that darkens and tints the product."""
    size = scene.support.shape[0]
    k = size / 256
    centre = _point_on(rng, _inside(scene, 25 * k))
    field = _blobs(rng, size, centre, rng.uniform(9, 20) * k, 0.6, (0.45, 0.8))
    alpha = rng.uniform(0.65, 0.9) * np.clip(1.4 * field, 0, 1) * scene.support
    darkening = rng.uniform(0.35, 0.6)
    return alpha, _tinted(scene.image, [darkening * c for c in _jitter(rng, (1.0, 0.80, 0.55), 0.1)])


def _missing(rng: np.random.Generator, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """A chunk cut out of an object's edge, or a hole through a texture, showing what lies behind."""
    size = scene.support.shape[0]
    k = size / 256
    edge = (scene.support > 0.05) & (scene.support < 0.95)
    is_object = edge.any()
    centre = _point_on(rng, edge if is_object else _inside(scene, 30 * k))
    radius = rng.uniform(14, 24) * k if is_object else rng.uniform(9, 20) * k
    return _polygon(size, _blob(rng, centre, radius)), scene.backdrop


def _contamination(rng: np.random.Generator, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """One to three foreign particles, with hard edges and a little relief."""
    size = scene.support.shape[0]
    k = size / 256
    centre = _point_on(rng, _inside(scene, 25 * k))
    coverage = np.zeros((size, size), np.float32)
    for i in range(int(rng.integers(1, 4))):
        offset = 0 if i == 0 else rng.uniform(-14, 14, 2) * k
        radius = rng.uniform(7, 11) * k if i == 0 else rng.uniform(4, 7) * k
        coverage = np.maximum(coverage, _polygon(size, _blob(rng, centre + offset, radius)))
    colour = _contrasting(rng, scene, coverage, _PARTICLE_COLOURS)
    relief = 0.75 + 0.35 * cv2.GaussianBlur(coverage, (0, 0), 2 * k)
    return coverage, _paint(relief, colour)


_DEFECT_MAKERS: dict[str, Callable[[np.random.Generator, _Scene], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "stain": _stain,
    "missing": _missing,
    "contamination": _contamination,
}


def _visible(scene: _Scene, alpha: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``alpha`` with zeros wherever the blended change would be under :data:`VISIBLE`."""
    difference = np.abs(target - scene.image)
    change = alpha * np.maximum(np.maximum(difference[..., 0], difference[..., 1]), difference[..., 2])
    return np.where(change >= VISIBLE, alpha, 0).astype(np.float32)


def _add_defect(
    rng: np.random.Generator, scene: _Scene, maker: Callable[[np.random.Generator, Any], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """The defective scene and its mask; draws again (up to a limit) until the area is in range."""
    for _ in range(_ATTEMPTS):
        alpha, target = maker(rng, scene)
        alpha = _visible(scene, alpha, target)
        if MIN_AREA <= np.count_nonzero(alpha) / alpha.size <= MAX_AREA:
            break
    image = scene.image + _scaled(target - scene.image, alpha)
    return image, alpha > 0


def photograph(
    rng: np.random.Generator,
    scene: _Scene,
    maker: Callable[[np.random.Generator, Any], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``scene`` under drawn lighting and sensor noise, with the defect ``maker`` draws (last) when given:
    RGB uint8 ``(S, S, 3)`` and mask uint8 ``(S, S)``. Shared by the demo's classes and the parts dataset."""
    size = scene.image.shape[0]
    x, y = _grid(size)
    heading = rng.uniform(0, 2 * np.pi)
    ramp = ((x - size / 2) * math.cos(heading) + (y - size / 2) * math.sin(heading)) / size
    gain = rng.uniform(0.9, 1.1) * (1 + rng.uniform(0.0, 0.25) * ramp)
    noise = (rng.random((size, size, 3), dtype=np.float32) - np.float32(0.5)) * np.float32(_NOISE * math.sqrt(12))
    image, mask = scene.image, np.zeros((size, size), bool)
    if maker is not None:
        image, mask = _add_defect(rng, scene, maker)
    rgb = np.clip(np.rint((_scaled(image, gain) + noise) * 255), 0, 255).astype(np.uint8)
    return rgb, mask.astype(np.uint8)


# --------------------------------------------------------------------------------------------- public


def render(
    class_name: str, rng: np.random.Generator, defect: str | None = None, size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """One image of ``class_name``: RGB uint8 ``(size, size, 3)`` and mask uint8 ``(size, size)`` (0 or 1).

    ``defect`` is ``None`` (or ``"good"``) for a normal image, whose mask is all zero, or one of
    :data:`DEFECTS`. The defect is drawn from ``rng`` last: equal generator states give the same image with and
    without the defect everywhere outside the mask.
    """
    return render_with(_SCENES, _DEFECT_MAKERS, class_name, rng, defect, size)


def render_with(
    scenes: dict[str, Callable[[np.random.Generator, int], Any]],
    makers: dict[str, Callable[[np.random.Generator, Any], tuple[np.ndarray, np.ndarray]]],
    class_name: str,
    rng: np.random.Generator,
    defect: str | None,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render` over other classes (``scenes``) and defects (``makers``): the parts dataset's."""
    if class_name not in scenes:
        raise ValueError(f"unknown class {class_name!r}; expected one of {', '.join(scenes)}")
    if defect not in (None, GOOD, *makers):
        raise ValueError(f"unknown defect {defect!r}; expected one of {', '.join(makers)}")
    return photograph(rng, scenes[class_name](rng, size), None if defect in (None, GOOD) else makers[defect])


def conveyor(seed: int, defect_rate: float = 0.2, size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray, str, str]]:
    """An endless, reproducible camera stream of ``(rgb, mask, class_name, defect)``; ``defect`` is ``"good"``
    for a normal part, and a fraction ``defect_rate`` of parts carries a random defect."""
    rng = np.random.default_rng(seed)
    while True:
        class_name = CLASSES[rng.integers(len(CLASSES))]
        defect = DEFECTS[rng.integers(len(DEFECTS))] if rng.random() < defect_rate else GOOD
        rgb, mask = render(class_name, rng, defect, size)
        yield rgb, mask, class_name, defect
