"""DiAD's inference as released (``sgn/sgn.py`` ``log_images_test`` + ``ddim.py``), in PyTorch fp32 eager, on our
weights: the baseline every sweep row's speedup is measured against.

What the reference does per image and what it costs (diad-method.md section 9):
* the latent is a posterior *sample* (seeded here; unseeded there), noised to t = 999;
* 10 DDIM steps (901 ... 1) with classifier-free guidance, scale 9, whose unconditional branch uses the same
  context and hint as the conditional one (a no-op on the result), evaluated as the reference does: one
  SG+UNet call on the batch of two ``cat([x, x])``, the hint encoder inside every call;
* the sample is decoded, and the clean latent is decoded too (``log["reconstruction"]``, used only for display);
* both images go through the scorer.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from runtime.backends.base import BackendOutput
from runtime.schedule import DDIMPlan, ddim_plan
from training.models.diad import DiAD, q_sample
from training.models.scorer import FeatureScorer

GUIDANCE_SCALE = 9.0
REFERENCE_PLAN = ddim_plan(10, 999)


class ReferenceBackend:
    """The as-released pipeline behind the backends' ``run`` interface; ``noise`` is ignored (drawn per image,
    as released, from the seeded generator); call it with :data:`REFERENCE_PLAN`."""

    name = "reference"

    def __init__(self, model: DiAD, scorer: FeatureScorer, seed: int = 0, device: str = "cpu"):
        self.device = torch.device(device)
        self.model, self.scorer = model.to(self.device).float().eval(), scorer.to(self.device).float().eval()
        self.generator = torch.Generator().manual_seed(seed)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _eps(self, x: torch.Tensor, t: int, image: torch.Tensor) -> torch.Tensor:
        """Guided noise prediction: both branches in one batched call, then ``e_u + s (e_c - e_u)``."""
        pair = torch.cat([x, x])
        eps = self.model.denoise(pair, t, self.model.sg.encode_hint(torch.cat([image, image])))
        uncond, cond = eps.chunk(2)
        return uncond + GUIDANCE_SCALE * (cond - uncond)

    @torch.inference_mode()
    def run(
        self, images: np.ndarray, plan: DDIMPlan = REFERENCE_PLAN, noise: np.ndarray | None = None,
        keep_reconstruction: bool = False,
    ) -> BackendOutput:
        seconds: dict[str, float] = {}
        image = torch.from_numpy(images).to(self.device)
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            self._sync()
            seconds[stage] = time.perf_counter() - clock
            clock = time.perf_counter()

        posterior = self.model.vae.autoencoder.encode(image).latent_dist
        latent = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=self.generator).to(
            self.device
        )
        latent = latent * self.model.vae.scale
        noise = torch.randn(latent.shape, generator=self.generator).to(self.device)
        x = q_sample(latent, noise, plan.start_alpha)
        lap("encode")
        step_seconds = []
        for t, a, p in zip(plan.timesteps, plan.alphas, plan.alphas_prev):
            x = DiAD.ddim_step(x, self._eps(x, int(t), image), float(a), float(p))
            self._sync()
            step_seconds.append(time.perf_counter() - clock - sum(step_seconds))
        lap("steps")
        recon = self.model.vae.decode(x)
        self.model.vae.decode(latent)  # log["reconstruction"]: decoded for display only
        lap("decode")
        amap, score = self.scorer(image, recon)
        lap("score")
        return BackendOutput(
            amap.cpu().numpy(), score.cpu().numpy(), recon.cpu().numpy() if keep_reconstruction else None, seconds,
            step_seconds,
        )

    def close(self) -> None:
        """Nothing to release."""
