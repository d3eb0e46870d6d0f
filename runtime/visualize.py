"""Pictures for people: heatmaps, overlays with mask contours, labelled tiles and grids (numpy + OpenCV)."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

GT_COLOUR = (255, 255, 255)
PRED_COLOUR = (255, 0, 0)


def heatmap(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """A float map ``(H, W)`` as an RGB uint8 JET heatmap over the fixed range ``[vmin, vmax]``."""
    span = max(float(vmax) - float(vmin), 1e-12)
    scaled = np.clip((np.asarray(values, np.float32) - vmin) / span, 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def draw_contour(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 1) -> np.ndarray:
    """A copy of RGB ``image`` with the outline of the binary ``mask`` drawn on it."""
    out = np.ascontiguousarray(image).copy()
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if binary.shape != out.shape[:2]:
        binary = cv2.resize(binary, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def overlay(
    image: np.ndarray,
    values: np.ndarray,
    vmin: float,
    vmax: float,
    alpha: float = 0.5,
    gt_mask: np.ndarray | None = None,
    pred_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Blend the heatmap of ``values`` over RGB ``image``; ground truth outlined white, prediction red."""
    heat = heatmap(values, vmin, vmax)
    if heat.shape[:2] != image.shape[:2]:
        heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(np.ascontiguousarray(image), 1.0 - alpha, heat, alpha, 0.0)
    if gt_mask is not None:
        out = draw_contour(out, gt_mask, GT_COLOUR)
    if pred_mask is not None:
        out = draw_contour(out, pred_mask, PRED_COLOUR)
    return out


def label(image: np.ndarray, text: str, colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A copy of RGB ``image`` with ``text`` on a dark band at the top."""
    out = np.ascontiguousarray(image).copy()
    scale = max(out.shape[1] / 640.0, 0.35)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (min(w + 6, out.shape[1]), h + base + 6), (0, 0, 0), -1)
    cv2.putText(out, text, (3, h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return out


def grid(tiles: Sequence[np.ndarray], columns: int, pad: int = 2) -> np.ndarray:
    """Same-size RGB tiles laid out row by row with ``pad`` pixels of black between them."""
    if not tiles:
        raise ValueError("grid needs at least one tile")
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    out = np.zeros((rows * (h + pad) - pad, columns * (w + pad) - pad, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = tile
    return out


def write_rgb(path: str, image: np.ndarray) -> None:
    """Write an RGB uint8 image (PNG/JPEG by extension)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write image")
