"""Generic generated images: the pretraining data of the ``tiny`` base model (its stand-in for SD-1.5's photos).

An endless, reproducible stream of varied scenes drawn from a seed, in numpy and OpenCV: a surface (smooth
colour fields, fractal noise, warped stripes, tilings, cells, dots, hatching) with zero to three objects on it
(ellipses, rounded boxes, regular and irregular polygons, rings, stadiums; shaded, textured, outlined, with drop
shadows), under a lighting ramp, optional blur and sensor noise. It never draws the demo's product classes: the
base model learns images in general, and the demo's fine-tuning learns its products, as DiAD fine-tunes SD-1.5.
"""
from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator

import cv2
import numpy as np

_SHIFT = 4  # sub-pixel bits for OpenCV drawing


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x, y


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random colour: any hue, saturation skewed low (as most surfaces), any brightness."""
    h, s, v = rng.random(), rng.random() ** 1.5, rng.uniform(0.1, 0.95)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise with about ``cells`` features across, unit amplitude."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _fractal(rng: np.random.Generator, size: int) -> np.ndarray:
    """Fractal noise in [0, 1]: octaves of smooth noise with a random roughness."""
    total, amplitude, roughness = np.zeros((size, size), np.float32), 1.0, rng.uniform(0.35, 0.75)
    for octave in range(int(rng.integers(3, 6))):
        total += amplitude * _noise(rng, size, 2 * 2**octave)
        amplitude *= roughness
    return _unit(total)


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def _coords(rng: np.random.Generator, size: int, warp: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotated, optionally warped pixel coordinates."""
    x, y = _grid(size)
    theta = rng.uniform(0, np.pi)
    c, s = math.cos(theta), math.sin(theta)
    u, v = x * c + y * s, y * c - x * s
    if warp:
        u = u + warp * size * _noise(rng, size, int(rng.integers(2, 6)))
        v = v + warp * size * _noise(rng, size, int(rng.integers(2, 6)))
    return u, v


# ----------------------------------------------------------------------------------------- tone patterns in [0, 1]


def _stripes(rng, size):
    u, _ = _coords(rng, size, rng.uniform(0, 0.05))
    period = rng.uniform(4, 40)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    return wave ** rng.uniform(0.5, 3)


def _tiles(rng, size):
    u, v = _coords(rng, size, rng.uniform(0, 0.01))
    w, h = rng.uniform(8, 48), rng.uniform(8, 48)
    row = np.floor(v / h)
    u = u + (row % 2) * w * rng.choice([0, 0.5])  # brick bond or stack bond
    fu, fv = u / w - np.floor(u / w), v / h - np.floor(v / h)
    gap = rng.uniform(0.03, 0.15)
    mortar = (np.minimum(fu, 1 - fu) < gap / 2) | (np.minimum(fv, 1 - fv) < gap / 2)
    cell_tone = np.sin(12.9898 * np.floor(u / w) + 78.233 * row) * 43758.5453
    cell_tone = cell_tone - np.floor(cell_tone)
    return np.where(mortar, rng.uniform(0, 0.3), 0.6 + 0.4 * cell_tone * rng.uniform(0, 1)).astype(np.float32)


def _checks(rng, size):
    u, v = _coords(rng, size, rng.uniform(0, 0.02))
    period = rng.uniform(6, 40)
    a, b = np.sin(2 * np.pi * u / period), np.sin(2 * np.pi * v / period)
    if rng.random() < 0.5:
        return (0.5 + 0.5 * np.tanh(rng.uniform(1, 8) * a * b)).astype(np.float32)  # checkerboard
    return (0.25 * (a + 1) * (b + 1)).astype(np.float32)  # woven-looking bumps


def _cells(rng, size):
    """Voronoi cells: distance to the nearest seed, or the seed's own tone."""
    n = int(rng.integers(6, 60))
    points = rng.uniform(0, size, (n, 2)).astype(np.float32)
    x, y = _grid(size)
    d = np.full((size, size), np.inf, np.float32)
    owner = np.zeros((size, size), np.int32)
    for i, (px, py) in enumerate(points):
        di = (x - px) ** 2 + (y - py) ** 2
        closer = di < d
        d = np.where(closer, di, d)
        owner = np.where(closer, i, owner)
    if rng.random() < 0.5:
        return _unit(np.sqrt(d))
    return rng.random(n).astype(np.float32)[owner]


def _dots(rng, size):
    u, v = _coords(rng, size, 0.0)
    period = rng.uniform(6, 36)
    fu, fv = u / period - np.floor(u / period) - 0.5, v / period - np.floor(v / period) - 0.5
    r = np.hypot(fu, fv) * period
    radius = rng.uniform(0.15, 0.45) * period
    return np.clip(radius - r + 0.5, 0, 1).astype(np.float32)


def _hatching(rng, size):
    canvas = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(20, 120))):
        p = rng.uniform(-0.2 * size, 1.2 * size, 2)
        angle = rng.normal(rng.uniform(0, np.pi), 0.2) if rng.random() < 0.7 else rng.uniform(0, np.pi)
        length = rng.uniform(0.1, 0.8) * size
        q = p + length * np.array([math.cos(angle), math.sin(angle)])
        pts = np.round(np.stack([p, q]) * (1 << _SHIFT)).astype(np.int32)
        cv2.line(canvas, tuple(pts[0]), tuple(pts[1]), float(rng.uniform(0.3, 1)), int(rng.integers(1, 4)),
                 cv2.LINE_AA, _SHIFT)
    return canvas


def _smooth(rng, size):
    return _unit(_noise(rng, size, int(rng.integers(1, 5))))


_PATTERNS = (_fractal, _stripes, _tiles, _checks, _cells, _dots, _hatching, _smooth)


def _surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """A pattern between two colours, sometimes with fractal grain on top; RGB float32 in [0, 1]."""
    tone = _PATTERNS[rng.integers(len(_PATTERNS))](rng, size)
    if rng.random() < 0.3:
        tone = cv2.GaussianBlur(tone, (0, 0), rng.uniform(0.5, 2.5))
    a, b = _colour(rng), _colour(rng)
    if rng.random() < 0.5:  # low contrast: the two colours close together
        b = np.clip(a + rng.normal(0, 0.12, 3), 0, 1).astype(np.float32)
    image = a + tone[..., None] * (b - a)
    if rng.random() < 0.4:
        image = image * (1 + rng.uniform(0.05, 0.3) * (_fractal(rng, size)[..., None] - 0.5))
    return image.astype(np.float32)


# ------------------------------------------------------------------------------------------------------ objects


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Anti-aliased coverage of a random shape somewhere on the image."""
    x, y = _grid(size)
    cx, cy = rng.uniform(0.15, 0.85, 2) * size
    r = rng.uniform(0.08, 0.35) * size
    theta = rng.uniform(0, np.pi)
    c, s = math.cos(theta), math.sin(theta)
    a, b = (x - cx) * c + (y - cy) * s, (y - cy) * c - (x - cx) * s
    kind = rng.integers(6)
    if kind == 0:  # ellipse
        d = np.hypot(a, b / rng.uniform(0.4, 1.0)) - r
    elif kind == 1:  # rounded box
        hw, hh, rr = r, r * rng.uniform(0.4, 1.0), r * rng.uniform(0, 0.4)
        qa, qb = np.abs(a) - hw + rr, np.abs(b) - hh + rr
        d = np.hypot(np.maximum(qa, 0), np.maximum(qb, 0)) + np.minimum(np.maximum(qa, qb), 0) - rr
    elif kind == 2:  # stadium
        half = r * rng.uniform(0.3, 1.0)
        d = np.hypot(np.maximum(np.abs(a) - half, 0), b) - r * rng.uniform(0.3, 0.6)
    elif kind == 3:  # ring
        width = r * rng.uniform(0.2, 0.6)
        d = np.abs(np.hypot(a, b) - r + width / 2) - width / 2
    else:  # regular (4) or irregular (5) polygon
        n = int(rng.integers(3, 9))
        angles = np.arange(n) * 2 * np.pi / n + theta if kind == 4 else np.sort(rng.uniform(0, 2 * np.pi, n + 3))
        radii = r if kind == 4 else r * rng.uniform(0.6, 1.3, len(angles))
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        canvas = np.zeros((size, size), np.uint8)
        cv2.fillPoly(canvas, [np.round(pts * (1 << _SHIFT)).astype(np.int32)], 255, cv2.LINE_AA, _SHIFT)
        return canvas.astype(np.float32) / 255
    return np.clip(0.5 - d, 0, 1).astype(np.float32)


def _place_object(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    size = image.shape[0]
    mask = _shape_mask(rng, size)
    if mask.sum() < 16:
        return image
    if rng.random() < 0.7:  # drop shadow
        shift = rng.uniform(-0.04, 0.04, 2) * size
        moved = cv2.warpAffine(mask, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (size, size))
        shadow = cv2.GaussianBlur(moved, (0, 0), rng.uniform(1, 6))
        image = image * (1 - rng.uniform(0.2, 0.6) * shadow[..., None])
    fill = _surface(rng, size) if rng.random() < 0.35 else np.broadcast_to(_colour(rng), image.shape)
    if rng.random() < 0.8:  # shading: a light direction across the object's extent
        inner = cv2.GaussianBlur(mask, (0, 0), max(1.0, math.sqrt(mask.sum()) / 6))
        x, y = _grid(size)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = ((x * math.cos(angle) + y * math.sin(angle)) / size - 0.5) * rng.uniform(0, 1.2)
        fill = fill * (0.7 + 0.5 * inner[..., None] + ramp[..., None])
    out = image + mask[..., None] * (fill - image)
    if rng.random() < 0.4:  # outline or rim highlight
        edge = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        out = out + edge[..., None] * (_colour(rng) - out) * rng.uniform(0.4, 1)
    return out


def render(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One scene, RGB uint8 ``(size, size, 3)``."""
    image = _surface(rng, size)
    for _ in range(int(rng.choice(4, p=(0.3, 0.4, 0.2, 0.1)))):
        image = _place_object(rng, image)
    x, y = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((x * math.cos(angle) + y * math.sin(angle)) / size - 0.5) * rng.uniform(0, 0.4)
    image = image * (rng.uniform(0.8, 1.2) + ramp[..., None])
    if rng.random() < 0.2:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    image = image + rng.normal(0, rng.uniform(0, 0.02), image.shape).astype(np.float32)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def stream(seed: int, size: int = 128, start: int = 0) -> Iterator[np.ndarray]:
    """Endless reproducible scenes from the ``start``-th on: the ``i``-th is drawn from ``default_rng([seed, i])``."""
    i = start
    while True:
        yield render(np.random.default_rng([seed, i]), size)
        i += 1
