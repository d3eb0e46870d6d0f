"""Image pre-processing exactly as the DiAD reference, in numpy and OpenCV (no PIL, no torch).

The reference reads with ``cv2.imread``, converts BGR to RGB, resizes with PIL's antialiased bilinear filter
(torchvision ``Resize`` on a PIL image), divides by 255 and normalises with the ImageNet mean and std. Masks are
resized the same way and binarised with ``> 0``. :func:`resize` reproduces PIL's 8-bit resampler bit for bit:
the same filter support, the same fixed-point coefficients and the same horizontal-then-vertical passes.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import ImageReadError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 256

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 ``(H, W, 3)``; raise :class:`ImageReadError` naming the file."""
    data = _read_bytes(path)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError(f"{path}: not a decodable image (expected PNG, JPEG, BMP or TIFF)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as uint8 ``(H, W)``; any non-zero pixel is a defect."""
    data = _read_bytes(path)
    mask = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ImageReadError(f"{path}: not a decodable mask image (expected a single-channel PNG)")
    return mask


def _read_bytes(path: str | Path) -> np.ndarray:
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file (expected an image)")
    return data


@lru_cache(maxsize=64)
def _coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices ``(out, k)`` and integer weights ``(out, k)`` of Pillow's bilinear resampler."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # bilinear filter support is 1
    ksize = int(np.ceil(support)) * 2 + 1
    centers = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    idx = xmin[:, None] + taps[None, :]
    valid = taps[None, :] < xmax[:, None]
    w = 1.0 - np.abs((idx - centers[:, None] + 0.5) / filterscale)
    w = np.where(valid, np.maximum(w, 0.0), 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    fixed = np.where(w < 0, -0.5 + w * (1 << _PRECISION_BITS), 0.5 + w * (1 << _PRECISION_BITS)).astype(np.int64)
    return np.where(valid, idx, 0), fixed


def _resample_axis(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    idx, weights = _coefficients(image.shape[axis], out_size)
    src = np.moveaxis(image, axis, 0)
    w = weights.astype(np.int32).reshape((out_size, idx.shape[1]) + (1,) * (src.ndim - 1))
    acc = np.full((out_size,) + src.shape[1:], 1 << (_PRECISION_BITS - 1), dtype=np.int32)
    for k in range(idx.shape[1]):  # Pillow's sums fit in int32, as in its C code
        acc += src[idx[:, k]] * w[:, k]
    return np.moveaxis(np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8), 0, axis)


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize uint8 ``(H, W)`` or ``(H, W, C)`` to ``size`` (``int`` or ``(height, width)``) as PIL bilinear."""
    if image.dtype != np.uint8:
        raise ValueError(f"resize expects uint8 pixels, got {image.dtype}")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    out = image
    if out.shape[1] != out_w:
        out = _resample_axis(out, out_w, axis=1)
    if out.shape[0] != out_h:
        out = _resample_axis(out, out_h, axis=0)
    return out


def normalize(image: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(..., H, W, 3)`` to ImageNet-normalised float32 ``(..., 3, H, W)`` (ToTensor + Normalize)."""
    x = image.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def denormalize(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize` for display: float ``(..., 3, H, W)`` to RGB uint8 ``(..., H, W, 3)``."""
    rgb = np.moveaxis(np.asarray(x, np.float32), -3, -1) * np.asarray(IMAGENET_STD, np.float32)
    rgb = rgb + np.asarray(IMAGENET_MEAN, np.float32)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def preprocess(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` to the model input: float32 ``(3, size, size)``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    return normalize(resize(image, size))


def preprocess_mask(mask: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 mask ``(H, W)`` to a binary uint8 ``(size, size)`` mask: bilinear resize, then ``> 0``."""
    return (resize(mask, size) > 0).astype(np.uint8)
