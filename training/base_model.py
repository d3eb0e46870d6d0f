"""The base model a preset starts from: for ``tiny``, a VAE + UNet pretrained on generated images and shipped here.

DiAD fine-tunes SD-1.5 (``python -m training.build_model`` reads it for ``sd15``). ``tiny`` has no such model to
download, so the repository ships its own stand-in: ``training/models/base/tiny.safetensors`` (fp16; the VAE, the
UNet and the constant context), pretrained on :mod:`training.generic_images` by the commands in
``training/models/base/MODEL_CARD.md``. A new ``tiny`` run starts from it (``--init base``, the default of both
training commands), with the SG network's encoder copied from the UNet as ``build_model`` does from SD-1.5;
``--init scratch`` starts from random weights (how the base itself was trained).

    python -m training.base_model --run RUN --out training/models/base/tiny.safetensors

writes a run's VAE and UNet as a base model (fp16 safetensors, the model config and the run's training record in
its metadata).
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from runtime.cli import run_cli
from runtime.errors import CheckpointError
from training.models.diad import DiAD
from training.run_folder import RunFolder

BASE_DIR = Path(__file__).parent / "models" / "base"
BASE_MODELS = {"tiny": BASE_DIR / "tiny.safetensors"}
INITS = ("base", "scratch")
METADATA_KEY = "diad_edge_base"
PARTS = {"vae": lambda m: m.vae.autoencoder, "unet": lambda m: m.unet}


def default_init(preset: str) -> str:
    """``base`` where the preset ships a base model, else ``scratch``."""
    return "base" if preset in BASE_MODELS else "scratch"


def _graph(model: DiAD) -> dict[str, Any]:
    """What a base model must agree on with the model it is loaded into."""
    config = model.config
    graph = {"vae": asdict(config.vae), "unet": asdict(config.unet), "context": config.context,
             "context_seed": config.context_seed, "image_size": config.image_size}
    return json.loads(json.dumps(graph))  # as a file's metadata reads back: tuples become lists


def _size_free(graph: dict[str, Any]) -> dict[str, Any]:
    """``graph`` without its image and latent sizes: the networks are fully convolutional (no position
    embeddings), so a base model loads into a model of the same layers at any image size."""
    return {**{k: v for k, v in graph.items() if k != "image_size"},
            "unet": {k: v for k, v in graph["unet"].items() if k != "sample_size"}}


def write_base(model: DiAD, path: str | Path, record: dict[str, Any]) -> Path:
    """Save ``model``'s VAE, UNet and context in fp16 (context in fp32), atomically."""
    path = Path(path)
    tensors = {
        f"{part}.{key}": value.detach().to(torch.float16).contiguous()
        for part, module in PARTS.items()
        for key, value in module(model).state_dict().items()
    }
    tensors["context"] = model.context.detach().float().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps({"graph": _graph(model), "record": record})})
    os.replace(tmp, path)
    return path


def read_base(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the metadata of a base model file; :class:`CheckpointError` names a bad file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: base model not found; it is part of the repository (git checkout -- {path}), or start "
            "from random weights with --init scratch"
        )
    try:
        with safe_open(str(path), "pt") as f:
            info = json.loads((f.metadata() or {})[METADATA_KEY])
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable base model ({type(exc).__name__}: {exc})") from None
    return tensors, info


def load_base(model: DiAD, path: str | Path) -> dict[str, Any]:
    """Load a base model into ``model`` (strict, any image size; the SG encoder copied from the UNet); returns
    its record."""
    tensors, info = read_base(path)
    if _size_free(info["graph"]) != _size_free(_graph(model)):
        raise CheckpointError(
            f"{path}: made for another model ({json.dumps(info['graph'])}); this run's model is "
            f"{json.dumps(_graph(model))}"
        )
    for part, module in PARTS.items():
        own = module(model).state_dict()
        state = {k[len(part) + 1 :]: v.to(own[k[len(part) + 1 :]].dtype) for k, v in tensors.items()
                 if k.startswith(f"{part}.") and k[len(part) + 1 :] in own}
        missing = sorted(set(own) - set(state))
        if missing:
            raise CheckpointError(f"{path}: {part} tensors missing, e.g. {missing[:3]}")
        module(model).load_state_dict(state)
    model.context.copy_(tensors["context"])
    model.sg.copy_encoder_from(model.unet)
    return info["record"]


def initialise(model: DiAD, run: RunFolder, config: dict[str, Any], init: str) -> str:
    """Bring a freshly built ``model`` to where a run starts: the run's ``model.safetensors`` when it has one,
    else the preset's base model (``init="base"``) or random weights (``"scratch"``). Records the start in
    ``config`` (``unet_pretrained``, ``base``) and returns a line saying where it started."""
    if run.load_weights_into(model):
        return f"continuing from {run.model_path}"
    if init not in INITS:
        raise ValueError(f"init {init!r}: expected one of {INITS}")
    name = model.config.name
    if init == "scratch":
        config["unet_pretrained"] = False
        return "starting from random weights (--init scratch)"
    if name not in BASE_MODELS:
        raise CheckpointError(
            f"preset {name!r} ships no base model; start from SD-1.5 (python -m training.build_model --checkpoint "
            "v1-5-pruned.ckpt --out RUN) or from random weights (--init scratch)"
        )
    record = load_base(model, BASE_MODELS[name])
    config["unet_pretrained"] = True
    config["base"] = {"file": str(BASE_MODELS[name]), "record": record}
    return f"starting from the {name} base model {BASE_MODELS[name]} (VAE + UNet pretrained on generated images)"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a run's VAE and UNet as a base model (fp16 safetensors).")
    p.add_argument("--run", required=True, help="run folder whose VAE and UNet were pretrained (--init scratch)")
    p.add_argument("--out", required=True, help="base model file to write, e.g. training/models/base/tiny.safetensors")
    args = p.parse_args(argv)
    run = RunFolder(args.run)
    model = run.load_model("cpu")
    config = run.read_config()
    record = {key: config.get(key) for key in ("autoencoder", "autoencoder_trained", "train", "trained", "data")}
    path = write_base(model, args.out, record)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    run_cli(main)
