"""A second set of procedural product images with exactly masked defects, to check that a recipe generalises.

The interface and the rules of :mod:`runtime.synthetic`, drawn with the same toolkit (:mod:`runtime.scenes`), with
other products and other defects. Four classes, two textures and two objects: ``tile`` (glazed ceramic tiles in
grout), ``carpet`` (a looped pile), ``gear`` (a steel spur gear on a cutting mat) and ``pill`` (a scored round
tablet in a blister tray). Four defect types, each on every class: ``crack`` (a thin, jagged, branching dark line),
``cut`` (a straight notch through an object's outline, a straight groove across a texture), ``discoloration`` (a
soft-edged hue shift) and ``deformation`` (an object's outline pushed out of shape, a texture locally buckled).

As there, one random generator drives an image (the clean scene, the lighting and sensor noise, then the
defect), a defect is an opacity and a target blended over the clean scene, and the mask is exactly where the
blended change reaches :data:`VISIBLE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from runtime.files import GOOD
from runtime import scenes

__all__ = ["CLASSES", "DEFECTS", "DEFECT_MAKERS", "GOOD", "SCENES", "render"]

CLASSES = ("tile", "carpet", "gear", "pill")
DEFECTS = ("crack", "cut", "discoloration", "deformation")

_TEETH = 12
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_HUES = np.array([(1.25, 1.0, 0.45), (0.65, 0.95, 1.45), (0.8, 1.15, 0.7), (1.3, 0.75, 1.05), (1, 1, 1)], np.float32)
_TINTS = _HUES / (_HUES @ _LUMA)[:, None]  # yellow, blue, green, magenta, grey, each at unit luminance


@dataclass
class _Part(scenes.Scene):
    """A scene with what the outline defects need."""

    rim: np.ndarray  # (S, S) bool: an object's outline, where notches and deformations start; empty for a texture
    bend: float  # share of an outline deformation around the centre (a bent tooth) rather than out (a dent, a bulge)


def _light_slope(height: np.ndarray, light: float) -> np.ndarray:
    """Slope of ``height`` per pixel toward a light at angle ``light`` (positive: the surface faces the light)."""
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    return -(gx * np.float32(math.cos(light)) + gy * np.float32(math.sin(light)))


def _sign(rng: np.random.Generator) -> int:
    """-1 or 1."""
    return 2 * int(rng.integers(2)) - 1


# ---------------------------------------------------------------------------------------------- scenes


def _tile(rng: np.random.Generator, size: int) -> _Part:
    """Square glazed tiles in grout: bevelled edges, a little tone variation between tiles, dark glaze specks."""
    k = size / 256
    x, y = scenes.grid(size)
    period = 64 * k * rng.uniform(0.95, 1.05)
    theta = math.radians(rng.uniform(-3, 3))
    c, s = math.cos(theta), math.sin(theta)
    u = (x * c + y * s) / period + rng.uniform()
    v = (y * c - x * s) / period + rng.uniform()
    iu, iv = np.floor(u), np.floor(v)
    to_edge = np.minimum(np.minimum(u - iu, iu + 1 - u), np.minimum(v - iv, iv + 1 - v)) * period  # pixels
    grout = 2.5 * k
    glaze = np.clip(to_edge - grout + 0.5, 0, 1)
    rise = np.clip((to_edge - grout) / (5 * k), 0, 1)
    bevel = 1 + 0.25 * 5 * k * _light_slope(rise * rise * (3 - 2 * rise), rng.uniform(-np.pi, np.pi))
    tones = 1 + 0.035 * rng.standard_normal((8, 8)).astype(np.float32)
    tone = tones[iu.astype(np.int64) % 8, iv.astype(np.int64) % 8]
    specks = 1 - 0.35 * np.clip(scenes.smooth_noise(rng, size, 48) - 2.0, 0, 1)
    hx, hy = rng.uniform(0, size, 2)
    gloss = 0.10 * np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / (2 * (90 * k) ** 2))
    glazed = scenes.paint(tone * bevel * specks, scenes.jitter(rng, (0.40, 0.62, 0.64), 0.04)) + cv2.merge([gloss] * 3)
    grouted = scenes.paint(1 + 0.06 * scenes.smooth_noise(rng, size, 50), scenes.jitter(rng, (0.70, 0.68, 0.64), 0.03))
    image = grouted + scenes.scaled(glazed - grouted, glaze)
    backdrop = scenes.surface(rng, size, (0.78, 0.68, 0.56))  # the fired clay under the glaze
    blank = np.zeros((size, size), bool)
    return _Part(image.astype(np.float32), backdrop, np.ones((size, size), np.float32), blank, 0.0)


def _carpet(rng: np.random.Generator, size: int) -> _Part:
    """A looped pile: staggered rows of loops of uneven height, fibre streaks along the rows, a little mottling."""
    k = size / 256
    x, y = scenes.grid(size)
    theta = math.radians(rng.uniform(-5, 5))
    c, s = math.cos(theta), math.sin(theta)
    row = (y * c - x * s) / (12 * k * rng.uniform(0.95, 1.05)) + rng.uniform()
    irow = np.floor(row)
    loop = (x * c + y * s) / (11 * k * rng.uniform(0.95, 1.05)) + 0.5 * irow + rng.uniform()
    iloop = np.floor(loop)
    heights = rng.uniform(0.6, 1.0, (16, 64)).astype(np.float32)
    height = heights[irow.astype(np.int64) % 16, iloop.astype(np.int64) % 64]
    bump = np.sin(np.pi * (row - irow)) ** 2 * np.sin(np.pi * (loop - iloop))
    fibres = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 4 * k, sigmaY=1.5 * k)
    fibres /= fibres.std() + 1e-6
    brightness = (0.4 + 0.6 * bump * height) * (1 + 0.2 * fibres) * (1 + 0.08 * scenes.smooth_noise(rng, size, 6))
    image = scenes.paint(brightness, scenes.jitter(rng, (0.56, 0.22, 0.24), 0.05))
    backdrop = scenes.surface(rng, size, (0.55, 0.46, 0.32))  # the jute backing
    blank = np.zeros((size, size), bool)
    return _Part(image.astype(np.float32), backdrop, np.ones((size, size), np.float32), blank, 0.0)


def _gear(rng: np.random.Generator, size: int) -> _Part:
    """A steel spur gear seen from above: trapezoid teeth, a recessed web, a raised hub and a keyed bore."""
    k = size / 256
    x, y = scenes.grid(size)
    cx, cy, scale = scenes.pose(rng, size)
    tip = 0.34 * size * scale
    root = 0.82 * tip
    pitch = 2 * np.pi / _TEETH
    rotation = rng.uniform(0, pitch)
    outline = []
    for i in range(_TEETH):
        a = rotation + i * pitch
        for radius, angles in (
            (root, [a - 0.27 * pitch]),
            (tip, np.linspace(a - 0.15 * pitch, a + 0.15 * pitch, 4)),
            (root, np.linspace(a + 0.27 * pitch, a + 0.73 * pitch, 5)),
        ):
            outline += [(cx + radius * math.cos(b), cy + radius * math.sin(b)) for b in angles]
    teeth = scenes.polygon(size, np.array(outline))
    dx, dy = x - cx, y - cy
    r = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)
    key = rng.uniform(0, 2 * np.pi)
    along, across = dx * math.cos(key) + dy * math.sin(key), dy * math.cos(key) - dx * math.sin(key)
    keyway = np.clip(0.05 * tip - np.abs(across) + 0.5, 0, 1) * np.clip(0.24 * tip - along + 0.5, 0, 1)
    bore = np.maximum(scenes.disc(r, 0.18 * tip), keyway * (along > 0))
    body = teeth * (1 - bore)
    web = np.clip(scenes.disc(r, root - 0.12 * tip) - scenes.disc(r, 0.42 * tip), 0, 1)
    light = rng.uniform(-np.pi, np.pi)
    relief = cv2.GaussianBlur(body * (1 - 0.5 * web), (0, 0), 1.5 * k)
    turned = 0.74 + 0.12 * np.cos(2 * (phi - light)) + 0.03 * np.sin(2 * np.pi * r / (6 * k))
    shade = turned * (1 - 0.15 * web) + 0.35 * 3 * k * _light_slope(relief, light)
    metal = scenes.paint(shade, scenes.jitter(rng, (0.66, 0.68, 0.72), 0.03))
    background = scenes.scaled(scenes.surface(rng, size, (0.20, 0.32, 0.26)), 1 - 0.5 * scenes.shadow(body, k))
    image = background + scenes.scaled(metal - background, body)
    rim = (teeth > 0.05) & (teeth < 0.95)
    return _Part(image.astype(np.float32), background.astype(np.float32), body.astype(np.float32), rim, 1.0)


def _pill(rng: np.random.Generator, size: int) -> _Part:
    """A round tablet with a bevelled edge, an embossed ring and a score line, in the pocket of a blister tray."""
    k = size / 256
    x, y = scenes.grid(size)
    cx, cy, scale = scenes.pose(rng, size)
    radius = 0.27 * size * scale
    dx, dy = x - cx, y - cy
    r = np.hypot(dx, dy)
    body = scenes.disc(r, radius)
    light = rng.uniform(-np.pi, np.pi)
    facing = (dx * math.cos(light) + dy * math.sin(light)) / np.maximum(r, 1)  # cosine between normal and light
    pocket = 1.25 * radius
    tray = 1 - 0.06 * scenes.disc(r, pocket) - 0.18 * facing * np.exp(-(((r - pocket) / (3 * k)) ** 2))
    surface = scenes.surface(rng, size, (0.80, 0.82, 0.84))
    background = scenes.scaled(surface, tray * (1 - 0.45 * scenes.shadow(body, k)))
    rho = r / radius
    ring = 0.72 * radius
    ridge = (r - ring) / (2 * k)
    slope = 0.6 * rho + 2.5 * (rho > 0.86).astype(np.float32) + 0.8 * ridge * np.exp(-(ridge**2))  # outward
    score_angle = rng.uniform(0, np.pi)
    across = dy * math.cos(score_angle) - dx * math.sin(score_angle)
    along = dx * math.cos(score_angle) + dy * math.sin(score_angle)
    groove = np.exp(-((across / (2 * k)) ** 2)) * np.clip((0.8 * radius - np.abs(along)) / (3 * k), 0, 1)
    wall = math.cos(light - score_angle - np.pi / 2) * across / (2 * k)
    shade = (0.80 + 0.12 * slope * facing) * (1 - 0.30 * groove) + 0.20 * wall * groove
    shade = shade * (1 + 0.02 * scenes.smooth_noise(rng, size, 30))
    tablet = scenes.paint(shade, scenes.jitter(rng, (0.58, 0.72, 0.93), 0.04))
    image = background + scenes.scaled(tablet - background, body)
    rim = (body > 0.05) & (body < 0.95)
    return _Part(image.astype(np.float32), background.astype(np.float32), body.astype(np.float32), rim, 0.0)


SCENES: dict[str, scenes.SceneMaker] = {
    "tile": _tile,
    "carpet": _carpet,
    "gear": _gear,
    "pill": _pill,
}

# --------------------------------------------------------------------------------------------- defects


def _outward(scene: _Part, point: np.ndarray) -> np.ndarray:
    """The unit vector from the centre of the product toward ``point``."""
    moments = cv2.moments(scene.support)
    away = point - np.array([moments["m10"], moments["m01"]]) / moments["m00"]
    return away / max(np.linalg.norm(away), 1e-6)


def _bar(size: int, start: np.ndarray, direction: np.ndarray, length: float, half_width: float) -> np.ndarray:
    """Coverage of a straight bar from ``start`` along unit ``direction``."""
    side = np.array([-direction[1], direction[0]]) * half_width
    end = start + direction * length
    return scenes.polygon(size, np.stack([start + side, end + side, end - side, start - side]))


def _crack(rng: np.random.Generator, scene: _Part) -> tuple[np.ndarray, np.ndarray]:
    """A thin, jagged, tapering dark line with up to two branches, on the product only."""
    size = scene.support.shape[0]
    k = size / 256
    canvas = np.zeros((size, size), np.uint8)

    def branch(start: np.ndarray, heading: float, steps: int, width: float) -> list[np.ndarray]:
        points = [start]
        for i in range(steps):
            angle = heading + rng.normal(0, 0.55)
            points.append(points[-1] + rng.uniform(5, 10) * k * np.array([math.cos(angle), math.sin(angle)]))
            a, b = (np.round(p * (1 << scenes.SHIFT)).astype(np.int32) for p in points[-2:])
            thickness = max(1, round(width * (1 - 0.5 * i / steps)))
            cv2.line(canvas, tuple(a.tolist()), tuple(b.tolist()), 255, thickness, cv2.LINE_AA, scenes.SHIFT)
        return points

    heading, width = rng.uniform(0, 2 * np.pi), rng.uniform(2.5, 3.5) * k
    trunk = branch(scenes.point_on(rng, scenes.inside(scene, 25 * k)), heading, int(rng.integers(8, 15)), width)
    for _ in range(int(rng.integers(0, 3))):
        fork = trunk[int(rng.integers(2, len(trunk) - 1))]
        branch(fork, heading + _sign(rng) * rng.uniform(0.5, 1.1), int(rng.integers(3, 7)), 0.7 * width)
    alpha = canvas.astype(np.float32) / 255 * scene.support
    return alpha, scene.image * np.float32(rng.uniform(0.15, 0.3))


def _cut(rng: np.random.Generator, scene: _Part) -> tuple[np.ndarray, np.ndarray]:
    """A straight notch through an object's outline, showing what lies behind; a straight groove in a texture."""
    size = scene.support.shape[0]
    k = size / 256
    if scene.rim.any():
        point = scenes.point_on(rng, scene.rim)
        nx, ny = _outward(scene, point)
        angle = math.atan2(-ny, -nx) + rng.uniform(-0.3, 0.3)
        inward = np.array([math.cos(angle), math.sin(angle)])
        depth, half_width = rng.uniform(18, 32) * k, rng.uniform(3.5, 5.5) * k
        return _bar(size, point - 6 * k * inward, inward, depth + 6 * k, half_width), scene.backdrop
    x, y = scenes.grid(size)
    centre = scenes.point_on(rng, scenes.inside(scene, 40 * k))
    heading, length, half_width = rng.uniform(0, 2 * np.pi), rng.uniform(40, 90) * k, rng.uniform(2, 3.5) * k
    c, s = math.cos(heading), math.sin(heading)
    coverage = _bar(size, centre - np.array([c, s]) * length / 2, np.array([c, s]), length, half_width)
    across = ((y - float(centre[1])) * c - (x - float(centre[0])) * s) / half_width
    return coverage, scenes.scaled(scene.backdrop, 0.2 + 0.6 * np.clip(across, 0, 1))  # a dark floor, one wall lit


def _discoloration(rng: np.random.Generator, scene: _Part) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged patch where the product changes hue (and a little brightness) but keeps its texture."""
    size = scene.support.shape[0]
    k = size / 256
    centre = scenes.point_on(rng, scenes.inside(scene, 25 * k))
    field = scenes.blobs(rng, size, centre, rng.uniform(8, 15) * k, 0.7, (0.5, 0.9))
    alpha = rng.uniform(0.5, 0.8) * np.clip(1.5 * field, 0, 1) * scene.support
    luminance = scene.image @ _LUMA
    under = alpha > 0.3
    mean = scene.image[under].mean(axis=0) if under.any() else scene.image.mean(axis=(0, 1))
    distance = np.linalg.norm(_TINTS * float(mean @ _LUMA) - mean, axis=1)
    candidates = np.flatnonzero(distance >= 0.2) if (distance >= 0.2).any() else [int(np.argmax(distance))]
    tint = _TINTS[candidates[rng.integers(len(candidates))]]
    return alpha, scenes.paint(luminance * np.float32(rng.uniform(0.95, 1.2)), tint)


def _deformation(rng: np.random.Generator, scene: _Part) -> tuple[np.ndarray, np.ndarray]:
    """An object's outline pushed out of shape (a bent tooth, a dent or bulge); a texture locally buckled."""
    size = scene.support.shape[0]
    k = size / 256
    x, y = scenes.grid(size)
    if scene.rim.any():
        point = scenes.point_on(rng, scene.rim)
        ox, oy = _outward(scene, point).tolist()
        px, py = scene.bend * -oy + (1 - scene.bend) * ox, scene.bend * ox + (1 - scene.bend) * oy
        sigma = rng.uniform(9, 14) * k
        bump = np.exp(-((x - point[0]) ** 2 + (y - point[1]) ** 2) / (2 * sigma**2)).astype(np.float32)
        shift = _sign(rng) * rng.uniform(0.8, 1.3) * sigma * bump  # under 1.65 sigma: no fold-over
        layer = scene.image - scene.backdrop  # the product over what lies around it, which stays
        moved = cv2.remap(layer, x - shift * px, y - shift * py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return np.ones((size, size), np.float32), scene.backdrop + moved
    cx, cy = scenes.point_on(rng, scenes.inside(scene, 35 * k)).tolist()
    sigma = rng.uniform(9, 15) * k
    dx, dy = x - cx, y - cy
    bump = np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    twist = _sign(rng) * rng.uniform(0.6, 1.0) * bump
    swell = 1 - rng.uniform(-0.4, 0.4) * bump  # radius stays monotonic: the warp cannot fold
    a, b = np.cos(twist) * swell, np.sin(twist) * swell
    moved = cv2.remap(scene.image, cx + a * dx - b * dy, cy + b * dx + a * dy, cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REFLECT)
    light = rng.uniform(-np.pi, np.pi)
    relief = _sign(rng) * rng.uniform(0.3, 0.5) * (dx * math.cos(light) + dy * math.sin(light)) / sigma
    return np.ones((size, size), np.float32), scenes.scaled(moved, 1 + relief * bump)


DEFECT_MAKERS: dict[str, scenes.DefectMaker] = {
    "crack": _crack,
    "cut": _cut,
    "discoloration": _discoloration,
    "deformation": _deformation,
}


# --------------------------------------------------------------------------------------------- public


def render(
    class_name: str, rng: np.random.Generator, defect: str | None = None, size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """One image of a parts class, drawn as :func:`runtime.synthetic.render` draws the demo's."""
    return scenes.render_with(SCENES, DEFECT_MAKERS, class_name, rng, defect, size)
