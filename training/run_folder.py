"""A run folder: ``config.json``, ``checkpoints/*.safetensors``, ``logs/``, ``metrics.*`` and ``images/``.

Checkpoints are safetensors only (no pickle). A training checkpoint holds the model tensors, the optimiser
state flattened to tensors, the random-number-generator states and a JSON metadata block, and is written
atomically (temporary file + ``os.replace``), so a run killed mid-write keeps its previous checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from runtime.errors import CheckpointError
from training.models.diad import DiAD, build_model
from training.models.presets import ModelConfig, get_preset

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
LAST = "last.safetensors"
MODEL = "model.safetensors"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class TrainingState:
    """What ``--resume`` needs: model tensors, optimiser state, RNG states, step counters."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, scalars in info["scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    return {"state": state, "param_groups": info["param_groups"]}


def save_state(path: Path, state: TrainingState) -> None:
    """Write a training checkpoint atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state.model.items()}
    meta = dict(state.meta)
    if state.optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(state.optimizer)
        tensors.update(opt_tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"diad_edge": json.dumps(meta)})
    os.replace(tmp, path)


def load_state(path: Path) -> TrainingState:
    """Read a checkpoint written by :func:`save_state`; :class:`CheckpointError` names a bad file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        tensors = load_file(str(path))

        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("diad_edge", "{}"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer = None
    if "optimizer" in meta:
        opt = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
        optimizer = _unflatten_optimizer(opt, meta.pop("optimizer"))
    return TrainingState(model=model, optimizer=optimizer, meta=meta)


class RunFolder:
    """The files of one training run."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    def create(self) -> RunFolder:
        for sub in (CHECKPOINTS, "logs", "images"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        return self

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.root / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def read_config(self) -> dict[str, Any]:
        path = self.root / CONFIG
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: not a run folder (config.json missing)") from None
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: corrupt config ({exc})") from None

    @property
    def model_path(self) -> Path:
        return self.root / MODEL

    def existing_config(self) -> dict[str, Any]:
        """``config.json`` if the run has one yet, else an empty dict."""
        return self.read_config() if (self.root / CONFIG).exists() else {}

    def config_or_preset(self, preset: str, image_size: int | None = None) -> tuple[ModelConfig, dict[str, Any]]:
        """The run's model config (or the preset's for a new run, at ``image_size`` px when given) and the whole
        ``config.json`` dict; a :class:`CheckpointError` when the run exists at another image size."""
        config = self.existing_config()
        if "model" not in config:
            model = get_preset(preset)
            try:
                return (model if image_size is None else model.at_image_size(image_size)), config
            except ValueError as exc:
                raise CheckpointError(f"{self.root}: --image-size: {exc}") from None
        model = ModelConfig.from_dict(config["model"])
        if image_size is not None and image_size != model.image_size:
            raise CheckpointError(f"{self.root / CONFIG}: this run is at {model.image_size} px, not --image-size "
                                  f"{image_size}; give another --out or leave --image-size out")
        return model, config

    def load_weights_into(self, model: DiAD) -> bool:
        """Load ``model.safetensors`` into ``model`` if the run has one (from build_model or an earlier stage)."""
        if not self.model_path.exists():
            return False
        model.load_state_dict(load_state(self.model_path).model, strict=True)
        return True

    def model_config(self) -> ModelConfig:
        """The model section of ``config.json``."""
        config = self.read_config()
        if "model" not in config:
            raise CheckpointError(f"{self.root / CONFIG}: no 'model' section (not a DiAD run folder)")
        return ModelConfig.from_dict(config["model"])

    def save_model(self, model: DiAD) -> None:
        """Write the full model weights (context buffer included) to ``model.safetensors``, atomically."""
        save_state(self.model_path, TrainingState(model.state_dict()))

    def load_model(self, device: str | torch.device = "cpu") -> DiAD:
        """The run's DiAD with its ``model.safetensors`` weights, loaded strictly."""
        state = load_state(self.model_path).model
        model = build_model(self.model_config(), device="cpu", context=state.get("context"))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{self.model_path}: weights do not fit the run's model config: {exc}") from None
        return model.to(device).eval()

    def last_checkpoint(self) -> Path | None:
        path = self.checkpoints / LAST
        return path if path.is_file() else None

    def append_log(self, name: str, row: dict[str, Any]) -> None:
        """Append one row to ``logs/<name>.csv`` (header written with the first row; later rows follow the
        header's column order, so a resumed run keeps its columns aligned)."""
        path = self.root / "logs" / f"{name}.csv"
        fields = list(row)
        if path.exists():
            with path.open(newline="") as f:
                header = next(csv.reader(f), [])
            fields = header if sorted(header) == sorted(fields) else fields
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if f.tell() == 0:
                writer.writeheader()
            writer.writerow(row)

    def truncate_log(self, name: str, step: int) -> None:
        """Drop the rows of ``logs/<name>.csv`` after ``step``, and a row a kill cut short: a run resumed from its
        step-``step`` checkpoint logs those steps again. Rewritten atomically."""
        path = self.root / "logs" / f"{name}.csv"
        if not path.is_file():
            return
        with path.open(newline="") as f:
            lines = f.readlines()
        complete = [line for line in lines if line.endswith("\n")]
        if not complete:
            return
        column = next(csv.reader(complete[:1])).index("step")
        kept = complete[:1] + [line for line in complete[1:] if int(next(csv.reader([line]))[column]) <= step]
        if kept != lines:
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("w", newline="") as f:
                f.writelines(kept)
            os.replace(tmp, path)
