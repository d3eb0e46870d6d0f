"""PyTorch eager inference behind the runtime's backend interface, so the sweep times every backend alike.

``TorchBackend`` runs the inference sequence of :mod:`runtime.sequence` on the model's own stage kernels
(:class:`training.models.diad.ModelStages`, as :meth:`DiAD.reconstruct` does) plus the scorer, with per-stage
synchronised timing;
on CUDA it can capture the DDIM loop as one CUDA graph (``cuda_graph=True``; otherwise each step is synchronised
and timed on its own). ``precision`` "fp16" casts the model (CUDA only; on the CPU PyTorch has no fast FP16
kernels and the sweep skips it). The loop takes each step's timestep and alphas as device tensors made once per
plan: a tensor made from a Python number inside the captured loop would be a host-to-device copy, which CUDA graph
capture rejects.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from runtime.backends.base import BackendOutput
from runtime.schedule import DDIMPlan, as_draws
from runtime.sequence import STAGES, WallClock, infer
from training.models.diad import DiAD, ModelStages
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

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step_tensors(self, plan: DDIMPlan) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
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

    def graph_loop(self, x: torch.Tensor, hint: torch.Tensor, plan: DDIMPlan, stages: PipelineStages) -> torch.Tensor:
        """The DDIM loop replayed from a CUDA graph captured once per (batch, plan)."""
        key = (x.shape[0], tuple(plan.timesteps), plan.start_t)
        if key not in self._graphs:
            static = {"x": x.clone(), "hint": hint.clone()}
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                ModelStages.loop(stages, static["x"], static["hint"], plan)  # warm-up outside the capture
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static["out"] = ModelStages.loop(stages, static["x"], static["hint"], plan)
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
        """The sequence (:func:`runtime.sequence.infer`) on one batch through :class:`PipelineStages`."""
        clock = WallClock(self.sync)
        stages = PipelineStages(self, noise)
        image = torch.from_numpy(images).to(self.device, self.dtype)
        done = infer(stages, image, plan, 1 if plan.vae_only else stages.draws, clock)
        amap, score = done.scored
        return BackendOutput(
            amap.float().cpu().numpy(), score.float().cpu().numpy(),
            done.reconstruction.float().cpu().numpy() if keep_reconstruction else None,
            {stage: clock.seconds[stage] for stage in STAGES}, stages.step_seconds,
        )

    def close(self) -> None:
        self._graphs.clear()
        self._steps.clear()


class PipelineStages(ModelStages):
    """The model's stage kernels with the backend's precision, device-side step values, CUDA graph loop, scorer
    and per-step timing (eager loops only: each step synchronised)."""

    def __init__(self, backend: TorchBackend, noise: np.ndarray):
        draws = torch.from_numpy(as_draws(noise)).to(backend.device, backend.dtype)
        super().__init__(backend.model, None, len(draws), None if backend.cuda_graph else self.timed)
        self.backend, self.fixed = backend, draws
        self.step_seconds: list[float] = []
        self.started = 0.0

    def draws_like(self, latent: torch.Tensor) -> torch.Tensor:
        return self.fixed

    def step_values(self, plan: DDIMPlan) -> list[tuple]:
        return self.backend.step_tensors(plan)  # host-to-device copies, before any capture

    def loop(self, x: torch.Tensor, hints: torch.Tensor, plan: DDIMPlan) -> torch.Tensor:
        if self.backend.cuda_graph:
            return self.backend.graph_loop(x, hints, plan, self)
        self.started = time.perf_counter()
        return super().loop(x, hints, plan)

    def timed(self, _k: int) -> None:
        self.backend.sync()
        now = time.perf_counter()
        self.step_seconds.append(now - self.started)
        self.started = now

    def score(self, images: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backend.scorer(images, reconstruction)
