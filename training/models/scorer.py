"""The anomaly scorer: ``1 - cos`` between backbone features of the image and of its reconstruction.

timm ``resnet50`` (``features_only``, layer1..layer3, eval mode) is applied to both ImageNet-normalised images; per
scale the channel-wise cosine distance is taken (eps 1e-8). The post-processing (bilinear upsample with
``align_corners=True``, sum, Gaussian sigma 5, image score = max after 8x 8x8 average pooling) is applied with
the constant matrices of :mod:`runtime.scoring`, held as buffers: plain matmuls, exportable to ONNX, and the same
math as the torch-free runtime.

Weights are never downloaded: a local file (``weights=PATH``: safetensors or a timm checkpoint) or the local
Hugging Face cache of ``timm/<backbone>.<tag>``; without either the backbone is random and a loud warning says
what to download and where to put it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.constants import HF_HUB_CACHE
from torch import nn

from runtime.errors import CheckpointError
from runtime.scoring import map_matrices, pool_matrix
from training.models.notices import warn_loudly
from training.models.presets import ScorerConfig

HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def cached_weights(backbone: str, tag: str) -> str | None:
    """Path of ``timm/<backbone>.<tag>`` weights in the local Hugging Face cache, without any network access."""
    for filename in HUB_FILES:
        path = try_to_load_from_cache(f"timm/{backbone}.{tag}", filename)
        if isinstance(path, str):
            return path
    return None


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a full-model or features-only state dict; every tensor of the truncated backbone must be present."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: scorer weights file not found (expected .safetensors or a timm .pth)")
    own = model.state_dict()
    state = {k: v for k, v in timm.models.load_state_dict(str(path)).items() if k in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise CheckpointError(f"{path}: not weights of this backbone; missing {len(missing)} tensors, e.g. {missing[:3]}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the backbone ({exc})") from None


class FeatureScorer(nn.Module):
    """``forward(image, reconstruction) -> (anomaly_map (B, S, S), score (B,))``; ``cos_maps`` gives the raw maps."""

    def __init__(
        self,
        backbone: str = "resnet50",
        layers: Sequence[int] = (1, 2, 3),
        image_size: int = 256,
        weights: str | Path | None = None,
        weights_tag: str = "a1_in1k",
        pretrained: bool = True,
    ):
        """``pretrained=False`` deliberately keeps random weights (tests, counting) without warning."""
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=tuple(layers))
        if pretrained:
            path = weights or cached_weights(backbone, weights_tag)
            if path is None:
                warn_loudly(
                    f"scorer: no weights for {backbone} - anomaly scores from a RANDOM backbone are meaningless. "
                    f"Download timm '{backbone}.{weights_tag}' (https://huggingface.co/timm/{backbone}.{weights_tag}, "
                    f"model.safetensors) into the Hugging Face cache ({HF_HUB_CACHE}), e.g. "
                    f"`huggingface-cli download timm/{backbone}.{weights_tag}` on a machine with internet, or pass "
                    "weights=PATH (scorer.weights in the config) to a local .safetensors/.pth file."
                )
            else:
                load_backbone_weights(self.backbone, path)
        self.backbone.eval().requires_grad_(False)

        sizes = tuple(math.ceil(image_size / r) for r in self.backbone.feature_info.reduction())
        self.num_scales = len(sizes)
        for k, matrix in enumerate(map_matrices(sizes, image_size)):
            self.register_buffer(f"map_matrix_{k}", torch.from_numpy(matrix), persistent=False)
        pool = torch.from_numpy(pool_matrix(image_size)).float()
        self.register_buffer("pool_matrix", pool, persistent=False)

    @classmethod
    def from_config(cls, config: ScorerConfig, image_size: int, pretrained: bool = True) -> FeatureScorer:
        return cls(config.backbone, config.layers, image_size, config.weights, config.weights_tag, pretrained)

    def train(self, mode: bool = True) -> FeatureScorer:
        """The backbone stays in eval mode (frozen batch-norm statistics)."""
        return super().train(False)

    def cos_maps(self, image: torch.Tensor, reconstruction: torch.Tensor) -> list[torch.Tensor]:
        """Per scale ``1 - cos`` along channels, ``(B, h, h)``; both images through one backbone call."""
        features = self.backbone(torch.cat([image, reconstruction]))
        batch = image.shape[0]
        return [1.0 - F.cosine_similarity(f[:batch], f[batch:], dim=1, eps=1e-8) for f in features]

    def postprocess(self, cos_maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Upsample + sum + blur (one matrix per scale), then the pooled-max image score."""
        mats = [getattr(self, f"map_matrix_{k}") for k in range(self.num_scales)]
        amap = sum(m @ c @ m.T for m, c in zip(mats, cos_maps))
        pooled = self.pool_matrix @ amap @ self.pool_matrix.T
        return amap, pooled.flatten(1).amax(dim=1)

    def forward(self, image: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.postprocess(self.cos_maps(image, reconstruction))


def seeded_scorer(config: ScorerConfig, image_size: int, seed: int) -> FeatureScorer:
    """The scorer of a run, as evaluation and export build it: a backbone without weights is drawn from
    ``seed`` (the noise seed), so every command scores with the same random features."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FeatureScorer.from_config(config, image_size)
