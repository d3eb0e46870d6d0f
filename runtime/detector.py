"""``Detector``: a model folder on a backend; RGB frames in, anomalib-style predictions out."""
from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from runtime.backends.base import Backend, BackendOutput
from runtime.class_thresholds import assign, describe
from runtime.devices import BACKENDS
from runtime.errors import BackendError, FrameError, ModelFolderError
from runtime.inflight import make_room
from runtime.limits import Limits
from runtime.manifest import Manifest, Thresholds
from runtime.preprocess import check_rgb, preprocess
from runtime.schedule import DDIMPlan, plan_label
from runtime.scoring import normalize_to_threshold


@dataclass
class Prediction:
    """One image's result (anomalib's contract plus the raw values).

    ``pred_score`` is the image score normalised so that the calibrated threshold is 0.5 (that of the image's
    class, ``pred_class``, when the thresholds are per class); ``anomaly_map`` is normalised likewise with the pixel
    threshold, ``pred_mask = anomaly_map >= 0.5``. Without calibration
    (no thresholds in the manifest) these three and ``pred_label`` are ``None``; ``score`` and ``raw_map``
    (model resolution ``S x S``) are always there. ``seconds``: this image's share of each stage.
    """

    score: float
    raw_map: np.ndarray
    pred_score: float | None
    pred_label: bool | None
    anomaly_map: np.ndarray | None
    pred_mask: np.ndarray | None
    seconds: dict[str, float] = field(default_factory=dict)
    reconstruction: np.ndarray | None = None
    pred_class: str | None = None  # the class whose thresholds judged it (per-class calibration only)


class FrameScorer(Protocol):
    """What the stream needs of a model: :class:`Detector` (local) and
    :class:`~runtime.serving.client.RemoteDetector` (a Triton server) both provide it."""

    slots: int  # batches scored at once; more submitted ones wait their turn
    pending: int  # batches submitted and not yet collected
    thresholds: Thresholds
    summary: dict  # preset, DDIM plan and scorer (:func:`model_summary`)

    def prepare(self, image: np.ndarray, what: str = "image") -> np.ndarray: ...

    def submit(self, batch: np.ndarray) -> None: ...

    def collect(self) -> Any: ...

    def predictions(self, out: Any) -> list[Prediction]: ...


def model_summary(manifest: Manifest, plan: DDIMPlan) -> dict:
    """A model folder's preset, DDIM ``plan``, noise draws and scorer (backbone, layers, weights), for summaries."""
    data = manifest.data
    return {"preset": data.get("preset"), **plan.brief, "draws": manifest.draws, "scorer": data.get("scorer", {})}


def runnable_plan(manifest: Manifest, steps: int | None = None, start_t: int | None = None) -> DDIMPlan:
    """``manifest``'s plan with ``steps`` / ``start_t`` overridden (``steps`` 0: the VAE-only plan); a plan the
    schedule cannot make is a :class:`ModelFolderError` naming the folder."""
    try:
        return manifest.plan(steps, start_t)
    except ValueError as exc:
        raise ModelFolderError(f"{manifest.root}: cannot run DDIM steps={steps}, start_t={start_t}: {exc}") from None


def make_backend(manifest: Manifest, backend: str, device: str | None, provider: str | None = None) -> Backend:
    """``backend`` on ``device`` (default cpu for ONNX Runtime, cuda:0 for TensorRT); ``provider``: ONNX Runtime's
    execution provider (:mod:`runtime.devices`)."""
    if backend == "onnxruntime":
        from runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(manifest, device or "cpu", provider)
    if backend == "tensorrt":
        if provider is not None:
            raise BackendError(f"provider {provider!r}: a provider applies to the onnxruntime backend only")
        from runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(manifest, device or "cuda:0")
    raise BackendError(f"backend {backend!r}: expected one of {BACKENDS}")


class Detector:
    """Score images with a model folder.

    ``steps`` / ``start_t`` override the manifest's DDIM plan (``steps=0``: the VAE-only plan, encode -> decode
    the clean latent -> score, no diffusion); the diffusion noise is the manifest's fixed
    seeded draws, so one image always gets the same score, alone or in any batch. Frames over ``limits`` (default
    :class:`Limits`) are refused with a :class:`~runtime.errors.LimitError`.
    """

    def __init__(
        self,
        model_dir: str | Path,
        backend: str = "onnxruntime",
        device: str | None = None,
        steps: int | None = None,
        start_t: int | None = None,
        verify: bool = True,
        limits: Limits | None = None,
        provider: str | None = None,
    ):
        self.manifest = Manifest.load(model_dir, verify)
        self.limits = limits or Limits()
        self.plan = runnable_plan(self.manifest, steps, start_t)
        self.noise = self.manifest.noise()
        self.backend = make_backend(self.manifest, backend, device, provider)
        self._chunks: deque[int] = deque()  # per submitted batch, its chunks
        self._descriptors: deque[np.ndarray | None] = deque()  # per submitted batch, with per-class thresholds
        self._collected: deque[BackendOutput] = deque()  # chunks collected ahead of their batch
        self.thresholds = self.manifest.thresholds
        calibrated_plan = self.thresholds.details.get("plan")
        if self.thresholds.calibrated and calibrated_plan and calibrated_plan != self.plan.brief:
            warnings.warn(
                f"{self.manifest.root}: thresholds were calibrated with {_plan_text(calibrated_plan)}, this "
                f"detector runs {self.plan.label}; raw scores shift with the plan, so labels and masks may be wrong. "
                "Recalibrate with python -m runtime.calibrate using the same --steps/--start-t.",
                stacklevel=2,
            )
        fitted = self.manifest.data.get("scorer", {}).get("statistics", {}).get("plan")
        if fitted and {"steps": fitted["steps"], "start_t": fitted["start_t"]} != self.plan.brief:
            warnings.warn(
                f"{self.manifest.root}: the scorer measures reconstructions against normal statistics fitted for "
                f"{_plan_text(fitted)}, this detector runs {self.plan.label}, whose reconstructions differ; export a "
                "folder for that plan instead (python -m export --steps/--start-t).",
                stacklevel=2,
            )

    @property
    def image_size(self) -> int:
        return self.manifest.image_size

    @property
    def summary(self) -> dict:
        """The preset, this detector's DDIM plan and the scorer (:func:`model_summary`)."""
        return model_summary(self.manifest, self.plan)

    def prepare(self, image: np.ndarray, what: str = "image") -> np.ndarray:
        """One RGB uint8 frame, checked (:func:`runtime.preprocess.check_rgb`, named ``what`` in errors), to the
        model's float32 ``(3, S, S)`` input."""
        return preprocess(check_rgb(image, what, self.limits), self.image_size)

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 frames of any size to the model's float32 ``(B, 3, S, S)`` input."""
        return np.stack([self.prepare(image, f"images[{k}]") for k, image in enumerate(images)])

    @property
    def slots(self) -> int:
        """Batches the backend computes at once (TensorRT: 2); more in flight only wait their turn."""
        return self.backend.slots

    @property
    def pending(self) -> int:
        """Batches submitted and not yet collected."""
        return len(self._chunks)

    def submit(self, batch: np.ndarray, keep_reconstruction: bool = False) -> None:
        """Start scoring pre-processed images, in chunks of at most the backend's ``max_batch``, through the
        backend's pipeline slots; :meth:`collect` returns the outputs, batches in submission order. When every
        slot is busy, the oldest chunk is collected first."""
        step = self.backend.max_batch
        chunks = range(0, len(batch), step)
        for i in chunks:
            make_room(self.backend, self._collected.append)
            self.backend.submit(batch[i : i + step], self.plan, self.noise, keep_reconstruction)
        self._chunks.append(len(chunks))
        self._descriptors.append(describe(batch) if self.thresholds.classes else None)

    def collect(self) -> BackendOutput:
        """Raw outputs of the oldest submitted batch (waits for it)."""
        if not self._chunks:
            raise RuntimeError("collect() without a submitted batch")
        count = self._chunks.popleft()
        while len(self._collected) < count:
            self._collected.append(self.backend.collect())
        out = BackendOutput.concat([self._collected.popleft() for _ in range(count)])
        return replace(out, descriptors=self._descriptors.popleft())

    def run(self, batch: np.ndarray, keep_reconstruction: bool = False) -> BackendOutput:
        """Raw outputs for pre-processed images (:meth:`submit`, then :meth:`collect`)."""
        if self._chunks:
            raise RuntimeError("run() while submitted batches are pending: collect() them first")
        self.submit(batch, keep_reconstruction)
        return self.collect()

    def predict(
        self, images: np.ndarray | Sequence[np.ndarray], keep_reconstruction: bool = False
    ) -> Prediction | list[Prediction]:
        """One RGB uint8 ``(H, W, 3)`` image -> a :class:`Prediction`; a list or ``(B, H, W, 3)`` -> a list.

        A bad frame raises :class:`~runtime.errors.FrameError` (or ``LimitError``) naming it (``images[3]``) and
        saying what was expected."""
        single = isinstance(images, np.ndarray) and images.ndim != 4
        frames = _frames(images)
        if not frames:
            return []
        start = time.perf_counter()
        batch = self.prepare(frames[0])[None] if single else self.preprocess(frames)
        predictions = self.score(batch, time.perf_counter() - start, keep_reconstruction)
        return predictions[0] if single else predictions

    def score(self, batch: np.ndarray, preprocess_seconds: float = 0.0,
              keep_reconstruction: bool = False) -> list[Prediction]:
        """Predictions for a pre-processed ``(B, 3, S, S)`` batch (:meth:`prepare`); ``preprocess_seconds``: the
        time its pre-processing took, shared out like the other stages."""
        return self.predictions(self.run(batch, keep_reconstruction), preprocess_seconds)

    def predictions(self, out: BackendOutput, preprocess_seconds: float = 0.0) -> list[Prediction]:
        """One :class:`Prediction` per image of a batch's raw outputs (:meth:`collect`)."""
        batch = len(out.score)
        seconds = {"preprocess": preprocess_seconds, **out.seconds}
        share = {k: v / batch for k, v in seconds.items()}
        share["total"] = sum(share.values())
        classes = self.classes_of(out)
        return [self._prediction(out, k, share, classes[k]) for k in range(batch)]

    def classes_of(self, out: BackendOutput) -> list[str | None]:
        """Per image of ``out``, the nearest calibrated class (:mod:`runtime.class_thresholds`); None for every
        image when the thresholds are not per class."""
        t = self.thresholds
        if not t.classes or out.descriptors is None:
            return [None] * len(out.score)
        centres = np.array([c["centre"] for c in t.classes], np.float32)
        nearest = assign(out.descriptors, centres, np.asarray(t.class_scale, np.float32))
        return [t.classes[int(k)]["name"] for k in nearest]

    def _prediction(self, out: BackendOutput, k: int, seconds: dict[str, float], pred_class: str | None) -> Prediction:
        score, raw = float(out.score[k]), out.anomaly_map[k]
        recon = out.reconstruction[k] if out.reconstruction is not None else None
        t = self.thresholds
        if not t.calibrated:
            return Prediction(score, raw, None, None, None, None, dict(seconds), recon)
        threshold, low, high = t.image_rule(pred_class)
        pred_score = float(normalize_to_threshold(score, threshold, low, high))
        amap = normalize_to_threshold(raw, t.pixel, t.pixel_min, t.pixel_max)
        # labels and masks compare the raw values (normalisation rounds in float32 near the threshold)
        return Prediction(score, raw, pred_score, score >= threshold, amap, raw >= t.pixel, dict(seconds), recon,
                          pred_class)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plan_text(recorded: Any) -> str:
    """A calibration's recorded plan (``{"steps", "start_t"}``) in words; anything else as it is."""
    if isinstance(recorded, dict) and {"steps", "start_t"} <= set(recorded):
        return plan_label(recorded["steps"], recorded["start_t"])
    return str(recorded)


def _frames(images: object) -> list[np.ndarray]:
    """``predict``'s argument as a list of frames: one ``(H, W, 3)`` array, a ``(B, H, W, 3)`` array or a
    sequence of arrays (each checked later, by index)."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]  # checked (and explained) by prepare
    if isinstance(images, (str, bytes, Path)) or not isinstance(images, Iterable):
        raise FrameError(
            f"images: expected an RGB uint8 array (H, W, 3), a batch (B, H, W, 3) or a list of arrays, got "
            f"{type(images).__name__}" + ("; read image files with runtime.preprocess.read_image"
                                          if isinstance(images, (str, Path)) else "")
        )
    return list(images)
