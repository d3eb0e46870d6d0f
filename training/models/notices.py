"""Loud warnings: a Python warning (pytest can catch it) and a log record (visible in training logs)."""
from __future__ import annotations

import logging
import warnings

logger = logging.getLogger("training.models")


def warn_loudly(message: str) -> None:
    """Warn through ``warnings`` and ``logging`` at once, for set-ups that silently degrade results."""
    warnings.warn(message, UserWarning, stacklevel=3)
    logger.warning(message)
