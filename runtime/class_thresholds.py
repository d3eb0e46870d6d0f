"""Which class a frame shows, for per-class image thresholds on a multi-class line.

One DiAD model scores every class, but its raw image scores are not on one scale across classes: a part with
strong edges scores higher when normal than a plain texture does with a faint defect (the demo's normal nuts score
about 0.49, its normal fabric 0.09). One threshold for all classes then rejects good nuts or passes stained fabric.
``python -m runtime.calibrate --per-class`` gives each class its own image threshold and normalisation span, and the
detector assigns each frame to the nearest class by :func:`describe`: per colour channel of the pre-processed image,
its mean, its standard deviation and an 8-bin histogram, which do not depend on where the part lies or how it is
turned. Descriptors are compared dimension by dimension in units of their spread within the calibration classes.
"""
from __future__ import annotations

import numpy as np

BINS = 8
DESCRIPTOR_SIZE = 3 * (2 + BINS)
_INNER_EDGES = np.linspace(-2.5, 2.5, BINS + 1)[1:-1].astype(np.float32)  # in ImageNet-normalised units


def describe(batch: np.ndarray) -> np.ndarray:
    """``(B, DESCRIPTOR_SIZE)`` float32 descriptors of pre-processed ``(B, 3, S, S)`` images: per channel the
    mean, the standard deviation and the share of pixels in each of 8 bins over [-2.5, 2.5] (ends open)."""
    pixels = np.asarray(batch, np.float32).reshape(len(batch), 3, -1)
    bins = np.searchsorted(_INNER_EDGES, pixels)
    shares = np.stack([(bins == b).mean(axis=-1) for b in range(BINS)], axis=-1)
    parts = [pixels.mean(axis=-1), pixels.std(axis=-1), shares.reshape(len(batch), -1)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def class_centres(descriptors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(C, D)``: the mean descriptor of each class ``0 .. C-1`` (``labels``)."""
    return np.stack([descriptors[labels == k].mean(axis=0) for k in range(int(labels.max()) + 1)])


def spread(descriptors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per dimension, the pooled standard deviation of ``descriptors`` within their classes (``labels``, ``0 ..
    C-1``), floored at 1e-6 so a dimension constant within every class still counts (as a large distance when it
    differs)."""
    centred = descriptors - class_centres(descriptors, labels)[labels]
    return np.maximum(np.sqrt((centred**2).mean(axis=0)), 1e-6).astype(np.float32)


def assign(descriptors: np.ndarray, centres: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Index of the nearest centre ``(C, D)`` for each descriptor ``(B, D)``, distances in units of ``scale``."""
    gaps = (np.asarray(descriptors, np.float32)[:, None, :] - np.asarray(centres, np.float32)[None]) / scale
    return np.argmin((gaps**2).sum(axis=-1), axis=1)
