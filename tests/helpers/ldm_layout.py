"""Tiny diffusers models written in the original LDM / reference-DiAD checkpoint key layout, for tests.

The inverse mapping (diffusers key -> LDM key) is written here independently of diffusers' converters, so reading
the result back through ``training.checkpoints`` checks those converters instead of repeating them. All models
have the SD-1.5 block layout (3 cross-attention down blocks + 1 plain; up blocks the other way round).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextModel

StateDict = dict[str, torch.Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
CONTROL_PREFIX = "control_model."
POSITION_IDS = CLIP_PREFIX + "text_model.embeddings.position_ids"
# The extras of a real SD-1.5 checkpoint: diffusion schedule buffers and EMA bookkeeping.
SCHEDULE = {
    "betas": torch.rand(1000),
    "alphas_cumprod": torch.rand(1000),
    "alphas_cumprod_prev": torch.rand(1000),
    "sqrt_alphas_cumprod": torch.rand(1000),
    "sqrt_one_minus_alphas_cumprod": torch.rand(1000),
    "log_one_minus_alphas_cumprod": torch.rand(1000),
    "sqrt_recip_alphas_cumprod": torch.rand(1000),
    "sqrt_recipm1_alphas_cumprod": torch.rand(1000),
    "posterior_variance": torch.rand(1000),
    "posterior_log_variance_clipped": torch.rand(1000),
    "posterior_mean_coef1": torch.rand(1000),
    "posterior_mean_coef2": torch.rand(1000),
    "logvar": torch.zeros(1000),
    "model_ema.decay": torch.tensor(0.9999),
    "model_ema.num_updates": torch.tensor(0, dtype=torch.int32),
}
# Reference SFF conv ``down<i><j>``: SG skip 5 + i into skip 8 + j.
SFF_BRANCHES = {f"down{i}{j}": (5 + i, 8 + j) for i in (1, 2, 3) for j in (1, 2, 3)}


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Distinct random values in every tensor (so a swap of two equally shaped tensors shows)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=gen))
    return model


def _resnet(rest: str) -> str:
    renames = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
    head, tail = rest.split(".", 1)
    return f"{renames[head]}.{tail}"


def encoder_key(key: str) -> str | None:
    """UNet / ControlNet encoder half: diffusers key -> LDM key relative to the network."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0"}  # fmt: skip
    head, _, tail = key.rpartition(".")
    if head in fixed:
        return f"{fixed[head]}.{tail}"
    if m := re.fullmatch(r"down_blocks\.(\d)\.resnets\.(\d)\.(.+)", key):
        return f"input_blocks.{3 * int(m[1]) + int(m[2]) + 1}.0.{_resnet(m[3])}"
    if m := re.fullmatch(r"down_blocks\.(\d)\.attentions\.(\d)\.(.+)", key):
        return f"input_blocks.{3 * int(m[1]) + int(m[2]) + 1}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{3 * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    return None


def unet_key(key: str, up_block_types: Sequence[str]) -> str:
    if (ldm := encoder_key(key)) is not None:
        return ldm
    if m := re.fullmatch(r"up_blocks\.(\d)\.resnets\.(\d)\.(.+)", key):
        return f"output_blocks.{3 * int(m[1]) + int(m[2])}.0.{_resnet(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.attentions\.(\d)\.(.+)", key):
        return f"output_blocks.{3 * int(m[1]) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        slot = 2 if up_block_types[block].startswith("CrossAttn") else 1
        return f"output_blocks.{3 * block + 2}.{slot}.conv.{m[2]}"
    head, _, tail = key.rpartition(".")
    return {"conv_norm_out": "out.0", "conv_out": "out.2"}[head] + f".{tail}"


def controlnet_key(key: str) -> str:
    if (ldm := encoder_key(key)) is not None:
        return ldm
    if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    if m := re.fullmatch(r"controlnet_mid_block\.(.+)", key):
        return f"middle_block_out.0.{m[1]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d)\.(.+)", key):
        return f"input_hint_block.{2 * int(m[1]) + 2}.{m[2]}"
    head, _, tail = key.rpartition(".")
    hint = {"controlnet_cond_embedding.conv_in": 0, "controlnet_cond_embedding.conv_out": 14}[head]
    return f"input_hint_block.{hint}.{tail}"


def vae_key(key: str, levels: int) -> str:
    vres = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d)\.resnets\.(\d)\.(\w+)\.(\w+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{vres[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d)\.resnets\.(\d)\.(\w+)\.(\w+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{vres[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d)\.upsamplers\.0\.conv\.(\w+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(\w+)\.(\w+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{vres[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(\w+)", key):
        return f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
    return key.replace("conv_norm_out", "norm_out")  # conv_in, conv_out, (post_)quant_conv keep their names


def clip_key(key: str) -> str:
    return key if key.startswith("text_model.") else f"text_model.{key}"


def to_ldm(model: torch.nn.Module, rename: Callable[[str], str], prefix: str) -> StateDict:
    """The model's tensors under their LDM names; a bijection, attention 1x1 convs back to 4-D."""
    out: StateDict = {}
    for key, tensor in model.state_dict().items():
        ldm = prefix + rename(key)
        assert ldm not in out, f"two tensors map to {ldm}"
        is_vae_attn = ".mid.attn_1." in ldm and ldm.endswith("weight") and tensor.ndim == 2
        out[ldm] = tensor.clone()[:, :, None, None] if is_vae_attn else tensor.clone()
    return out


def ldm_unet(unet: UNet2DConditionModel, prefix: str = UNET_PREFIX) -> StateDict:
    return to_ldm(unet, lambda key: unet_key(key, unet.config.up_block_types), prefix)


def ldm_vae(vae: AutoencoderKL, prefix: str = VAE_PREFIX) -> StateDict:
    return to_ldm(vae, lambda key: vae_key(key, len(vae.config.block_out_channels)), prefix)


def ldm_clip(text_encoder: CLIPTextModel, prefix: str = CLIP_PREFIX) -> StateDict:
    return to_ldm(text_encoder, clip_key, prefix)


def ldm_controlnet(controlnet: ControlNetModel, prefix: str = CONTROL_PREFIX) -> StateDict:
    return to_ldm(controlnet, controlnet_key, prefix)


def sff_tensors(block_out_channels: Sequence[int], seed: int = 6) -> StateDict:
    """``control_model.down<i><j>.0.weight`` with distinct values, shaped (target, source, 3, 3) channels.

    Skips 6, 7, 8 have the widths of levels 1, 2, 2 and skips 9, 10, 11 those of levels 2, 3, 3 (skip 9 is the
    last downsample's output).
    """
    gen = torch.Generator().manual_seed(seed)
    c = block_out_channels
    width = {6: c[1], 7: c[2], 8: c[2], 9: c[2], 10: c[3], 11: c[3]}
    return {
        f"{CONTROL_PREFIX}{name}.0.weight": torch.randn(width[target], width[source], 3, 3, generator=gen)
        for name, (source, target) in SFF_BRANCHES.items()
    }


def sd_state(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel | None) -> StateDict:
    """An SD-1.5 original checkpoint's tensors: UNet, VAE, text encoder (when given) and the usual extras."""
    state = {**ldm_unet(unet), **ldm_vae(vae), **SCHEDULE}
    if text_encoder is not None:
        state.update(ldm_clip(text_encoder))
        state[POSITION_IDS] = torch.arange(77).unsqueeze(0)
    return state


def diad_state(sd: StateDict, controlnet: ControlNetModel, block_out_channels: Sequence[int]) -> StateDict:
    """A reference-DiAD checkpoint's tensors: SD-1.5 plus ``control_model.*`` with the nine SFF convs."""
    return {**sd, **ldm_controlnet(controlnet), **sff_tensors(block_out_channels)}
