"""Load real-world checkpoints into diffusers-layout state dicts without ever dropping a tensor silently.

Sources:
- an original (LDM) SD-1.5 checkpoint, ``.ckpt`` (``torch.load(weights_only=True)`` only) or ``.safetensors``,
  with ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE), ``cond_stage_model.transformer.*``
  (CLIP text encoder) and, in a checkpoint of the reference DiAD code, ``control_model.*`` (SG network: a
  ControlNet plus the nine SFF convs ``down{1,2,3}{1,2,3}``);
- a diffusers folder (``unet/``, ``vae/``, optional ``text_encoder/`` and ``tokenizer/``);
- a fine-tuned LDM autoencoder (``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``, optional
  ``loss.*``, optionally under ``first_stage_model.``) that replaces the VAE.

The key renaming is diffusers' own (``diffusers.loaders.single_file_utils``). Those converters pick the keys they
know and skip all others without a word, and ``from_pretrained`` only logs unused or missing weights. So here:
each converter first runs on meta-device stand-ins of the source tensors, which tells exactly which source key
every output key comes from; a source key that no converter used is either a known extra (reported under its
reason in :class:`LoadReport`) or an error. :func:`strict_load` then checks the other direction (missing keys,
shapes) against the model. ``from_pretrained`` is called with ``output_loading_info=True`` and must report nothing.

The SFF convs have no diffusers counterpart; :data:`SFF_KEY_MAP` maps them to keys ``"<source>_<target>.weight"``
(see :func:`sff_key`), where source is SG encoder block 6, 7 or 8 and target block 9, 10 or 11.
"""

from __future__ import annotations

import functools
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)
from safetensors import SafetensorError
from safetensors.torch import load_file

from runtime.errors import CheckpointError

StateDict = dict[str, torch.Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
CONTROL_PREFIX = "control_model."
_PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": CLIP_PREFIX, "controlnet": CONTROL_PREFIX}

# Reference SG network ``control_model.down<i><j>`` -> (source encoder block, target encoder block).
SFF_KEY_MAP: dict[str, tuple[int, int]] = {
    "down11": (6, 9), "down12": (6, 10), "down13": (6, 11),
    "down21": (7, 9), "down22": (7, 10), "down23": (7, 11),
    "down31": (8, 9), "down32": (8, 10), "down33": (8, 11),
}  # fmt: skip
_SFF_RE = re.compile(rf"{re.escape(CONTROL_PREFIX)}(down[123][123])\.0\.weight")

IGNORED_SCHEDULE = "ignored (schedule buffers / EMA)"
IGNORED_AE_LOSS = "ignored (autoencoder training loss)"
IGNORED_POSITION_IDS = "ignored (CLIP position_ids: a non-persistent buffer, rebuilt by CLIPTextModel)"
IGNORED_VAE_REPLACED = "ignored (VAE taken from {name})"
IGNORED_FOLDERS = "ignored (pipeline folders DiAD does not use)"
_SCHEDULE_RE = re.compile(
    r"(betas|alphas_cumprod\w*|posterior_\w+|sqrt_\w+|log_one_minus_\w+|logvar|lvlb_weights|scale_factor"
    r"|model_ema\..+)"
)
_POSITION_IDS = CLIP_PREFIX + "text_model.embeddings.position_ids"

# The SD-1.5 numbers of the reference ``models/diad.yaml``, in the nested layout of an original LDM yaml.
SD15_LDM_CONFIG: dict[str, Any] = {
    "model": {
        "params": {
            "scale_factor": 0.18215,
            "unet_config": {
                "params": {
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "channel_mult": [1, 2, 4, 4],
                    "num_res_blocks": 2,
                    "attention_resolutions": [4, 2, 1],
                    "num_heads": 8,
                    "transformer_depth": 1,
                    "context_dim": 768,
                    "use_linear_in_transformer": False,
                }
            },
            "control_stage_config": {"params": {"hint_channels": 3}},
            "first_stage_config": {
                "params": {
                    "embed_dim": 4,
                    "ddconfig": {
                        "double_z": True,
                        "z_channels": 4,
                        "resolution": 256,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 128,
                        "ch_mult": [1, 2, 4, 4],
                        "num_res_blocks": 2,
                        "attn_resolutions": [],
                        "dropout": 0.0,
                    },
                }
            },
        }
    }
}


def sff_key(source: int, target: int) -> str:
    """Key of the SFF conv from SG encoder block ``source`` (6-8) into block ``target`` (9-11)."""
    return f"{source}_{target}.weight"


def diffusers_configs_from_ldm(
    original_config: Mapping[str, Any] = SD15_LDM_CONFIG, image_size: int = 256
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(UNet2DConditionModel config, AutoencoderKL config) for an original LDM yaml-like config, via diffusers."""
    unet = create_unet_diffusers_config_from_ldm(original_config, {})
    vae = create_vae_diffusers_config_from_ldm(original_config, {})
    # ``image_size=`` is deprecated in diffusers; the sample sizes are only metadata, set them here.
    ch_mult = original_config["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["ch_mult"]
    unet["sample_size"] = image_size // 2 ** (len(ch_mult) - 1)
    vae["sample_size"] = image_size
    return unet, vae


@dataclass
class LoadReport:
    """What happened to every tensor of one source file or folder."""

    source: Path
    consumed: dict[str, int] = field(default_factory=dict)  # component -> source tensors used
    ignored: dict[str, list[str]] = field(default_factory=dict)  # reason -> source keys
    unexpected: list[str] = field(default_factory=list)  # only when loaded with allow_unexpected=True

    def summary(self, limit: int = 10) -> str:
        """Readable multi-line summary, listing at most ``limit`` keys per group."""
        used = ", ".join(f"{name} {n}" for name, n in self.consumed.items())
        lines = [f"{self.source}: used {sum(self.consumed.values())} tensors ({used})"]
        for reason, keys in self.ignored.items():
            lines.append(f"  {reason}: {len(keys)}: {_first(keys, limit)}")
        if self.unexpected:
            lines.append(f"  UNEXPECTED, not used: {len(self.unexpected)}: {_first(self.unexpected, limit)}")
        return "\n".join(lines)


@dataclass
class ConvertedCheckpoint:
    """Diffusers-layout state dicts per component; ``sources`` names the file each component came from."""

    unet: StateDict
    vae: StateDict
    text_encoder: StateDict | None
    controlnet: StateDict | None
    sff: StateDict | None  # keys from sff_key()
    sources: dict[str, Path]
    reports: list[LoadReport]
    tokenizer: Path | None = None  # a diffusers folder's tokenizer/ folder


def read_state_dict(path: str | Path) -> StateDict:
    """Tensors of a ``.safetensors`` file or of a ``.ckpt``/``.pt``/``.pth``/``.bin`` read with weights_only.

    A top-level ``state_dict`` entry (PyTorch Lightning checkpoints) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
        detail = str(exc.__context__ or exc).splitlines()[0]
        raise CheckpointError(
            f"{path}: refused: torch.load(weights_only=True) found more than tensors ({detail}). Loading it in "
            "full could run arbitrary code, so it is not done; the file may also be damaged. Re-save its state "
            "dict (for example as .safetensors) in an environment you trust."
        ) from None
    except (OSError, EOFError, KeyError, RuntimeError, ValueError) as exc:  # what torch.load raises on damaged files
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a dict of tensors")
    bad = [repr(k) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} entries are not named tensors: {_first(bad, 10)}")
    return obj


def load_original_checkpoint(
    path: str | Path,
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
    *,
    vae_path: str | Path | None = None,
    allow_unexpected: bool = False,
) -> ConvertedCheckpoint:
    """Convert an original (LDM) SD-1.5 or reference-DiAD checkpoint; ``vae_path`` replaces its VAE.

    The configs are diffusers configs (``model.config`` or :func:`diffusers_configs_from_ldm`). A tensor that is
    neither converted nor a known extra raises :class:`CheckpointError` unless ``allow_unexpected``, which keeps
    it listed in ``LoadReport.unexpected`` instead.
    """
    path = Path(path)
    state = read_state_dict(path)
    report = LoadReport(path)
    groups: dict[str, StateDict] = {name: {} for name in _PREFIXES}
    unexpected: list[str] = []
    for key, value in state.items():
        name = next((n for n, prefix in _PREFIXES.items() if key.startswith(prefix)), None)
        if name is not None:
            groups[name][key] = value
        elif _SCHEDULE_RE.fullmatch(key):
            report.ignored.setdefault(IGNORED_SCHEDULE, []).append(key)
        else:
            unexpected.append(key)
    if not groups["unet"]:
        raise CheckpointError(f"{path}: no {UNET_PREFIX}* tensors: not an original (LDM) Stable Diffusion checkpoint")
    sources = {"unet": path}
    reports = [report]

    unet = _convert(report, "unet", groups["unet"], unexpected, lambda sd: convert_ldm_unet_checkpoint(sd, unet_config))

    if vae_path is not None:
        if groups["vae"]:
            report.ignored[IGNORED_VAE_REPLACED.format(name=vae_path)] = list(groups["vae"])
        vae, vae_report = load_vae_checkpoint(vae_path, vae_config, allow_unexpected=allow_unexpected)
        reports.append(vae_report)
        sources["vae"] = Path(vae_path)
    elif groups["vae"]:
        vae = _convert_vae(report, groups["vae"], VAE_PREFIX, vae_config, unexpected)
        sources["vae"] = path
    else:
        raise CheckpointError(f"{path}: no {VAE_PREFIX}* tensors; pass a VAE checkpoint as vae_path")

    text_encoder = None
    if groups["text_encoder"]:
        clip = groups["text_encoder"]
        if _POSITION_IDS in clip:
            report.ignored[IGNORED_POSITION_IDS] = [_POSITION_IDS]
            clip = {k: v for k, v in clip.items() if k != _POSITION_IDS}
        prefix = _clip_text_prefix()
        text_encoder = _convert(
            report,
            "text_encoder",
            clip,
            unexpected,
            lambda sd: {prefix + k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(sd).items()},
        )
        sources["text_encoder"] = path

    controlnet = sff = None
    if groups["controlnet"]:
        control = dict(groups["controlnet"])
        sff_source = {m[1]: control.pop(key) for key in list(control) if (m := _SFF_RE.fullmatch(key))}
        controlnet = _convert(
            report, "controlnet", control, unexpected, lambda sd: convert_controlnet_checkpoint(sd, unet_config)
        )
        sources["controlnet"] = path
        if sff_source:
            absent = sorted(CONTROL_PREFIX + f"{name}.0.weight" for name in SFF_KEY_MAP.keys() - sff_source.keys())
            if absent:
                raise CheckpointError(f"{path}: incomplete SFF block, missing {', '.join(absent)}")
            sff = {sff_key(*SFF_KEY_MAP[name]): tensor for name, tensor in sff_source.items()}
            report.consumed["sff"] = len(sff)
            sources["sff"] = path

    _settle(report, unexpected, allow_unexpected)
    return ConvertedCheckpoint(unet, vae, text_encoder, controlnet, sff, sources, reports)


def load_vae_checkpoint(
    path: str | Path, vae_config: Mapping[str, Any], *, allow_unexpected: bool = False
) -> tuple[StateDict, LoadReport]:
    """Convert a fine-tuned LDM autoencoder (keys bare or under ``first_stage_model.``; ``loss.*`` is ignored)."""
    path = Path(path)
    state = read_state_dict(path)
    report = LoadReport(path)
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in state) else ""
    group = {k: v for k, v in state.items() if k.startswith(prefix)}
    unexpected = [k for k in state if k not in group]
    vae = _convert_vae(report, group, prefix, vae_config, unexpected)
    _settle(report, unexpected, allow_unexpected)
    return vae, report


def load_diffusers_folder(path: str | Path) -> ConvertedCheckpoint:
    """State dicts of a diffusers folder's ``unet/``, ``vae/`` and optional ``text_encoder/``.

    Loaded with ``from_pretrained(local_files_only=True)``; any missing, unexpected or mismatched weight is an error.
    """
    root = Path(path)
    for sub in ("unet", "vae"):
        if not (root / sub).is_dir():
            raise CheckpointError(f"{root}: no {sub}/ folder (a diffusers folder holds unet/ and vae/)")
    report = LoadReport(root)
    unet = _from_pretrained(UNet2DConditionModel, root, "unet")
    vae = _from_pretrained(AutoencoderKL, root, "vae")
    text_encoder = None
    if (root / "text_encoder").is_dir():
        from transformers import CLIPTextModel

        text_encoder = _from_pretrained(CLIPTextModel, root, "text_encoder")
    tokenizer = root / "tokenizer" if (root / "tokenizer").is_dir() else None
    components = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    report.consumed = {name: len(sd) for name, sd in components.items() if sd is not None}
    other = sorted(p.name + "/" for p in root.iterdir() if p.is_dir() and p.name not in {*components, "tokenizer"})
    if other:
        report.ignored[IGNORED_FOLDERS] = other
    sources = {name: root / name for name, sd in components.items() if sd is not None}
    return ConvertedCheckpoint(unet, vae, text_encoder, None, None, sources, [report], tokenizer)


def strict_load(
    module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], component: str, source: str | Path, limit: int = 10
) -> None:
    """``module.load_state_dict(strict=True)``, failing with a readable :class:`CheckpointError` that names
    ``source`` and ``component`` and lists up to ``limit`` missing, unexpected and wrongly shaped keys."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} (checkpoint {_shape(state_dict[k])}, model {_shape(v)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        model = type(module).__name__
        lines = [
            f"{source}: the {component} tensors do not fit the {model} ({len(expected)} expected, {len(state_dict)} given)"
        ]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", wrong)):
            if keys:
                lines.append(f"  {len(keys)} {label}: {_first(keys, limit)}")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state_dict, strict=True)


def _convert(
    report: LoadReport,
    component: str,
    source: StateDict,
    unexpected: list[str],
    converter: Callable[[StateDict], Mapping[str, torch.Tensor | None]],
) -> StateDict:
    """Run a diffusers converter and record which source keys it used; the others go to ``unexpected``.

    The converter sees meta-device stand-ins, so every output tensor is a stand-in or a view of one, which names
    its source key. Only reshapes are accepted (the VAE's 1x1-conv attention weights become linear weights).
    A ``None`` output (the converter's ``dict.get`` of an absent key) is left out; :func:`strict_load` then
    reports that parameter as missing.
    """
    stand_ins = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in source.items()}
    owner = {id(t): k for k, t in stand_ins.items()}
    converted: StateDict = {}
    used: set[str] = set()
    for new_key, out in converter(stand_ins).items():
        if out is None:
            continue
        base = out if out._base is None else out._base
        key = owner.get(id(base))
        if key is None or out.storage_offset() != 0 or out.numel() != base.numel() or not out.is_contiguous():
            raise RuntimeError(f"the diffusers {component} converter made {new_key!r} by more than a reshape")
        converted[new_key] = source[key].reshape(out.shape)
        used.add(key)
    unexpected.extend(k for k in source if k not in used)
    report.consumed[component] = len(used)
    return converted


def _convert_vae(
    report: LoadReport, source: StateDict, prefix: str, vae_config: Mapping[str, Any], unexpected: list[str]
) -> StateDict:
    """Convert LDM autoencoder keys under ``prefix``, reporting the training loss (``loss.*``) as ignored."""
    loss = [k for k in source if k.startswith(prefix + "loss.")]
    if loss:
        report.ignored[IGNORED_AE_LOSS] = loss
    kept = {k: v for k, v in source.items() if not k.startswith(prefix + "loss.")}
    return _convert(report, "vae", kept, unexpected, lambda sd: convert_ldm_vae_checkpoint(sd, vae_config))


def _settle(report: LoadReport, unexpected: list[str], allow: bool) -> None:
    """Raise on unexpected source keys, or keep them in the report when ``allow``."""
    if unexpected and not allow:
        raise CheckpointError(
            f"{report.source}: {len(unexpected)} tensors are neither converted nor known extras: "
            f"{_first(sorted(unexpected), 10)}"
        )
    report.unexpected = sorted(unexpected)


def _from_pretrained(cls: Any, root: Path, subfolder: str) -> StateDict:
    """``cls.from_pretrained`` of one subfolder, offline, as a state dict; every loading problem is an error."""
    try:
        model, info = cls.from_pretrained(root, subfolder=subfolder, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"{root / subfolder}: cannot load {cls.__name__} ({exc})") from None
    problems = [f"{len(v)} {k.replace('_', ' ')}: {_first(sorted(map(str, v)), 10)}" for k, v in info.items() if v]
    if problems:
        raise CheckpointError(f"{root / subfolder}: the weights do not fit {cls.__name__}: " + "; ".join(problems))
    return model.state_dict()


@functools.cache
def _clip_text_prefix() -> str:
    """``"text_model."`` when the installed CLIPTextModel wraps a CLIPTextTransformer (transformers < 5.6), else ``""``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        model = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=8,
                intermediate_size=8,
                num_hidden_layers=1,
                num_attention_heads=1,
                vocab_size=8,
                max_position_embeddings=8,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    return "text_model." if hasattr(model, "text_model") else ""


def _first(items: list[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items) - limit} more)"


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"
