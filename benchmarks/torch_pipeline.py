"""PyTorch eager inference behind the runtime's backend interface, so the sweep times every backend alike.

``TorchBackend`` runs our inference (:meth:`DiAD.reconstruct`'s steps: encode, noise with each draw, hint once,
DDIM without guidance on every draw at once, mean over draws, decode, score; the VAE-only plan: encode, decode,
score) with per-stage synchronised timing;
on CUDA it can capture the DDIM loop as one CUDA graph (``cuda_graph=True``; otherwise each step is synchronised
and timed on its own). ``precision`` "fp16" casts the model (CUDA only; on the CPU PyTorch has no fast FP16
kernels and the sweep skips it). The loop takes each step's timestep and alphas as device tensors made once per
plan: a tensor made from a Python number inside the captured loop would be a host-to-device copy, which CUDA graph
capture rejects.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from runtime.backends.base import BackendOutput
from runtime.schedule import DDIMPlan, as_draws
from training.models.diad import DiAD, mean_of_draws, noise_latents
from training.models.scorer import FeatureScorer


class TorchBackend:
    name = "torch"

    def __init__(
        self, model: DiAD, scorer: FeatureScorer, device: str = "cpu", precision: str = "fp32",
        cuda_graph: bool = False,
    ):
        reason = self.unsupported(device, precision, cuda_graph)
        if reason:
            raise ValueError(reason)
        self.device = torch.device(device)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        self.scorer = scorer.to(self.device, self.dtype).eval()
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
        self._steps: dict[tuple, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    @staticmethod
    def unsupported(device: str, precision: str, cuda_graph: bool) -> str:
        """Why PyTorch cannot run ``precision`` (with a CUDA graph) on ``device``; "" when it can."""
        if precision == "fp16" and not device.startswith("cuda"):
            return "PyTorch FP16 inference needs a CUDA device"
        if cuda_graph and not device.startswith("cuda"):
            return "CUDA graphs need a CUDA device"
        return ""

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _timed(self, seconds: dict[str, float], stage: str, fn: Callable[[], object]) -> object:
        self._sync()
        start = time.perf_counter()
        out = fn()
        self._sync()
        seconds[stage] = time.perf_counter() - start
        return out

    def _step_tensors(self, plan: DDIMPlan) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per DDIM step: the timestep (int64) and both alphas (the model's dtype) on the device, made once."""
        key = (tuple(plan.timesteps), tuple(plan.alphas), tuple(plan.alphas_prev))
        if key not in self._steps:
            def value(v: float) -> torch.Tensor:
                return torch.tensor(float(v), dtype=self.dtype, device=self.device)

            self._steps[key] = [
                (torch.tensor(int(t), device=self.device), value(a), value(p))
                for t, a, p in zip(plan.timesteps, plan.alphas, plan.alphas_prev)
            ]
        return self._steps[key]

    def _loop(
        self, x: torch.Tensor, hint: torch.Tensor, steps: list[tuple[torch.Tensor, ...]],
        step_seconds: list[float] | None = None,
    ) -> torch.Tensor:
        """The DDIM loop; given ``step_seconds``, each step is synchronised and its wall seconds appended."""
        for t, a, p in steps:
            start = time.perf_counter()
            x = DiAD.ddim_step(x, self.model.denoise(x, t, hint), a, p)
            if step_seconds is not None:
                self._sync()
                step_seconds.append(time.perf_counter() - start)
        return x

    def _graph_loop(self, x: torch.Tensor, hint: torch.Tensor, plan: DDIMPlan) -> torch.Tensor:
        """The DDIM loop replayed from a CUDA graph captured once per (batch, plan)."""
        key = (x.shape[0], tuple(plan.timesteps), plan.start_t)
        if key not in self._graphs:
            steps = self._step_tensors(plan)  # host-to-device copies, before the capture
            static = {"x": x.clone(), "hint": hint.clone()}
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self._loop(static["x"], static["hint"], steps)  # warm-up outside the capture
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static["out"] = self._loop(static["x"], static["hint"], steps)
            self._graphs[key] = (graph, static)
        graph, static = self._graphs[key]
        static["x"].copy_(x)
        static["hint"].copy_(hint)
        graph.replay()
        return static["out"]

    @torch.inference_mode()
    def run(
        self, images: np.ndarray, plan: DDIMPlan, noise: np.ndarray, keep_reconstruction: bool = False
    ) -> BackendOutput:
        """The pipeline on one batch; the VAE-only plan decodes the clean latent (no noise, hint or step)."""
        seconds: dict[str, float] = {}
        image = torch.from_numpy(images).to(self.device, self.dtype)
        step_seconds: list[float] = []
        if plan.vae_only:
            sample = self._timed(seconds, "encode", lambda: self.model.vae.encode_mean(image))
            seconds["steps"] = 0.0
        else:
            sample = self._diffuse(image, plan, noise, seconds, step_seconds)
        recon = self._timed(seconds, "decode", lambda: self.model.vae.decode(sample))
        amap, score = self._timed(seconds, "score", lambda: self.scorer(image, recon))
        return BackendOutput(
            amap.float().cpu().numpy(), score.float().cpu().numpy(),
            recon.float().cpu().numpy() if keep_reconstruction else None, seconds, step_seconds,
        )

    def _diffuse(
        self, image: torch.Tensor, plan: DDIMPlan, noise: np.ndarray, seconds: dict[str, float],
        step_seconds: list[float],
    ) -> torch.Tensor:
        """Encode (latent and hint), noise with each draw, the DDIM loop on every draw at once, the mean over
        draws: the sample latent (``encode`` and ``steps`` timed into ``seconds``)."""
        draws = torch.from_numpy(as_draws(noise)).to(self.device, self.dtype)

        def encode() -> tuple[torch.Tensor, torch.Tensor]:
            latent = self.model.vae.encode_mean(image)
            noised = noise_latents(latent, draws, plan.start_alpha)
            return noised, self.model.sg.encode_hint(image).repeat(len(draws), 1, 1, 1)

        noised, hint = self._timed(seconds, "encode", encode)
        if self.cuda_graph:
            sample = self._timed(seconds, "steps", lambda: self._graph_loop(noised, hint, plan))
        else:
            steps = self._step_tensors(plan)
            sample = self._timed(seconds, "steps", lambda: self._loop(noised, hint, steps, step_seconds))
        return mean_of_draws(sample, len(draws))

    def close(self) -> None:
        self._graphs.clear()
        self._steps.clear()
