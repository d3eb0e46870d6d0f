"""The Semantic-Guided (SG) network: a ControlNet copy of the UNet encoder plus Spatial-aware Feature Fusion.

diffusers' ``ControlNetModel.from_unet`` is the reference ``SemanticGuidedNetwork`` minus SFF: a trainable copy
of conv_in, time embedding, down blocks and mid block, zero-initialised 1x1 convs on the 12 skips and the middle,
and ``ControlNetConditioningEmbedding`` = the reference hint encoder (3 -> 16 -> 16 -> 32/2 -> 32 -> 96/2 -> 96 ->
256/2 -> zero conv to the first UNet width). We reuse its submodules with our own forward so that the hint
(which depends only on the image) is encoded once per image and reused at every DDIM step.

Skips are numbered as in the reference: 0 = conv_in, then per level ``layers_per_block`` blocks and a downsample.
SFF fuses the zero-conv outputs of the second-to-last resolution (reference 6, 7, 8: the SGEB3 level) into those
of the last resolution (9, 10, 11: SGEB4).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from training.models.presets import INJECTIONS, SFF_INITS


def skip_layout(block_out_channels: Sequence[int], layers_per_block: int) -> list[tuple[int, int]]:
    """``(channels, resolution level)`` of each encoder skip, in order (12 for the SD layout)."""
    layout = [(block_out_channels[0], 0)]
    for level, channels in enumerate(block_out_channels):
        layout += [(channels, level)] * layers_per_block
        if level < len(block_out_channels) - 1:
            layout.append((channels, level + 1))  # the downsample's output lives on the next level
    return layout


def timestep_batch(timestep: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    """A scalar or per-sample timestep as a ``(batch,)`` tensor."""
    t = torch.as_tensor(timestep, device=device)
    return t.reshape(-1).expand(batch) if t.numel() == 1 else t


class SpatialFeatureFusion(nn.Module):
    """SFF (diad-method.md §6.1): ``Ê_j = SiLU(E_j + Σ_i D_ij(E_i))``.

    ``D_ij`` = Conv2d(C_i -> C_j, 3, stride 2, pad 1, no bias) -> InstanceNorm2d (no affine) -> SiLU. Branch
    ``down{a}{b}`` maps source ``a`` (1-based; reference skips 6, 7, 8) onto target ``b`` (9, 10, 11), so the
    reference key ``control_model.down{a}{b}.0.weight`` is ``sff.down{a}{b}.0.weight`` here.

    ``init="zero"`` is the reference (zero convs: with the zero skip convs before them SFF never gets a
    gradient, §6.3); ``"small_random"`` is kaiming-normal x ``gain``, so SFF learns from the first steps.
    """

    def __init__(
        self,
        source_channels: Sequence[int],
        target_channels: Sequence[int],
        init: str = "small_random",
        gain: float = 1e-2,
    ):
        super().__init__()
        if init not in SFF_INITS:
            raise ValueError(f"SFF init {init!r}: expected one of {SFF_INITS}")
        self.num_sources, self.num_targets = len(source_channels), len(target_channels)
        for a, c_in in enumerate(source_channels):
            for b, c_out in enumerate(target_channels):
                conv = nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False)
                if init == "zero":
                    nn.init.zeros_(conv.weight)
                else:
                    nn.init.kaiming_normal_(conv.weight)
                    with torch.no_grad():
                        conv.weight.mul_(gain)
                branch = nn.Sequential(conv, nn.InstanceNorm2d(c_out, affine=False), nn.SiLU())
                self.add_module(self.branch_name(a, b), branch)

    @staticmethod
    def branch_name(source: int, target: int) -> str:
        return f"down{source + 1}{target + 1}"

    def convs(self) -> list[nn.Conv2d]:
        """The nine (sources x targets) convolutions, in ``down11 .. down33`` order."""
        return [
            self.get_submodule(self.branch_name(a, b))[0]
            for a in range(self.num_sources)
            for b in range(self.num_targets)
        ]

    def forward(self, sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        fused = []
        for b, target in enumerate(targets):
            total = target
            for a, source in enumerate(sources):
                total = total + self.get_submodule(self.branch_name(a, b))(source)
            fused.append(F.silu(total))
        return fused


class SemanticGuidedNetwork(nn.Module):
    """ControlNet (trainable encoder copy, hint encoder, zero convs) + SFF; picks the residuals per injection.

    ``encode_hint(image)`` once per image, then ``forward(x_t, t, context, hint)`` per step gives the 12 down
    residuals and the mid residual for the UNet. "mid+sff": skips 0..8 get zeros (their zero convs are not even
    run), 9..11 get SFF outputs. "all": skips 0..8 get their zero-conv outputs too.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        hint_channels: Sequence[int],
        injection: str = "mid+sff",
        sff_init: str = "small_random",
        sff_init_gain: float = 1e-2,
    ):
        super().__init__()
        if injection not in INJECTIONS:
            raise ValueError(f"injection {injection!r}: expected one of {INJECTIONS}")
        self.injection = injection
        self.controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(hint_channels))
        layout = skip_layout(unet.config.block_out_channels, unet.config.layers_per_block)
        last = layout[-1][1]
        self.sff_sources = [i for i, (_, level) in enumerate(layout) if level == last - 1]
        self.sff_targets = [i for i, (_, level) in enumerate(layout) if level == last]
        self.sff = SpatialFeatureFusion(
            [layout[i][0] for i in self.sff_sources],
            [layout[i][0] for i in self.sff_targets],
            init=sff_init,
            gain=sff_init_gain,
        )

    def copy_encoder_from(self, unet: UNet2DConditionModel) -> None:
        """Initialise the encoder copy from ``unet`` (the reference ``build_model.py``, after loading SD weights)."""
        for name in ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block"):
            getattr(self.controlnet, name).load_state_dict(getattr(unet, name).state_dict())

    def encode_hint(self, image: torch.Tensor) -> torch.Tensor:
        """The image (ImageNet-normalised, 3xHxW) as a feature map at the latent size (first UNet width)."""
        return self.controlnet.controlnet_cond_embedding(image)

    def forward(
        self, x_t: torch.Tensor, timestep: torch.Tensor | int, context: torch.Tensor, hint: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(down_residuals: 12 tensors, mid_residual)`` for noisy latent ``x_t`` and encoded ``hint``."""
        cn = self.controlnet
        t = timestep_batch(timestep, x_t.shape[0], x_t.device)
        emb = cn.time_embedding(cn.time_proj(t).to(x_t.dtype))

        h = cn.conv_in(x_t) + hint
        skips = [h]
        for block in cn.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, res = block(hidden_states=h, temb=emb)
            skips.extend(res)
        h = cn.mid_block(h, emb, encoder_hidden_states=context)
        mid = cn.controlnet_mid_block(h)

        used = range(len(skips)) if self.injection == "all" else self.sff_sources + self.sff_targets
        zero_convs = {i: cn.controlnet_down_blocks[i](skips[i]) for i in used}
        fused = self.sff([zero_convs[i] for i in self.sff_sources], [zero_convs[i] for i in self.sff_targets])
        direct = [
            zero_convs[i] if self.injection == "all" else torch.zeros_like(skips[i])
            for i in range(self.sff_targets[0])
        ]
        return direct + fused, mid
