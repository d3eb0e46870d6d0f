"""A ``torch.utils.data.Dataset`` over index samples, pre-processed exactly as the edge runtime does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from runtime.datasets import Sample
from runtime.errors import DatasetLayoutError
from runtime.preprocess import IMAGE_SIZE, preprocess, preprocess_mask, read_image, read_mask


class AnomalyDataset(Dataset):
    """Items are dicts: ``image`` float32 ``(3, S, S)`` (ImageNet-normalised), ``mask`` float32 ``(1, S, S)``
    of 0/1 (all zero for normal images and for anomalous images without a mask), ``label`` 0/1,
    ``class_name``, ``defect`` and ``path``."""

    def __init__(self, samples: Sequence[Sample], size: int = IMAGE_SIZE):
        self.samples = list(samples)
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        rgb = read_image(sample.image)
        mask = torch.zeros(1, self.size, self.size)
        if sample.mask is not None:
            raw = read_mask(sample.mask)
            if raw.shape != rgb.shape[:2]:
                raise DatasetLayoutError(
                    f"{sample.mask}: mask is {raw.shape[1]}x{raw.shape[0]} pixels but its image {sample.image} "
                    f"is {rgb.shape[1]}x{rgb.shape[0]}"
                )
            mask = torch.from_numpy(preprocess_mask(raw, self.size)).float()[None]
        return {
            "image": torch.from_numpy(preprocess(rgb, self.size)),
            "mask": mask,
            "label": sample.label,
            "class_name": sample.class_name,
            "defect": sample.defect,
            "path": str(sample.image),
        }
