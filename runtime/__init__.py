"""Torch-free pieces of diad-edge: pre-processing, schedule, scoring, metrics and the edge runtime.

Imports only numpy and OpenCV (plus ONNX Runtime, TensorRT and cuda-python where installed), so it runs on a
Jetson image without torch.
"""

from runtime.detector import Detector, Prediction
from runtime.limits import Limits

__all__ = ["Detector", "Limits", "Prediction"]
