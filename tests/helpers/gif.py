"""Animated GIFs for the tests, written with Pillow (OpenCV writes GIF only from 4.11, and decodes it only from
4.11: JetPack's OpenCV 4.10 reports a GIF instead of reading it)."""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def gif_bytes(frames: list[np.ndarray]) -> bytes:
    """An animated GIF of the RGB uint8 ``frames`` (exact colours: a few flat colours fit the palette)."""
    pictures = [Image.fromarray(frame) for frame in frames]
    out = io.BytesIO()
    pictures[0].save(out, "GIF", save_all=True, append_images=pictures[1:], duration=100, loop=0)
    return out.getvalue()


def write_gif(path: Path, frames: list[np.ndarray]) -> Path:
    path.write_bytes(gif_bytes(frames))
    return path


OPENCV_READS_GIF = cv2.imdecode(np.frombuffer(gif_bytes([np.zeros((2, 2, 3), np.uint8)]), np.uint8),
                                cv2.IMREAD_COLOR) is not None
