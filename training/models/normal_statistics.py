"""What normal looks like to the scorer: Gaussians of its features on normal images, as PaDiM models them.

Per scorer layer and feature-map position, a vector of a seeded subset of the layer's channels: the
reconstruction's feature residual (``residual``: features of the image minus those of its reconstruction), or the
image's features and that residual together (``joint``). One Gaussian per position (``scope="position"``), or a mean
per position with one covariance pooled over the positions (``scope="shared"``), fitted on the training images
(normal only) as the model reconstructs them with one inference plan. A position's distance is
``sqrt(d2 / D)``, ``d2`` its squared Mahalanobis distance and ``D`` the vector's length (so every layer is about 1 on
normal images); the scorer upsamples, sums and smooths these maps as it does the ``1 - cos`` maps.

The statistics are buffers of :class:`NormalStatistics` (saved as safetensors with their settings), so the
exported scorer is still one graph with them as constants.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from runtime.errors import CheckpointError

KINDS = ("residual", "joint")
SCOPES = ("position", "shared")


@dataclass(frozen=True)
class StatisticsSettings:
    """How the statistics are modelled: the feature vector, the covariance scope, channels kept per layer and
    stream, the covariance shrinkage (a share of the mean variance added to the diagonal) and the channel seed."""

    kind: str = "joint"
    scope: str = "position"
    channels: int = 64
    shrinkage: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.scope not in SCOPES:
            raise ValueError(f"statistics {self.kind}/{self.scope}: expected a kind of {KINDS} and a scope of {SCOPES}")
        if self.channels < 1 or self.shrinkage < 0:
            raise ValueError(f"statistics need channels >= 1 and shrinkage >= 0, got {self.channels}, {self.shrinkage}")


def channel_subsets(widths: Sequence[int], settings: StatisticsSettings) -> list[np.ndarray]:
    """Per layer, the sorted seeded subset of at most ``settings.channels`` of its ``widths`` channels."""
    rng = np.random.default_rng(settings.seed)
    return [np.sort(rng.choice(w, min(w, settings.channels), replace=False)) for w in widths]


class NormalStatistics(nn.Module):
    """Per layer ``k``: ``channels_k`` (D_in,), ``mean_k`` (P, D) and ``precision_k`` (P, D, D), or (D, D) when
    shared; ``distances`` maps the scorer's features to per-layer distance maps."""

    def __init__(self, settings: StatisticsSettings, tensors: dict[str, torch.Tensor], info: dict | None = None):
        super().__init__()
        self.settings, self.info = settings, dict(info or {})
        self.layers = sum(1 for name in tensors if name.startswith("mean_"))
        for name, value in tensors.items():
            self.register_buffer(name, value)

    def vectors(self, image: torch.Tensor, reconstruction: torch.Tensor, k: int) -> torch.Tensor:
        """``(B, P, D)`` vectors of layer ``k`` from its image and reconstruction features ``(B, C, h, w)``."""
        channels = getattr(self, f"channels_{k}")
        x = image.index_select(1, channels)
        residual = x - reconstruction.index_select(1, channels)
        v = residual if self.settings.kind == "residual" else torch.cat([x, residual], dim=1)
        return v.flatten(2).transpose(1, 2)

    def distances(self, features: Sequence[torch.Tensor], batch: int) -> list[torch.Tensor]:
        """Per layer ``(B, h, w)`` distance maps; ``features`` hold the images' then the reconstructions' maps."""
        out = []
        for k, f in enumerate(features):
            v = self.vectors(f[:batch], f[batch:], k) - getattr(self, f"mean_{k}")
            precision = getattr(self, f"precision_{k}")
            equation = "bpd,pde,bpe->bp" if precision.ndim == 3 else "bpd,de,bpe->bp"
            d2 = torch.einsum(equation, v, precision, v).clamp_min(0)
            out.append((d2 / v.shape[-1]).sqrt().view(batch, *f.shape[-2:]))
        return out

    def save(self, path: Path) -> None:
        """Write the buffers and the settings (and ``info``) to ``path`` (safetensors)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: value.contiguous() for name, value in self.named_buffers()}
        meta = {"settings": json.dumps(asdict(self.settings)), "info": json.dumps(self.info)}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> NormalStatistics:
        """Statistics written by :meth:`save`; anything else is a :class:`CheckpointError` naming the file."""
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            settings = StatisticsSettings(**json.loads(meta["settings"]))
            info = json.loads(meta.get("info", "{}"))
        except (OSError, KeyError, ValueError, TypeError, SafetensorError) as exc:
            raise CheckpointError(f"{path}: not a normal-statistics file ({type(exc).__name__}: {exc})") from None
        return cls(settings, tensors, info)


class StatisticsFit:
    """Streaming sums of the vectors of each layer over normal images; :meth:`finish` makes the Gaussians."""

    def __init__(self, settings: StatisticsSettings, widths: Sequence[int]):
        self.settings = settings
        self.channels = [torch.from_numpy(c) for c in channel_subsets(widths, settings)]
        self.template = NormalStatistics(settings, {f"channels_{k}": c for k, c in enumerate(self.channels)})
        self.count = 0
        self.sums: list[torch.Tensor] = []
        self.squares: list[torch.Tensor] = []

    @torch.no_grad()
    def add(self, features: Sequence[torch.Tensor], batch: int) -> None:
        """Add a batch: the scorer backbone's features of ``batch`` images, then of their reconstructions."""
        for k, f in enumerate(features):
            v = self.template.vectors(f[:batch].double(), f[batch:].double(), k)
            if len(self.sums) <= k:
                self.sums.append(torch.zeros(v.shape[1:], dtype=torch.float64))
                self.squares.append(torch.zeros(v.shape[1], v.shape[2], v.shape[2], dtype=torch.float64))
            self.sums[k] += v.sum(0)
            self.squares[k] += torch.einsum("bpd,bpe->pde", v, v)
        self.count += batch

    def finish(self, info: dict | None = None) -> NormalStatistics:
        """The fitted :class:`NormalStatistics` (float32); needs at least two images."""
        if self.count < 2:
            raise ValueError(f"normal statistics need at least 2 images, got {self.count}")
        n, tensors = self.count, {}
        for k, (s, sq) in enumerate(zip(self.sums, self.squares)):
            mean = s / n
            scatter = sq - n * torch.einsum("pd,pe->pde", mean, mean)
            if self.settings.scope == "shared":
                cov = scatter.sum(0) / (n * len(mean) - len(mean))
            else:
                cov = scatter / (n - 1)
            dim = cov.shape[-1]
            ridge = self.settings.shrinkage * torch.diagonal(cov, dim1=-2, dim2=-1).mean() + 1e-8
            precision = torch.linalg.inv(cov + ridge * torch.eye(dim, dtype=cov.dtype))
            tensors.update({f"channels_{k}": self.channels[k], f"mean_{k}": mean.float(),
                            f"precision_{k}": precision.float().contiguous()})  # as loaded: bit-identical scores
        return NormalStatistics(self.settings, tensors, {**(info or {}), "images": n})
