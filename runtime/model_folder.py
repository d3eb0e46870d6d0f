"""Opening a model folder for a command: a clear error when it is missing, a warning when it is uncalibrated."""
from __future__ import annotations

import logging
from pathlib import Path

from runtime.defaults import DEFAULT_BACKEND
from runtime.detector import Detector
from runtime.errors import ModelFolderError
from runtime.limits import Limits

log = logging.getLogger("runtime.stream")


def require_model_folder(model: str | Path) -> None:
    """Raise :class:`ModelFolderError` saying how to build ``model`` when it is not a folder."""
    if not Path(model).is_dir():
        raise ModelFolderError(
            f"{model}: no model folder here. Build one with `make demo`, or export a trained run with "
            f"`python -m export --run RUN --out {model}` and calibrate it with "
            f"`python -m runtime.calibrate --model {model} --images NORMAL_IMAGES`"
        )


def open_detector(
    model: str | Path,
    backend: str = DEFAULT_BACKEND,
    device: str | None = None,
    steps: int | None = None,
    start_t: int | None = None,
    limits: Limits | None = None,
    provider: str | None = None,
) -> Detector:
    """The :class:`Detector` of ``model`` (see :func:`require_model_folder`)."""
    require_model_folder(model)
    detector = Detector(model, backend, device, steps, start_t, limits=limits, provider=provider)
    if not detector.thresholds.calibrated:
        log.warning("%s has no thresholds: label and pred_score are null (calibrate with runtime.calibrate)", model)
    return detector
