"""The demo's procedural product images with exactly masked defects, in numpy and OpenCV (no torch).

Four classes, two textures and two objects: ``fabric`` (a plain weave), ``wood`` (growth rings and grain),
``nut`` (a hex nut on a matte surface) and ``capsule`` (a two-tone capsule). Each varies in phase, position,
rotation, scale, colour and lighting but stays consistent within its class, with no detail finer than a few
pixels, so that a small model can learn what normal looks like. Four defect types, each on every class:
``scratch``, ``stain``, ``missing`` (a chunk cut out of an object, a hole in a texture) and ``contamination``.

Drawn with :mod:`runtime.scenes`, whose rules hold: one random generator per image (the clean scene, the lighting
and noise, then the defect), and the mask is exactly the set of pixels the defect changes by :data:`VISIBLE` or
more. The same :func:`render` feeds the synthetic dataset and the synthetic conveyor stream (:func:`conveyor`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import cv2
import numpy as np

from runtime.files import GOOD
from runtime.scenes import (
    MAX_AREA,
    MIN_AREA,
    SHIFT,
    VISIBLE,
    DefectMaker,
    Scene,
    SceneMaker,
    blob,
    blobs,
    disc,
    grid,
    inside,
    jitter,
    paint,
    point_on,
    polygon,
    pose,
    render_with,
    scaled,
    shadow,
    smooth_noise,
    surface,
    tinted,
)

__all__ = [
    "CLASSES", "DEFECTS", "DEFECT_MAKERS", "GOOD", "MAX_AREA", "MIN_AREA", "SCENES", "VISIBLE", "conveyor", "render",
]

CLASSES = ("fabric", "wood", "nut", "capsule")
DEFECTS = ("scratch", "stain", "missing", "contamination")

_DARK, _LIGHT = (0.10, 0.09, 0.08), (0.92, 0.91, 0.88)
_PARTICLE_COLOURS = ((0.08, 0.08, 0.08), (0.30, 0.17, 0.08), (0.70, 0.30, 0.10), (0.15, 0.30, 0.60), (0.95, 0.95, 0.9))


# ---------------------------------------------------------------------------------------------- scenes


def _fabric(rng: np.random.Generator, size: int) -> Scene:
    """A plain weave of round threads, slightly rotated and wavy."""
    k = size / 256
    x, y = grid(size)
    period = 30 * k * rng.uniform(0.96, 1.04)
    theta = math.radians(rng.uniform(-4, 4))
    c, s = math.cos(theta), math.sin(theta)
    u = (x * c + y * s + 1.5 * k * smooth_noise(rng, size, 4)) / period + rng.uniform()
    v = (y * c - x * s + 1.5 * k * smooth_noise(rng, size, 4)) / period + rng.uniform()
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    warp_on_top = ((iu + iv).astype(np.int32) & 1) == 0

    def thread(across: np.ndarray, along: np.ndarray) -> np.ndarray:
        round_profile = np.sqrt(np.clip(1 - ((2 * across - 1) / 0.86) ** 2, 0, 1))
        return round_profile * (0.75 + 0.25 * np.sin(np.pi * along))

    brightness = 0.30 + 0.70 * np.where(warp_on_top, thread(fu, fv), thread(fv, fu))
    warp, weft = jitter(rng, (0.72, 0.60, 0.44), 0.04), jitter(rng, (0.60, 0.50, 0.40), 0.04)
    image = paint(brightness * warp_on_top, warp) + paint(brightness * ~warp_on_top, weft)
    backdrop = surface(rng, size, (0.09, 0.07, 0.06))
    return Scene(image.astype(np.float32), backdrop, np.ones((size, size), np.float32))


def _wood(rng: np.random.Generator, size: int) -> Scene:
    """Flat-sawn wood: bent growth rings with grain streaks that follow them."""
    k = size / 256
    x, y = grid(size)
    theta = math.radians(rng.uniform(-6, 6))
    c, s = math.cos(theta), math.sin(theta)
    along, across = x * c + y * s, y * c - x * s
    bend = rng.uniform(5, 12) * k * np.sin(2 * np.pi * along / (rng.uniform(260, 420) * k) + rng.uniform(0, 6.3))
    depth = across + bend + 9 * k * smooth_noise(rng, size, 3) + 2.5 * k * smooth_noise(rng, size, 8)
    period = 28 * k * rng.uniform(0.9, 1.1)
    phase = depth / period + rng.uniform()
    rings = (0.5 - 0.5 * np.cos(2 * np.pi * (phase - np.floor(phase)))) ** 1.6
    fine = depth / (3.5 * k)
    lo = np.floor(fine.min())
    streak_values = rng.standard_normal(int(np.ceil(fine.max() - lo)) + 2).astype(np.float32)
    streaks = np.interp(fine - lo, np.arange(streak_values.size), streak_values).astype(np.float32)
    tone = np.clip(0.8 * rings + 0.07 * streaks + 0.1, 0, 1)
    light, dark = jitter(rng, (0.80, 0.60, 0.40), 0.04), jitter(rng, (0.50, 0.31, 0.17), 0.04)
    image = paint(1 - tone, light) + paint(tone, dark)
    backdrop = surface(rng, size, (0.13, 0.08, 0.05))
    return Scene(image.astype(np.float32), backdrop, np.ones((size, size), np.float32))


def _nut(rng: np.random.Generator, size: int) -> Scene:
    """A hex nut seen from above: flat turned face, chamfered corners, threaded bore."""
    k = size / 256
    x, y = grid(size)
    cx, cy, scale = pose(rng, size)
    outer = 0.32 * size * scale
    rotation = rng.uniform(0, np.pi / 3)
    corners = np.arange(6) * np.pi / 3 + rotation
    hexagon = polygon(size, np.stack([cx + outer * np.cos(corners), cy + outer * np.sin(corners)], axis=1))
    dx, dy = x - cx, y - cy
    r = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)
    bore, thread_outer, face = 0.40 * outer, 0.53 * outer, 0.84 * outer
    body = hexagon * (1 - disc(r, bore))
    background = scaled(surface(rng, size, (0.24, 0.27, 0.31)), 1 - 0.5 * shadow(body, k))
    light = rng.uniform(-np.pi, np.pi)
    turned = 0.80 + 0.04 * np.sin(2 * np.pi * r / (8 * k))
    chamfer = 0.62 + 0.30 * np.cos(phi - light)
    thread = 0.40 + 0.25 * (r - bore) / (thread_outer - bore) + 0.08 * np.sin(2 * np.pi * (r / (6 * k) + phi / np.pi))
    on_chamfer = np.clip((r - face) / (2 * k), 0, 1)
    on_face = disc(r, thread_outer)
    shade = thread * on_face + (1 - on_face) * (turned * (1 - on_chamfer) + chamfer * on_chamfer)
    metal = paint(shade, jitter(rng, (0.70, 0.71, 0.74), 0.03))
    image = background + scaled(metal - background, body)
    return Scene(image.astype(np.float32), background.astype(np.float32), body.astype(np.float32))


def _capsule(rng: np.random.Generator, size: int) -> Scene:
    """A two-tone capsule (coloured cap, cream body) on a dark tray, rotated up to ±30°."""
    k = size / 256
    x, y = grid(size)
    cx, cy, scale = pose(rng, size)
    radius, half = 0.13 * size * scale, 0.20 * size * scale
    theta = math.radians(rng.uniform(-30, 30))
    c, s = math.cos(theta), math.sin(theta)
    a, b = (x - cx) * c + (y - cy) * s, (y - cy) * c - (x - cx) * s
    beyond = np.maximum(np.abs(a) - half, 0)
    d = np.hypot(beyond, b)
    body = disc(d, radius)
    background = scaled(surface(rng, size, (0.15, 0.17, 0.19)), 1 - 0.5 * shadow(body, k))
    height = np.sqrt(np.clip(1 - (d / radius) ** 2, 0, 1))
    light = rng.uniform(-0.3, 0.3) - np.pi / 2
    slope = (np.sign(a) * beyond * math.cos(light) + b * math.sin(light)) / radius  # toward the light
    shade = 0.55 + 0.35 * height + 0.15 * slope
    seam_at = -0.15 * half
    cap_share = np.clip((seam_at - a) / (1.5 * k) + 0.5, 0, 1)
    cap, rest = jitter(rng, (0.85, 0.36, 0.14), 0.04), jitter(rng, (0.93, 0.89, 0.80), 0.03)
    shade = shade * (1 - 0.25 * np.exp(-(((a - seam_at) / (1.5 * k)) ** 2)))  # the seam
    capsule = paint(shade * cap_share, cap) + paint(shade * (1 - cap_share), rest)
    image = background + scaled(capsule - background, body)
    return Scene(image.astype(np.float32), background.astype(np.float32), body.astype(np.float32))


SCENES: dict[str, SceneMaker] = {
    "fabric": _fabric,
    "wood": _wood,
    "nut": _nut,
    "capsule": _capsule,
}

# --------------------------------------------------------------------------------------------- defects


def _contrasting(rng: np.random.Generator, scene: Scene, alpha: np.ndarray, palette) -> np.ndarray:
    """A colour from ``palette`` that stands out from the scene under ``alpha``."""
    under = scene.image[alpha > 0.5].mean(axis=0) if (alpha > 0.5).any() else scene.image.mean(axis=(0, 1))
    colours = np.asarray(palette, np.float32)
    distance = np.linalg.norm(colours - under, axis=1)
    candidates = colours[distance >= 0.45] if (distance >= 0.45).any() else colours[[np.argmax(distance)]]
    return candidates[rng.integers(len(candidates))]


def _scratch(rng: np.random.Generator, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """One or two thin curved lines, 2-5 px wide, each in a colour that contrasts with it, on the product only."""
    size = scene.support.shape[0]
    k = size / 256
    alpha, target = np.zeros((size, size), np.float32), np.zeros((size, size, 3), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        canvas = np.zeros((size, size), np.uint8)
        start = point_on(rng, inside(scene, 20 * k))
        heading, bend = rng.uniform(0, 2 * np.pi), rng.uniform(-0.025, 0.025) / k
        steps = np.linspace(0, rng.uniform(45, 120) * k, 24)
        angles = heading + bend * steps
        dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        points = start + np.cumsum(dirs * (steps[1] - steps[0]), axis=0)
        width = max(1, round(rng.uniform(2, 5) * k))
        fixed = np.round(points * (1 << SHIFT)).astype(np.int32)
        cv2.polylines(canvas, [fixed], False, 255, width, cv2.LINE_AA, SHIFT)
        stroke = canvas.astype(np.float32) / 255 * scene.support
        colour = paint(np.ones_like(stroke), _contrasting(rng, scene, stroke, (_DARK, _LIGHT)))
        target += scaled(colour - target, (stroke > alpha).astype(np.float32))
        alpha = np.maximum(alpha, stroke)
    return alpha, target


def _stain(rng: np.random.Generator, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged blob that darkens and tints the product."""
    size = scene.support.shape[0]
    k = size / 256
    centre = point_on(rng, inside(scene, 25 * k))
    field = blobs(rng, size, centre, rng.uniform(9, 20) * k, 0.6, (0.45, 0.8))
    alpha = rng.uniform(0.65, 0.9) * np.clip(1.4 * field, 0, 1) * scene.support
    darkening = rng.uniform(0.35, 0.6)
    return alpha, tinted(scene.image, [darkening * c for c in jitter(rng, (1.0, 0.80, 0.55), 0.1)])


def _missing(rng: np.random.Generator, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """A chunk cut out of an object's edge, or a hole through a texture, showing what lies behind."""
    size = scene.support.shape[0]
    k = size / 256
    edge = (scene.support > 0.05) & (scene.support < 0.95)
    is_object = edge.any()
    centre = point_on(rng, edge if is_object else inside(scene, 30 * k))
    radius = rng.uniform(14, 24) * k if is_object else rng.uniform(9, 20) * k
    return polygon(size, blob(rng, centre, radius)), scene.backdrop


def _contamination(rng: np.random.Generator, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """One to three foreign particles, with hard edges and a little relief."""
    size = scene.support.shape[0]
    k = size / 256
    centre = point_on(rng, inside(scene, 25 * k))
    coverage = np.zeros((size, size), np.float32)
    for i in range(int(rng.integers(1, 4))):
        offset = 0 if i == 0 else rng.uniform(-14, 14, 2) * k
        radius = rng.uniform(7, 11) * k if i == 0 else rng.uniform(4, 7) * k
        coverage = np.maximum(coverage, polygon(size, blob(rng, centre + offset, radius)))
    colour = _contrasting(rng, scene, coverage, _PARTICLE_COLOURS)
    relief = 0.75 + 0.35 * cv2.GaussianBlur(coverage, (0, 0), 2 * k)
    return coverage, paint(relief, colour)


DEFECT_MAKERS: dict[str, DefectMaker] = {
    "scratch": _scratch,
    "stain": _stain,
    "missing": _missing,
    "contamination": _contamination,
}


# --------------------------------------------------------------------------------------------- public


def render(
    class_name: str, rng: np.random.Generator, defect: str | None = None, size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """One image of ``class_name``: RGB uint8 ``(size, size, 3)`` and mask uint8 ``(size, size)`` (0 or 1).

    ``defect`` is ``None`` (or ``"good"``) for a normal image, whose mask is all zero, or one of
    :data:`DEFECTS`. The defect is drawn from ``rng`` last: equal generator states give the same image with and
    without the defect everywhere outside the mask.
    """
    return render_with(SCENES, DEFECT_MAKERS, class_name, rng, defect, size)


def conveyor(seed: int, defect_rate: float = 0.2, size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray, str, str]]:
    """An endless, reproducible camera stream of ``(rgb, mask, class_name, defect)``; ``defect`` is ``"good"``
    for a normal part, and a fraction ``defect_rate`` of parts carries a random defect."""
    rng = np.random.default_rng(seed)
    while True:
        class_name = CLASSES[rng.integers(len(CLASSES))]
        defect = DEFECTS[rng.integers(len(DEFECTS))] if rng.random() < defect_rate else GOOD
        rgb, mask = render(class_name, rng, defect, size)
        yield rgb, mask, class_name, defect
