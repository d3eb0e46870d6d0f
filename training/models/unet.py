"""The SD-1.5 denoising UNet (diffusers ``UNet2DConditionModel``, unmodified).

The SG network's residuals enter through ``down_block_additional_residuals`` /
``mid_block_additional_residual``, so no fork of the UNet is needed. The encoder half (conv_in, time embedding,
down blocks, mid block) is always frozen; the decoder half is trainable in the "sg+decoder" set.
"""
from __future__ import annotations

from diffusers import UNet2DConditionModel
from torch import nn

from training.models.presets import UNetConfig

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


def build_unet(config: UNetConfig, latent_channels: int = 4) -> UNet2DConditionModel:
    """The SD-1.5 UNet layout at the configured widths (SD-1.5: 4 latent channels in and out)."""
    if len(config.block_out_channels) != len(DOWN_BLOCK_TYPES):
        raise ValueError(f"the SD layout has {len(DOWN_BLOCK_TYPES)} levels, got {config.block_out_channels}")
    return UNet2DConditionModel(
        sample_size=config.sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=DOWN_BLOCK_TYPES,
        up_block_types=UP_BLOCK_TYPES,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.attention_head_dim,
        cross_attention_dim=config.cross_attention_dim,
        norm_num_groups=config.norm_num_groups,
    )


def unet_decoder(unet: UNet2DConditionModel) -> list[nn.Module]:
    """The decoder half: up blocks and the output layers (LDM's ``output_blocks`` + ``out``)."""
    return [unet.up_blocks, unet.conv_norm_out, unet.conv_out]


def unet_encoder(unet: UNet2DConditionModel) -> list[nn.Module]:
    """The encoder half: input conv, time embedding, down blocks, mid block (always frozen)."""
    return [unet.conv_in, unet.time_proj, unet.time_embedding, unet.down_blocks, unet.mid_block]
