"""The exported computations as small torch modules, one per component of the model folder.

Each wraps the training code's own modules and math (no re-implementation): the DDIM update is
:meth:`DiAD.ddim_step`, the scorer is :class:`FeatureScorer` with :mod:`runtime.scoring`'s matrices. Math written
in the wrappers' own ``forward`` (the DDIM update, the scorer's distances and matrices) lands at the graph's root
level, which the FP16 conversion keeps in FP32 (see :mod:`export.fp16`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from runtime.manifest import COMPONENT_IO
from training.models.diad import DiAD
from training.models.scorer import FeatureScorer


class VaeEncoderGraph(nn.Module):
    """``image`` -> ``latent``: the posterior mean x 0.18215 (deterministic)."""

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

    def forward(
        self, x_t: torch.Tensor, hint: torch.Tensor, timestep: torch.Tensor, alpha_t: torch.Tensor,
        alpha_prev: torch.Tensor,
    ) -> torch.Tensor:
        eps = self.net.denoise(x_t, timestep, hint)
        return DiAD.ddim_step(x_t, eps, alpha_t.reshape(-1, 1, 1, 1), alpha_prev.reshape(-1, 1, 1, 1))


class VaeDecoderGraph(nn.Module):
    """``latent`` -> ``image`` (ImageNet-normalised, not clamped)."""

    def __init__(self, model: DiAD):
        super().__init__()
        self.net = model.vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net.decode(latent)


@dataclass(frozen=True)
class Component:
    """A graph to export: its module and example inputs (batch 2, so nothing specialises on batch 1), its tensors
    named by :data:`runtime.manifest.COMPONENT_IO`."""

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
        Component.of("scorer", scorer, image, image.flip(0)),
    ]


def example_shapes(graphs: list[Component]) -> dict[str, list[int]]:
    """Per kind of tensor (:data:`runtime.manifest.COMPONENT_IO`), the per-image shape of the example inputs."""
    return {
        kind: list(graph.inputs[name].shape[1:])
        for graph in graphs for name, kind in COMPONENT_IO[graph.name].inputs.items()
    }
