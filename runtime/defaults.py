"""Defaults that more than one command shares (``runtime.stream``, ``runtime.serve``, ``runtime.calibrate``)."""
from __future__ import annotations

DEFAULT_MODEL = "models/tiny"  # the model folder `make demo` builds
DEFAULT_BACKEND = "onnxruntime"  # of runtime.devices.BACKENDS
DEFAULT_SERVED_NAME = "diad"  # the model's name on a Triton server
