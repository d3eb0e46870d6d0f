"""What every inference backend implements: the DiAD pipeline on a batch of pre-processed images, each backend
supplying the stage kernels of the one sequence in :mod:`runtime.sequence`.

encode (``vae_encoder`` + ``hint_encoder``) -> noise the latent to ``plan.start_t`` with each fixed noise draw
(:func:`runtime.schedule.noise_latents`) -> ``denoise_step`` once per DDIM step on all draws at once -> the mean
over draws (:func:`runtime.schedule.mean_of_draws`) -> ``vae_decoder`` -> ``scorer``. Where the model folder has
the draw graphs (``noise_latents``, ``mean_of_draws``: :mod:`export.draw_graphs`) the noising and the mean run as
graphs on the backend's device, so a batch's latents never visit the host. The VAE-only plan
(:attr:`runtime.schedule.DDIMPlan.vae_only`) decodes the clean latent instead: ``vae_encoder`` -> ``vae_decoder``
-> ``scorer``, no noise, no hint, no step.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from runtime.manifest import Manifest
from runtime.schedule import DDIMPlan
from runtime.sequence import STAGES


@dataclass
class BackendOutput:
    """Raw results for a batch: maps ``(B, S, S)``, scores ``(B,)``, optional reconstructions ``(B, 3, S, S)``
    (ImageNet-normalised), wall seconds per stage for the whole batch (``STAGES``) and, where the backend times
    them one by one, per DDIM step (``step_seconds``, in sampling order; empty where the loop runs as one).
    ``descriptors`` ``(B, D)``: the images' class descriptors, added by the detector when its thresholds are per
    class (:func:`runtime.class_thresholds.describe`)."""

    anomaly_map: np.ndarray
    score: np.ndarray
    reconstruction: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)
    descriptors: np.ndarray | None = None

    @classmethod
    def concat(cls, parts: list[BackendOutput]) -> BackendOutput:
        """Batches' outputs joined in order, stage seconds summed (step seconds step by step where every batch has
        them for the same number of steps)."""
        if len(parts) == 1:
            return parts[0]
        keep = parts[0].reconstruction is not None
        return cls(
            np.concatenate([p.anomaly_map for p in parts]),
            np.concatenate([p.score for p in parts]),
            np.concatenate([p.reconstruction for p in parts]) if keep else None,
            {stage: sum(p.seconds.get(stage, 0.0) for p in parts) for stage in STAGES},
            [sum(s) for s in zip(*(p.step_seconds for p in parts))]
            if len({len(p.step_seconds) for p in parts}) == 1 else [],
        )


class Backend(ABC):
    """One model folder on one device.

    ``run`` is synchronous: outputs are host arrays when it returns. ``submit`` / ``collect`` pipeline batches of
    at most :attr:`max_batch` images: up to :attr:`slots` batches in flight, collected in submission order. The
    default runs a batch at once in ``submit`` (ONNX Runtime, which releases the GIL, so other threads work
    meanwhile); a backend with its own queues (TensorRT's two CUDA streams) overrides both.
    """

    name: str = ""
    slots: int = 1

    def __init__(self, manifest: Manifest, device: str = "cpu"):
        self.manifest = manifest
        self.device = device
        self.max_batch = manifest.max_batch
        self._done: deque[BackendOutput] = deque()

    @abstractmethod
    def run(
        self, images: np.ndarray, plan: DDIMPlan, noise: np.ndarray, keep_reconstruction: bool = False
    ) -> BackendOutput:
        """``images``: float32 ``(B, 3, S, S)``; ``noise``: float32 draws ``(K, C, s, s)``
        (:meth:`Manifest.noise`; the denoiser runs on ``K * B`` latents) or one latent-shaped ``(C, s, s)``. The
        draw graphs are made for the folder's K: ONNX Runtime noises other draws on the host, TensorRT refuses them."""

    @property
    def pending(self) -> int:
        """Batches submitted and not yet collected."""
        return len(self._done)

    def submit(
        self, images: np.ndarray, plan: DDIMPlan, noise: np.ndarray, keep_reconstruction: bool = False
    ) -> None:
        """Start a batch (arguments as :meth:`run`); :meth:`collect` returns its outputs."""
        if self.pending >= self.slots:
            raise RuntimeError(f"{self.slots} batch(es) already in flight: collect() one before submitting more")
        self._done.append(self.run(images, plan, noise, keep_reconstruction))

    def collect(self) -> BackendOutput:
        """The outputs of the oldest submitted batch."""
        if not self._done:
            raise RuntimeError("collect() without a submitted batch")
        return self._done.popleft()

    def close(self) -> None:
        """Release sessions, engines and device memory."""
