"""FLOPs per component (``torch.utils.flop_counter``) at batch 1, and per image for a given inference plan."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from export.graphs import components
from training.models.diad import DiAD
from training.models.scorer import FeatureScorer


def component_flops(model: DiAD, scorer: FeatureScorer) -> dict[str, int]:
    """FLOPs of one batch-1 call of each exported component (a multiply-add counts 2)."""
    flops = {}
    with torch.no_grad():
        for component in components(model, scorer, batch=1):
            counter = FlopCounterMode(display=False)
            with counter:
                component.module(*component.inputs.values())
            flops[component.name] = counter.get_total_flops()
    return flops


def pipeline_flops(flops: dict[str, int], steps: int, vae_only: bool = False) -> int:
    """FLOPs per image of our inference: encoders, ``steps`` fused steps, decoder, scorer (no steps: VAE only)."""
    total = flops["vae_encoder"] + flops["vae_decoder"] + flops["scorer"]
    return total if vae_only else total + flops["hint_encoder"] + steps * flops["denoise_step"]


def reference_flops(flops: dict[str, int], steps: int = 10) -> int:
    """As released: every step evaluates SG (with its hint encoder) + UNet on a batch of two, the clean latent is
    decoded as well."""
    per_step = 2 * (flops["denoise_step"] + flops["hint_encoder"])
    return flops["vae_encoder"] + steps * per_step + 2 * flops["vae_decoder"] + flops["scorer"]
