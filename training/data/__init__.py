"""Datasets: a torch-free index of samples in any supported layout, and a torch ``Dataset`` over it.

``AnomalyDataset`` is imported on first use, so that reading and checking a dataset never imports torch.
"""

from __future__ import annotations

from typing import Any

from training.data.detect import load_index
from training.data.index import DatasetIndex, Sample, split_validation

__all__ = ["AnomalyDataset", "DatasetIndex", "Sample", "load_index", "split_validation"]


def __getattr__(name: str) -> Any:
    if name == "AnomalyDataset":
        from training.data.torch_dataset import AnomalyDataset

        return AnomalyDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
