"""The Triton Python model: a :class:`~runtime.detector.Detector` behind Triton's dynamic batcher.

Triton hands :meth:`TritonPythonModel.execute` the requests it batched; each holds ``frames`` ``uint8
(b, H, W, 3)`` of any size. Every frame is checked and pre-processed by the runtime (:meth:`Detector.prepare`,
within the served :class:`~runtime.limits.Limits`); a request with a bad frame is answered with an error naming
the frame, the others in the batch are scored together in one call of the detector. Only the outputs a request
asks for are sent. Uncalibrated model folders answer ``pred_score`` NaN and ``pred_label`` false. Tensors cross
to and from the stub by DLPack: the stub's own numpy conversion was built for numpy 1 and yields empty outputs
under numpy 2.

Runs inside Triton's Python backend stub, which provides ``triton_python_backend_utils`` (imported there, in
:meth:`TritonPythonModel.initialize`, so this module imports anywhere).
"""
from __future__ import annotations

import importlib
import json

import numpy as np

from runtime.detector import Detector, Prediction
from runtime.errors import DiadError
from runtime.limits import Limits
from runtime.serving.repository import INPUT

pb_utils = None  # triton_python_backend_utils, once Triton initialised the model


class TritonPythonModel:
    """One model instance: a Detector on the model folder named in the config's parameters."""

    def initialize(self, args: dict) -> None:
        global pb_utils
        pb_utils = importlib.import_module("triton_python_backend_utils")
        config = json.loads(args["model_config"])
        p = {key: value.get("string_value", "") for key, value in config["parameters"].items()}
        device = p["device"] or None
        if device and device.startswith("cuda") and args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        limits = Limits(max_pixels=int(p["max_pixels"]), max_side=int(p["max_side"]))
        steps, start_t = (int(p[k]) if p.get(k) else None for k in ("steps", "start_t"))
        self.detector = Detector(p["model_dir"], p["backend"], device, steps, start_t, limits=limits,
                                 provider=p["provider"] or None)

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        tensors, owners = [], []
        for r, request in enumerate(requests):
            frames = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, INPUT))
            try:
                prepared = [self.detector.prepare(frame, f"{INPUT}[{k}]") for k, frame in enumerate(frames)]
            except DiadError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses[r] = pb_utils.InferenceResponse(error=error)
                continue
            tensors.extend(prepared)
            owners.extend([r] * len(prepared))
        if tensors:
            try:
                predictions = self.detector.score(np.stack(tensors))
            except Exception as exc:  # noqa: BLE001 (the model failing: every request of the batch is told why)
                error = pb_utils.TritonError(f"model failed: {type(exc).__name__}: {exc}")
                return [response or pb_utils.InferenceResponse(error=error) for response in responses]
            for r in dict.fromkeys(owners):
                mine = [pred for pred, owner in zip(predictions, owners, strict=True) if owner == r]
                responses[r] = self._response(mine, requests[r].requested_output_names())
        return responses

    def _response(self, predictions: list[Prediction], wanted: list[str]):
        calibrated = self.detector.thresholds.calibrated
        size = self.detector.image_size
        values = {
            "score": lambda: [[p.score] for p in predictions],
            "pred_score": lambda: [[p.pred_score if calibrated else np.nan] for p in predictions],
            "pred_label": lambda: [[bool(p.pred_label)] for p in predictions],
            "raw_map": lambda: [p.raw_map for p in predictions],
            "anomaly_map": lambda: [p.anomaly_map if calibrated else np.full((size, size), np.nan)
                                    for p in predictions],
            "pred_mask": lambda: [p.pred_mask if calibrated else np.zeros((size, size), bool) for p in predictions],
        }
        kinds = {"pred_label": np.bool_, "pred_mask": np.bool_}
        tensors = [_tensor(name, np.asarray(values[name](), kinds.get(name, np.float32))) for name in wanted]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        self.detector.close()


def _tensor(name: str, array: np.ndarray):
    """An output tensor handed over by DLPack (the stub's numpy conversion predates numpy 2)."""
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))
