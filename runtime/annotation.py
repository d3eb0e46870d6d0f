"""The stream's pictures: a frame at display size with its heatmap and verdict, or an error card."""
from __future__ import annotations

import logging

import cv2
import numpy as np

from runtime.detector import Prediction
from runtime.frames import Frame
from runtime.records import verdict_of
from runtime.sinks import OTHER_COLOUR, VERDICT_COLOURS, annotate
from runtime.visualize import label, overlay

log = logging.getLogger("runtime.stream")

COLOURS = {"anomalous": VERDICT_COLOURS["anomaly"], "normal": VERDICT_COLOURS["good"]}
DISPLAY = (512, 960)  # annotated frames: the longer side is scaled into this range


def display_size(image: np.ndarray) -> np.ndarray:
    """``image`` scaled so that its longer side lies in :data:`DISPLAY` (small frames up, large ones down)."""
    h, w = image.shape[:2]
    longer = max(h, w)
    target = min(max(longer, DISPLAY[0]), DISPLAY[1])
    if target == longer:
        return image
    scale = target / longer
    size = (max(round(w * scale), 1), max(round(h * scale), 1))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def annotated(image: np.ndarray, prediction: Prediction) -> np.ndarray:
    """The frame at display size with the anomaly heatmap and the verdict. Uncalibrated: the raw map over its own
    range and the raw score."""
    shown = display_size(image)
    verdict = verdict_of(prediction)
    if verdict is not None:
        return annotate(shown, prediction.anomaly_map, verdict, prediction.pred_score, COLOURS[verdict])
    raw = prediction.raw_map
    heat = overlay(shown, raw, float(raw.min()), float(raw.max()), alpha=0.4)
    return label(heat, f"UNCALIBRATED  raw {prediction.score:.4g}", OTHER_COLOUR)


def error_card(frame: Frame) -> np.ndarray:
    """A black display-size picture saying the frame could not be read (keeps saved videos in step)."""
    card = np.zeros((DISPLAY[0], DISPLAY[0], 3), np.uint8)
    return label(card, f"ERROR  frame {frame.index} {frame.name or ''}".rstrip(), OTHER_COLOUR)


def frame_picture(frame: Frame, prediction: Prediction | None) -> np.ndarray:
    """The annotated frame, or an error card for an error frame or a frame that cannot be annotated."""
    if prediction is None:
        return error_card(frame)
    try:
        return annotated(frame.image, prediction)
    except Exception as exc:  # noqa: BLE001 (the verdict stands; only the picture is lost)
        log.warning("frame %d: cannot annotate (%s: %s); an error card stands in", frame.index, type(exc).__name__, exc)
        return error_card(frame)
