"""For the dashboard tests: a tiny model folder calibrated so that the synthetic feed has rejects."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
from helpers.model_folder import make_folder

from runtime import Detector
from runtime.manifest import Manifest, Thresholds
from runtime.sources import open_source


def calibrated_folder(root: Path, frames: int = 40, seed: int = 0, reject_share: float = 0.3) -> Path:
    """The tiny model folder of :mod:`helpers.model_folder`, calibrated on its own scores of ``frames`` synthetic
    frames (``seed``): the image threshold rejects about ``reject_share`` of them."""
    make_folder(root)
    images = [frame.image for frame in islice(open_source("synthetic", seed=seed), frames)]
    with Detector(root) as detector:
        predictions = detector.predict(images)
    scores = np.array([p.score for p in predictions])
    maps = np.stack([p.raw_map for p in predictions])
    thresholds = Thresholds(image=float(np.percentile(scores, 100 * (1 - reject_share))),
                            pixel=float(np.percentile(maps, 90)), image_min=float(scores.min()),
                            image_max=float(scores.max()), pixel_min=float(maps.min()), pixel_max=float(maps.max()),
                            method="test")
    Manifest.load(root).set_thresholds(thresholds)
    return root
