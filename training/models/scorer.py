"""The anomaly scorer: ``1 - cos`` between backbone features of the image and of its reconstruction.

A timm backbone (``features_only``, eval mode; the reference's ``resnet50`` layer1..layer3, or the packaged
ImageNet ``tf_efficientnet_lite0``) is applied to both images; per scale the channel-wise cosine distance is taken
(eps 1e-8). Images arrive ImageNet-normalised; a backbone trained with another normalisation (TensorFlow's
EfficientNet-Lite: mean = std = 0.5) gets them re-normalised by a constant affine map. The post-processing
(bilinear upsample with ``align_corners=True``, sum, Gaussian sigma 5, image score = max after 8x 8x8 average
pooling) is applied with the constant matrices of :mod:`runtime.scoring`, held as buffers: plain matmuls,
exportable to ONNX, and the same math as the torch-free runtime.

Weights are never downloaded (:mod:`training.models.backbones`): a local file, the local Hugging Face cache or
an installed weights package; without any of them building the scorer fails with what to download and where.
A random backbone is only ever built when asked for (``weights="random"`` / ``pretrained=False``: tests).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD
from runtime.scoring import map_matrices, pool_matrix
from training.models.backbones import RANDOM, create_backbone, find_weights
from training.models.normal_statistics import NormalStatistics
from training.models.presets import ScorerConfig


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
        """``weights``: a file, :data:`~training.models.backbones.RANDOM`, or None to look for them;
        ``pretrained=False`` is the same as ``weights="random"`` (tests, counting)."""
        super().__init__()
        self.weights = RANDOM if not pretrained else find_weights(backbone, weights_tag, weights and str(weights))
        self.backbone = create_backbone(backbone, self.weights, features_only=True, out_indices=tuple(layers))
        self.backbone.requires_grad_(False)

        # ImageNet normalisation -> the backbone's own: x' = x * scale + shift (identity for ImageNet backbones).
        cfg = self.backbone.pretrained_cfg
        mean, std = np.asarray(cfg.get("mean", IMAGENET_MEAN)), np.asarray(cfg.get("std", IMAGENET_STD))
        scale = np.asarray(IMAGENET_STD) / std
        shift = (np.asarray(IMAGENET_MEAN) - mean) / std
        self.renormalize = not (np.allclose(scale, 1) and np.allclose(shift, 0))
        self.register_buffer("input_scale", torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        sizes = tuple(math.ceil(image_size / r) for r in self.backbone.feature_info.reduction())
        self.num_scales = len(sizes)
        for k, matrix in enumerate(map_matrices(sizes, image_size)):
            self.register_buffer(f"map_matrix_{k}", torch.from_numpy(matrix), persistent=False)
        pool = torch.from_numpy(pool_matrix(image_size)).float()
        self.register_buffer("pool_matrix", pool, persistent=False)
        self.statistics: NormalStatistics | None = None  # see use_statistics

    @classmethod
    def from_config(cls, config: ScorerConfig, image_size: int, pretrained: bool = True) -> FeatureScorer:
        return cls(config.backbone, config.layers, image_size, config.weights, config.weights_tag, pretrained)

    def train(self, mode: bool = True) -> FeatureScorer:
        """The backbone stays in eval mode (frozen batch-norm statistics)."""
        return super().train(False)

    def backbone_input(self, image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Both images as one batch, in the backbone's normalisation."""
        both = torch.cat([image, reconstruction])
        return both * self.input_scale + self.input_shift if self.renormalize else both

    def distances(self, features: Sequence[torch.Tensor], batch: int) -> list[torch.Tensor]:
        """Per scale ``(B, h, h)`` distances between the first ``batch`` feature maps (the images) and the others
        (their reconstructions): ``1 - cos`` along channels, or, with :attr:`statistics`, the distance from what
        normal images look like (:class:`~training.models.normal_statistics.NormalStatistics`)."""
        if self.statistics is not None:
            return self.statistics.distances(features, batch)
        return [1.0 - F.cosine_similarity(f[:batch], f[batch:], dim=1, eps=1e-8) for f in features]

    def widths(self) -> list[int]:
        """Channels of each scale's feature map."""
        return list(self.backbone.feature_info.channels())

    def use_statistics(self, statistics: NormalStatistics | None) -> FeatureScorer:
        """Score against ``statistics`` (their channels must exist in this backbone), or by ``1 - cos`` (None)."""
        if statistics is not None:
            if statistics.layers != self.num_scales:
                raise ValueError(f"statistics of {statistics.layers} layers for a scorer of {self.num_scales}")
            for k, width in enumerate(self.widths()):
                if int(getattr(statistics, f"channels_{k}").max()) >= width:
                    raise ValueError(f"statistics layer {k} uses channels beyond the backbone's {width}")
        self.statistics = statistics
        return self

    def cos_maps(self, image: torch.Tensor, reconstruction: torch.Tensor) -> list[torch.Tensor]:
        """Per scale ``1 - cos`` along channels, ``(B, h, h)``; both images through one backbone call."""
        return self.distances(self.backbone(self.backbone_input(image, reconstruction)), image.shape[0])

    def postprocess(self, cos_maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Upsample + sum + blur (one matrix per scale), then the pooled-max image score."""
        mats = [getattr(self, f"map_matrix_{k}") for k in range(self.num_scales)]
        amap = sum(m @ c @ m.T for m, c in zip(mats, cos_maps))
        pooled = self.pool_matrix @ amap @ self.pool_matrix.T
        return amap, pooled.flatten(1).amax(dim=1)

    def forward(self, image: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.postprocess(self.cos_maps(image, reconstruction))


def seeded_scorer(config: ScorerConfig, image_size: int, seed: int) -> FeatureScorer:
    """The scorer of a run, as evaluation and export build it; a backbone asked for as random is drawn from
    ``seed`` (the noise seed), so every command scores with the same random features."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FeatureScorer.from_config(config, image_size)
