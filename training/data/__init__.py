"""Datasets for training: the torch-free layouts of :mod:`runtime.datasets` and a torch ``Dataset`` over them.

``AnomalyDataset`` is imported on first use, so that reading and checking a dataset never imports torch.
"""

from __future__ import annotations

from typing import Any

from runtime.datasets import DatasetIndex, Sample, load_index, split_validation

__all__ = ["AnomalyDataset", "DatasetIndex", "Sample", "load_index", "split_validation"]


def __getattr__(name: str) -> Any:
    if name == "AnomalyDataset":
        from training.data.torch_dataset import AnomalyDataset

        return AnomalyDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
