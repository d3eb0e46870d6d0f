"""The exported computations as small torch modules, one per component of the model folder.

Each wraps the training code's own modules and math (no re-implementation): the DDIM update is
:meth:`DiAD.ddim_step`, the scorer is :class:`FeatureScorer` with :mod:`runtime.scoring`'s matrices. The math that
must stay FP32 in an FP16 model folder is marked where it is exported: the DDIM update and the scorer's input map,
distances and matrices run inside :class:`Fp32` modules, and :func:`fp32_scopes` names those and the sinusoidal
timestep projections for :func:`export.fp16.to_fp16`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.embeddings import Timesteps
from torch import nn

from runtime.component_io import COMPONENT_IO
from training.models.diad import DiAD
from training.models.scorer import FeatureScorer


class Fp32(nn.Module):
    """Runs ``fn`` as a module of its own: the exporter names its nodes after it (``/<attribute>/<Op>``), and the
    FP16 conversion keeps them in FP32 (:func:`fp32_scopes`)."""

    def __init__(self, fn: Callable[..., Any]):
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def fp32_scopes(module: nn.Module) -> list[str]:
    """The exporter's scope names of ``module``'s FP32 regions: every :class:`Fp32` module and every sinusoidal
    timestep projection (diffusers' ``Timesteps``: ``t * freq`` up to 999 rad has an FP16 spacing of 0.5 rad).
    A module's scope is its attribute name, the last part of its qualified name."""
    return sorted({name.rpartition(".")[2] for name, m in module.named_modules() if isinstance(m, (Fp32, Timesteps))})


def ddim_update(x_t: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor, alpha_prev: torch.Tensor) -> torch.Tensor:
    """:meth:`DiAD.ddim_step` with per-image ``(B,)`` alphas."""
    return DiAD.ddim_step(x_t, eps, alpha_t.reshape(-1, 1, 1, 1), alpha_prev.reshape(-1, 1, 1, 1))


class VaeEncoderGraph(nn.Module):
    """``image`` -> ``latent``: the posterior mean x the VAE's scaling factor (deterministic)."""

    def __init__(self, model: DiAD):
        super().__init__()
        self.net = model.vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.encode_mean(image)


class HintEncoderGraph(nn.Module):
    """``image`` -> ``hint``: the SG network's hint encoder, run once per image rather than once per step."""

    def __init__(self, model: DiAD):
        super().__init__()
        self.net = model.sg.controlnet.controlnet_cond_embedding

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class DenoiseStepGraph(nn.Module):
    """``(x_t, hint, timestep, alpha_t, alpha_prev)`` -> ``x_prev``: SG network + UNet + the DDIM update."""

    def __init__(self, model: DiAD):
        super().__init__()
        self.net = model
        self.fp32_ddim_update = Fp32(ddim_update)

    def forward(
        self, x_t: torch.Tensor, hint: torch.Tensor, timestep: torch.Tensor, alpha_t: torch.Tensor,
        alpha_prev: torch.Tensor,
    ) -> torch.Tensor:
        eps = self.net.denoise(x_t, timestep, hint)
        return self.fp32_ddim_update(x_t, eps, alpha_t, alpha_prev)


class VaeDecoderGraph(nn.Module):
    """``latent`` -> ``image`` (ImageNet-normalised, not clamped)."""

    def __init__(self, model: DiAD):
        super().__init__()
        self.net = model.vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net.decode(latent)


class ScorerGraph(nn.Module):
    """``(image, reconstruction)`` -> ``(anomaly_map, score)``: :class:`FeatureScorer`, its backbone outside and its
    input map, cosine distances and matrices inside the FP32 regions."""

    def __init__(self, scorer: FeatureScorer):
        super().__init__()
        self.net = scorer
        self.fp32_scorer_input = Fp32(scorer.backbone_input)
        self.fp32_scorer_maps = Fp32(self.maps)

    def maps(self, features: list[torch.Tensor], image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's features of the images and their reconstructions -> anomaly maps and scores."""
        return self.net.postprocess(self.net.distances(features, image.shape[0]))

    def forward(self, image: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.backbone(self.fp32_scorer_input(image, reconstruction))
        return self.fp32_scorer_maps(features, image)


@dataclass(frozen=True)
class Component:
    """A graph to export: its module and example inputs (batch 2, so nothing specialises on batch 1), its tensors
    named by :data:`runtime.component_io.COMPONENT_IO`."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]

    @classmethod
    def of(cls, name: str, module: nn.Module, *examples: torch.Tensor) -> Component:
        """``examples`` in the table's input order, which is the order of ``module.forward``'s arguments."""
        return cls(name, module, COMPONENT_IO[name].named_inputs(*examples))

    @property
    def outputs(self) -> tuple[str, ...]:
        """The output names, in the order ``module`` returns them."""
        return tuple(COMPONENT_IO[self.name].outputs)


def components(model: DiAD, scorer: FeatureScorer, batch: int = 2) -> list[Component]:
    """The five components of a model folder, with example inputs on the model's device."""
    device = next(model.parameters()).device
    size = model.config.image_size
    image = torch.randn(batch, 3, size, size, device=device)
    with torch.no_grad():
        latent = model.vae.encode_mean(image)
        hint = model.sg.encode_hint(image)
    timestep, alpha = torch.full((batch,), 501.0, device=device), torch.full((batch,), 0.5, device=device)
    return [
        Component.of("vae_encoder", VaeEncoderGraph(model), image),
        Component.of("hint_encoder", HintEncoderGraph(model), image),
        Component.of("denoise_step", DenoiseStepGraph(model), latent, hint, timestep, alpha, alpha + 0.1),
        Component.of("vae_decoder", VaeDecoderGraph(model), latent),
        Component.of("scorer", ScorerGraph(scorer), image, image.flip(0)),
    ]


def example_shapes(graphs: list[Component]) -> dict[str, list[int]]:
    """Per kind of tensor (:data:`runtime.component_io.COMPONENT_IO`), the per-image shape of the example inputs."""
    return {
        kind: list(graph.inputs[name].shape[1:])
        for graph in graphs for name, kind in COMPONENT_IO[graph.name].inputs.items()
    }
