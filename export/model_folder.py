"""Run folder -> model folder: the five ONNX graphs of the model (FP32 or FP16), the two weight-free graphs that
keep the noise draws on the device (:mod:`export.draw_graphs`, FP32) and ``manifest.json``."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from export.draw_graphs import write_draw_graphs
from export.fp16 import to_fp16
from export.graphs import Component, components, example_shapes, fp32_scopes
from export.onnx import DEFAULT_OPSET, check, export_component, save
from runtime.errors import ModelFolderError
from runtime.component_io import expected_tensors
from runtime.manifest import MANIFEST, Manifest, component_entry, write_manifest
from runtime.schedule import DDIMPlan, ddim_plan
from training.models.diad import DiAD
from training.models.presets import ModelConfig
from training.models.scorer import FeatureScorer

EXPORT_PRECISIONS = ("fp32", "fp16")  # int8 folders are made from FP32 ones: export.quantize
LIBRARIES = ("diad-edge", "torch", "diffusers", "timm", "onnx", "onnxruntime")


@dataclass
class ExportedComponent:
    name: str
    files: list[Path]
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def check_options(precision: str, max_batch: int, opset: int, draws: int | None = None) -> None:
    """Reject export options that cannot give a working model folder (``ValueError`` naming the option)."""
    if draws is not None and draws < 1:
        raise ValueError(f"draws {draws}: expected at least 1")
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {EXPORT_PRECISIONS} (int8: export.quantize)")
    if max_batch < 1:
        raise ValueError(f"max_batch {max_batch}: expected at least 1")
    if opset < 17:
        raise ValueError(f"opset {opset}: LayerNormalization needs opset 17 or later")


def export_plan(config: ModelConfig, steps: int | None = None, start_t: int | None = None) -> DDIMPlan:
    """The DDIM plan a model folder records: ``steps`` / ``start_t`` or, where ``None``, the run's own (``steps``
    0: the VAE-only plan; the folder still holds every graph, so the runtime's ``steps=N`` can switch back)."""
    return ddim_plan(
        config.inference.steps if steps is None else steps, config.inference.start_t if start_t is None else start_t
    )


def check_out(out: str | Path) -> Path:
    """``out`` as a path the export may write: absent, an empty folder or a model folder (replaced).

    Raises :class:`ModelFolderError` for anything else (a file, a folder with other contents, a parent that is
    not a folder), so that nothing is exported only to be refused at the end.
    """
    out = Path(out)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ModelFolderError(f"{parent}: not a folder; expected a folder to write the model folder {out} in")
            break
    if not out.exists():
        return out
    if not out.is_dir():
        raise ModelFolderError(f"{out}: exists and is not a folder; expected a new path or a model folder to replace")
    if not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise ModelFolderError(
            f"{out}: exists, is not empty and has no {MANIFEST}; expected a new path, an empty folder or a model "
            "folder to replace"
        )
    return out


def export_one(component: Component, out: Path, precision: str, opset: int) -> ExportedComponent:
    """Export one component to ``out/<name>.onnx`` (FP16: converted from the FP32 export, then re-checked)."""
    start = time.perf_counter()
    path = out / f"{component.name}.onnx"
    files = export_component(component, path, opset)
    if precision == "fp16":
        files = save(to_fp16(path, fp32_scopes(component.module)), path)
        check(path)
    return ExportedComponent(component.name, files, time.perf_counter() - start)


def statistics_record(scorer: FeatureScorer) -> dict[str, Any] | None:
    """The manifest's record of the scorer's normal statistics (None without)."""
    statistics = scorer.statistics
    if statistics is None:
        return None
    info, settings = statistics.info, statistics.settings
    plan = {"steps": int(info["steps"]), "start_t": 0 if info["steps"] == 0 else int(info["start_t"]),
            "draws": int(info["draws"])}
    record = {"kind": settings.kind, "scope": settings.scope, "channels": settings.channels, "plan": plan}
    return {**record, **{k: info[k] for k in ("images", "data") if k in info}}


def export_graphs(
    model: DiAD, scorer: FeatureScorer, out: Path, precision: str, opset: int, draws: int, progress: bool
) -> tuple[list[ExportedComponent], dict[str, dict], dict[str, list[int]]]:
    """Every graph of a model folder into ``out``: the model's five and the draw graphs for ``draws``. Returns the
    model's exports, every graph's manifest entry and the per-image shape of each kind of tensor
    (:func:`export.graphs.example_shapes`)."""
    model.eval()
    graphs = components(model, scorer)
    exported = [export_one(c, out, precision, opset) for c in tqdm(graphs, desc="export", disable=not progress)]
    shapes = example_shapes(graphs)
    latent_shape, hint_shape = shapes["latent"], shapes["hint"]
    tensors = expected_tensors(model.config.image_size, latent_shape, hint_shape, draws)
    entries = {e.name: component_entry(out, [f.name for f in e.files], tensors[e.name]) for e in exported}
    entries |= write_draw_graphs(out, model.config.image_size, latent_shape, hint_shape, draws)
    return exported, entries, shapes


def fresh_partial(out: Path) -> Path:
    """``out.partial``, emptied: where the model folder is written before it is renamed to ``out``."""
    partial = out.with_name(out.name + ".partial")
    if partial.is_dir():
        shutil.rmtree(partial)
    elif partial.exists():
        partial.unlink()
    partial.mkdir(parents=True)
    return partial


def write_model_folder(
    model: DiAD,
    scorer: FeatureScorer,
    out: str | Path,
    precision: str = "fp32",
    max_batch: int = 8,
    steps: int | None = None,
    start_t: int | None = None,
    opset: int = DEFAULT_OPSET,
    source: str = "",
    progress: bool = True,
    draws: int | None = None,
) -> tuple[Manifest, list[ExportedComponent]]:
    """Export ``model`` + ``scorer`` into ``out`` and write its manifest; returns it with per-component figures.
    ``steps`` / ``start_t`` / ``draws`` (noise draws per image) default to the model's config.

    The folder is written under ``out.partial`` and renamed at the end, so an interrupted export never leaves a
    folder that looks complete. Options are checked first (``ValueError``, :func:`check_out`'s
    :class:`ModelFolderError`), before anything is exported.
    """
    check_options(precision, max_batch, opset, draws)
    out = check_out(out)
    config = model.config
    plan = export_plan(config, steps, start_t)
    draws = config.inference.draws if draws is None else draws
    partial = fresh_partial(out)
    exported, entries, shapes = export_graphs(model, scorer, partial, precision, opset, draws, progress)
    write_manifest(
        partial, preset=config.name, image_size=config.image_size, latent_shape=shapes["latent"],
        hint_shape=shapes["hint"], injection=model.sg.injection, precision=precision, opset=opset,
        max_batch=max_batch, plan=plan, noise_seed=config.inference.noise_seed,
        draws=draws, backbone=config.scorer.backbone, layers=config.scorer.layers, weights=scorer.weights,
        statistics=statistics_record(scorer), components=entries, versions=library_versions(), source=source,
    )
    if check_out(out).exists():  # checked again: the folder may have changed during the export
        shutil.rmtree(out)
    partial.rename(out)
    exported = [ExportedComponent(e.name, [out / f.name for f in e.files], e.seconds) for e in exported]
    return Manifest.load(out), exported
