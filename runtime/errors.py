"""Errors raised for users: one class per kind, each message names the path and what was expected."""
from __future__ import annotations


class DiadError(Exception):
    """Base class of the errors that commands print without a traceback."""


class DatasetLayoutError(DiadError):
    """A dataset folder does not follow a known layout, or a file is missing or mismatched."""


class ImageReadError(DiadError):
    """An image or mask file cannot be decoded."""


class FrameError(DiadError):
    """An array given as a frame is not an RGB uint8 image ``(H, W, 3)``."""


class LimitError(DiadError):
    """A file or frame is over one of the plant's limits (:class:`runtime.limits.Limits`)."""


class ModelFolderError(DiadError):
    """A model folder is incomplete, corrupt or does not match its manifest."""


class CheckpointError(DiadError):
    """A checkpoint is missing, corrupt or does not fit the model."""


class CalibrationError(DiadError):
    """The calibration images cannot give usable thresholds (too few, or all scored alike)."""


class SourceError(DiadError):
    """A frame source cannot be opened, or a live source is lost for good."""


class BackendError(DiadError):
    """An inference backend (ONNX Runtime, TensorRT, a GPU) is missing or cannot run the model folder."""


class ServerError(DiadError):
    """An inference server cannot be reached, cannot be started, or refused a request."""


class DiadWarning(UserWarning):
    """Base class of the warnings that commands print as one ``warning: ...`` line."""


class DatasetWarning(DiadWarning):
    """A dataset holds something its layout does not use (a folder, a file) or that training converts (image
    modes, sizes): named, never silently ignored."""
