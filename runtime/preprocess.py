"""Image pre-processing exactly as the DiAD reference, in numpy and OpenCV (no PIL, no torch).

The reference reads with ``cv2.imread``, converts BGR to RGB, resizes with PIL's antialiased bilinear filter
(torchvision ``Resize`` on a PIL image), divides by 255 and normalises with the ImageNet mean and std. Masks are
resized the same way and binarised with ``> 0``. :func:`resize` reproduces PIL's 8-bit resampler bit for bit:
the same filter support, the same fixed-point coefficients and the same horizontal-then-vertical passes.
"""
from __future__ import annotations

import os
import stat
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import FrameError, ImageReadError, LimitError
from runtime.image_header import read_header
from runtime.limits import Limits

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 256

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images
BUFFER_BYTES_PER_PIXEL = 6  # a decoder's own buffer (a TIFF strip or tile) may hold 16-bit RGB of the largest frame


def read_image(path: str | Path, limits: Limits | None = None) -> np.ndarray:
    """Read an image file as RGB uint8 ``(H, W, 3)`` within ``limits`` (default :class:`Limits`); raise
    :class:`ImageReadError` or :class:`LimitError` naming the file."""
    return decode_image(read_file(path, limits), str(path), limits)


def read_mask(path: str | Path, limits: Limits | None = None) -> np.ndarray:
    """Read a ground-truth mask as uint8 ``(H, W)``; any non-zero pixel is a defect."""
    return decode_image(read_file(path, limits), str(path), limits, cv2.IMREAD_GRAYSCALE)


def read_file(path: str | Path, limits: Limits | None = None) -> np.ndarray:
    """The bytes of a regular file no larger than ``limits.max_file_bytes``, checked before reading."""
    limits = limits or Limits()
    try:  # non-blocking: a pipe named .png must not hang the caller; regular files ignore the flag
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb", buffering=0) as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ImageReadError(f"{path}: not a regular file (a folder, device, pipe or socket)")
            if info.st_size == 0:
                raise ImageReadError(f"{path}: empty file (expected an image)")
            limits.check_file(info.st_size, str(path))
            data = np.empty(info.st_size, np.uint8)
            view, got = memoryview(data), 0
            while got < info.st_size and (n := f.readinto(view[got:])):
                got += n
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    return data[:got]


def decode_image(
    data: np.ndarray, what: str, limits: Limits | None = None, flags: int = cv2.IMREAD_COLOR
) -> np.ndarray:
    """Decode an encoded PNG, JPEG, BMP, TIFF, WebP or GIF (its first frame; uint8 bytes) as RGB ``(H, W, 3)``,
    grayscale ``(H, W)`` with ``flags=cv2.IMREAD_GRAYSCALE``, or as stored with ``cv2.IMREAD_UNCHANGED`` (see
    :func:`read_stored`). The size in the header is checked against ``limits`` before decoding."""
    limits = limits or Limits()
    header = read_header(data, what)
    limits.check_frame(header.width, header.height, what)
    if header.buffer_bytes > BUFFER_BYTES_PER_PIXEL * limits.max_pixels:
        raise LimitError(
            f"{what}: a {header.format} strip or tile needs {header.buffer_bytes / 1e6:.0f} MB to decode, over "
            f"{BUFFER_BYTES_PER_PIXEL} bytes per allowed pixel (raise it with --max-pixels or Limits(max_pixels=...))"
        )
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as exc:
        raise ImageReadError(f"{what}: corrupt {header.format} data ({_first_line(exc)})") from None
    if image is None or image.size == 0:
        build = f", or an OpenCV {cv2.__version__} build without a GIF decoder" if header.format == "GIF" else ""
        raise ImageReadError(f"{what}: not a decodable image (corrupt or cut {header.format} data{build})")
    if sorted(image.shape[:2]) != sorted((header.height, header.width)):  # decoders must honour their header
        raise ImageReadError(f"{what}: decoded to {image.shape[1]} x {image.shape[0]}, the header says "
                             f"{header.width} x {header.height}")
    if image.ndim == 2 or flags == cv2.IMREAD_UNCHANGED:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


def read_stored(path: str | Path, limits: Limits | None = None) -> np.ndarray:
    """The pixels of an image file as stored, to say what :func:`read_image` converts: ``(H, W)`` grayscale or
    ``(H, W, C)`` with ``C`` 3 (BGR) or 4 (BGRA), uint8 or uint16, no EXIF rotation."""
    return decode_image(read_file(path, limits), str(path), limits, cv2.IMREAD_UNCHANGED)


def check_rgb(image: object, what: str, limits: Limits | None = None) -> np.ndarray:
    """``image`` if it is an RGB uint8 array ``(H, W, 3)`` within ``limits``; else :class:`FrameError` (or
    :class:`LimitError`) naming ``what`` and saying what was expected."""
    expected = "expected an RGB uint8 array of shape (H, W, 3)"
    if not isinstance(image, np.ndarray):
        hint = "; read image files with runtime.preprocess.read_image" if isinstance(image, (str, Path)) else ""
        raise FrameError(f"{what}: {expected}, got {type(image).__name__}{hint}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 4)):
        hint = "RGBA: drop the alpha with image[..., :3]" if image.shape[-1] == 4 and image.ndim == 3 else \
            "grayscale: convert with cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)"
        raise FrameError(f"{what}: {expected}, got shape {image.shape} ({hint})")
    if image.ndim != 3 or image.shape[2] != 3:
        raise FrameError(f"{what}: {expected}, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise FrameError(f"{what}: {expected}, got dtype {image.dtype} (scale it to 0..255 and cast to uint8)")
    if image.size == 0:
        raise FrameError(f"{what}: {expected}, got an empty image of shape {image.shape}")
    (limits or Limits()).check_frame(image.shape[1], image.shape[0], what)
    return image


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


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


def imagenet_normalize(image: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(..., H, W, 3)`` to ImageNet-normalised float32 ``(..., 3, H, W)`` (ToTensor + Normalize)."""
    x = image.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def denormalize(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`imagenet_normalize` for display: float ``(..., 3, H, W)`` to RGB uint8 ``(..., H, W, 3)``."""
    rgb = np.moveaxis(np.asarray(x, np.float32), -3, -1) * np.asarray(IMAGENET_STD, np.float32)
    rgb = rgb + np.asarray(IMAGENET_MEAN, np.float32)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def preprocess(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` to the model input: float32 ``(3, size, size)``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    return imagenet_normalize(resize(image, size))


def preprocess_mask(mask: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 mask ``(H, W)`` to a binary uint8 ``(size, size)`` mask: bilinear resize, then ``> 0``."""
    return (resize(mask, size) > 0).astype(np.uint8)
