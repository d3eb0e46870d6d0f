"""DiAD's anomaly-map post-processing as small constant matrices, in numpy.

Reference (``test.py`` and ``utils/eval_helper.py`` of the DiAD code): per feature scale the ``1 - cos`` map is
upsampled bilinearly (``align_corners=True``) to the image size, the maps are summed, smoothed with
``scipy.ndimage.gaussian_filter(sigma=5)`` (truncate 4, mode ``reflect``), and the image score is the maximum
after eight successive 8x8 average poolings with stride 1.

Each of these steps is linear and separable, so each is one matrix ``M`` applied as ``M @ X @ M.T``. The
matrices are built here once; the numpy post-processing below and the torch scorer that is exported to ONNX
both apply these same matrices, so there is one definition of the math.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

SIGMA = 5.0
TRUNCATE = 4.0
POOL_KERNEL = 8
POOL_TIMES = 8


def gaussian_kernel(sigma: float = SIGMA, truncate: float = TRUNCATE) -> np.ndarray:
    """The 1-D kernel of ``scipy.ndimage.gaussian_filter1d`` (radius ``int(truncate * sigma + 0.5)``)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 / sigma**2 * x**2)
    return w / w.sum()


@lru_cache(maxsize=16)
def blur_matrix(size: int, sigma: float = SIGMA, truncate: float = TRUNCATE) -> np.ndarray:
    """``(size, size)`` matrix of the 1-D Gaussian with scipy's ``reflect`` border (edge sample repeated)."""
    w = gaussian_kernel(sigma, truncate)
    radius = len(w) // 2
    padded = np.pad(np.arange(size), radius, mode="symmetric")
    m = np.zeros((size, size), np.float64)
    rows = np.repeat(np.arange(size), len(w))
    cols = np.lib.stride_tricks.sliding_window_view(padded, len(w)).reshape(-1)
    np.add.at(m, (rows, cols), np.tile(w, size))
    return m


@lru_cache(maxsize=16)
def upsample_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` matrix of 1-D bilinear interpolation with ``align_corners=True``."""
    m = np.zeros((size_out, size_in), np.float64)
    if size_in == 1 or size_out == 1:
        m[:, 0] = 1.0
        return m
    src = np.arange(size_out) * (size_in - 1) / (size_out - 1)
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 2)
    frac = src - lo
    m[np.arange(size_out), lo] += 1.0 - frac
    m[np.arange(size_out), lo + 1] += frac
    return m


@lru_cache(maxsize=16)
def pool_matrix(size: int, kernel: int = POOL_KERNEL, times: int = POOL_TIMES) -> np.ndarray:
    """``(size - times * (kernel - 1), size)`` matrix of ``times`` successive 1-D box means, stride 1."""
    m = np.eye(size)
    for _ in range(times):
        n = m.shape[0] - kernel + 1
        if n < 1:
            raise ValueError(f"{times} poolings of {kernel} do not fit in {size} pixels")
        box = np.zeros((n, m.shape[0]))
        for k in range(kernel):
            box[np.arange(n), np.arange(n) + k] = 1.0 / kernel
        m = box @ m
    return m


@lru_cache(maxsize=16)
def map_matrices(feature_sizes: tuple[int, ...], image_size: int) -> tuple[np.ndarray, ...]:
    """Per feature scale, ``blur @ upsample``: takes a ``(h, h)`` cos map straight to its smoothed share."""
    blur = blur_matrix(image_size)
    return tuple((blur @ upsample_matrix(h, image_size)).astype(np.float32) for h in feature_sizes)


def anomaly_map(cos_maps: Sequence[np.ndarray], image_size: int) -> np.ndarray:
    """Sum of the upsampled ``1 - cos`` maps (each ``(N, h, h)``), Gaussian-smoothed: float32 ``(N, S, S)``."""
    mats = map_matrices(tuple(int(c.shape[-1]) for c in cos_maps), image_size)
    out = np.zeros((cos_maps[0].shape[0], image_size, image_size), np.float32)
    for m, c in zip(mats, cos_maps):
        out += m @ np.asarray(c, np.float32) @ m.T
    return out


def image_score(maps: np.ndarray) -> np.ndarray:
    """Image scores ``(N,)``: the maximum of each ``(S, S)`` map after 8x 8x8 average pooling."""
    p = pool_matrix(maps.shape[-1]).astype(np.float32)
    return (p @ np.asarray(maps, np.float32) @ p.T).reshape(len(maps), -1).max(axis=1)


def threshold_margin(values: np.ndarray | float, threshold: float, vmin: float, vmax: float) -> np.ndarray:
    """``(x - threshold) / (vmax - vmin)``: how far above its threshold a value lies, in units of the calibration
    span; comparable across thresholds (classes), unlike the raw values."""
    span = max(float(vmax) - float(vmin), 1e-12)
    return (np.asarray(values, np.float32) - threshold) / span


def normalize_to_threshold(values: np.ndarray | float, threshold: float, vmin: float, vmax: float) -> np.ndarray:
    """anomalib's normalisation: ``clip((x - threshold) / (vmax - vmin) + 0.5, 0, 1)``; the threshold maps to 0.5."""
    return np.clip(threshold_margin(values, threshold, vmin, vmax) + 0.5, 0.0, 1.0)
