"""The frozen kl-f8 autoencoder between ImageNet-normalised images and scaled latents.

The whole model works in ImageNet-normalised image space (not [-1, 1]), as the reference does: the fine-tuned
VAE takes and returns normalised images. Latents are ``scaling_factor`` (SD's 0.18215; ``tiny``: 0.33) times the posterior.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn

from training.models.presets import VAEConfig


def build_autoencoder(config: VAEConfig) -> AutoencoderKL:
    """diffusers ``AutoencoderKL`` with ``len(block_out_channels)`` encoder and decoder levels."""
    levels = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        scaling_factor=config.scaling_factor,
    )


class LatentAutoencoder(nn.Module):
    """``encode_mean`` / ``encode_sample`` give scaled latents; ``decode`` undoes the scale."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.autoencoder = build_autoencoder(config)

    @property
    def scale(self) -> float:
        return float(self.autoencoder.config.scaling_factor)

    def encode_mean(self, image: torch.Tensor) -> torch.Tensor:
        """Deterministic latent: posterior mean x scale (inference and export)."""
        return self.autoencoder.encode(image).latent_dist.mean * self.scale

    def encode_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Posterior sample x scale, as the reference's training (``get_first_stage_encoding``)."""
        return self.autoencoder.encode(image).latent_dist.sample(generator) * self.scale

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent to an ImageNet-normalised image (not clamped)."""
        return self.autoencoder.decode(latent / self.scale).sample
