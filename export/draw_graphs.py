"""The two graphs that keep a batch's noise draws on the device, ``noise_latents`` and ``mean_of_draws``
(:data:`runtime.component_io.DRAW_COMPONENTS`), built with ``onnx.helper``.

They hold no weights, only the arithmetic of :func:`runtime.schedule.noise_latents` (``q_sample`` with the
plan's float32 coefficients as inputs) and :func:`runtime.schedule.mean_of_draws` for one latent shape and number
of draws K, so neither torch nor the run folder is needed to make them. Their tensors are image-major,
``(B, K, ...)``: flattened, row ``b * K + k`` is image ``b`` with draw ``k``, so the images stay on axis 0 as in
every other component and the denoiser runs on the ``B * K`` rows in place. They are FP32 in every folder.

``python -m export`` writes them into every model folder; this command adds them to a folder exported before
them (the TensorRT backend needs them; ONNX Runtime noises such a folder on the host)::

    python -m export.draw_graphs --model models/bottle
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from runtime.cli import run_cli
from runtime.component_io import COMPONENT_IO, DRAW_COMPONENTS, expected_tensors, noise_inputs
from runtime.manifest import MANIFEST, Manifest, component_entry
from runtime.schedule import draws_per_image, mean_of_draws, noise_latents

OPSET = 17  # ReduceMean takes its axes as an attribute up to opset 17


def _model(name: str, nodes: list, io: dict[str, dict[str, list]], constants: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A checked FP32 graph of ``nodes`` whose inputs and outputs are the manifest's ``io`` (batch axis ``"B"``)."""
    def values(side: str) -> list:
        return [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in io[side].items()]

    graph = helper.make_graph(nodes, name, values("inputs"), values("outputs"),
                              [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="diad-edge")
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def noise_latents_graph(io: dict[str, dict[str, list]], draws: int) -> onnx.ModelProto:
    """``x_t = signal * latent + spread * noise`` per image and draw, and the hint repeated once per draw."""
    node = helper.make_node
    nodes = [
        node("Reshape", ["signal", "per_image"], ["signal_5d"]),
        node("Reshape", ["spread", "per_image"], ["spread_5d"]),
        node("Unsqueeze", ["latent", "draw_axis"], ["latent_5d"]),
        node("Mul", ["signal_5d", "latent_5d"], ["signal_part"]),
        node("Mul", ["spread_5d", "noise"], ["noise_part"]),
        node("Add", ["signal_part", "noise_part"], ["x_t"]),
        node("Unsqueeze", ["hint", "draw_axis"], ["hint_5d"]),
        node("Expand", ["hint_5d", "per_draw"], ["hints"]),
    ]
    constants = {"per_image": np.array([-1, 1, 1, 1, 1], np.int64), "draw_axis": np.array([1], np.int64),
                 "per_draw": np.array([1, draws, 1, 1, 1], np.int64)}
    return _model("noise_latents", nodes, io, constants)


def mean_of_draws_graph(io: dict[str, dict[str, list]]) -> onnx.ModelProto:
    """Per image, the mean of its draws' sample latents."""
    nodes = [helper.make_node("ReduceMean", ["samples"], ["mean"], axes=[1], keepdims=0)]
    return _model("mean_of_draws", nodes, io, {})


def write_draw_graphs(
    root: Path, image_size: int, latent_shape: Sequence[int], hint_shape: Sequence[int], draws: int
) -> dict[str, dict[str, Any]]:
    """Write both graphs into ``root`` as ``<name>.onnx``; their manifest entries (file, size, hash, tensors)."""
    tensors = expected_tensors(image_size, latent_shape, hint_shape, draws)
    graphs = {"noise_latents": noise_latents_graph(tensors["noise_latents"], draws),
              "mean_of_draws": mean_of_draws_graph(tensors["mean_of_draws"])}
    entries = {}
    for name, model in graphs.items():
        onnx.save_model(model, str(root / f"{name}.onnx"))
        entries[name] = component_entry(root, [f"{name}.onnx"], tensors[name])
    return entries


def draw_parity(manifest: Manifest, batch: int = 3, seed: int = 0) -> dict[str, tuple[float, float]]:
    """The folder's draw graphs on ONNX Runtime's CPU provider against :mod:`runtime.schedule`'s numpy, on random
    latents and hints with the folder's draws and plan: per output, ``(max |graph - numpy|, max |numpy|)``.
    ``noise_latents.x_t`` (image-major) against :func:`noise_latents`, ``noise_latents.hints`` against the hint
    once per draw, ``mean_of_draws`` against :func:`mean_of_draws`."""
    def run(name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = ort.InferenceSession(str(manifest.path(name)), providers=["CPUExecutionProvider"])
        return session.run(list(COMPONENT_IO[name].outputs), feeds)

    rng = np.random.default_rng(seed)
    plan, noise, draws = manifest.step_plan(), manifest.noise(), manifest.draws
    latent = rng.standard_normal((batch, *manifest.latent_shape), dtype=np.float32)
    hint = rng.standard_normal((batch, *manifest.hint_shape), dtype=np.float32)
    x_t, hints = run("noise_latents", {"latent": latent, "hint": hint, "noise": draws_per_image(noise, batch),
                                       **noise_inputs(plan, batch)})
    noised = noise_latents(latent, noise, plan.start_alpha)  # draw-major: row k * B + b
    pairs = {
        "noise_latents.x_t": (x_t.swapaxes(0, 1).reshape(noised.shape), noised),
        "noise_latents.hints": (hints, np.repeat(hint[:, None], draws, axis=1)),
        "mean_of_draws": (run("mean_of_draws", {"samples": x_t})[0], mean_of_draws(noised, draws)),
    }
    return {name: (float(np.abs(a - b).max()), float(np.abs(b).max())) for name, (a, b) in pairs.items()}


def add_draw_graphs(model: str | Path) -> Manifest:
    """Write the draw graphs into model folder ``model`` for its latent shape and draws and list them in its
    manifest (replacing any there, and the engines built from them)."""
    manifest = Manifest.load(model)
    data = manifest.data
    entries = write_draw_graphs(manifest.root, manifest.image_size, manifest.latent_shape, manifest.hint_shape,
                                manifest.draws)
    data["components"].update(entries)
    for name in DRAW_COMPONENTS:
        data.get("engines", {}).pop(name, None)
    manifest.save()
    return Manifest.load(manifest.root)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.draw_graphs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help=f"model folder (with {MANIFEST}) to add the graphs to")
    args = parser.parse_args(argv)
    manifest = add_draw_graphs(args.model)
    for name in DRAW_COMPONENTS:
        io = COMPONENT_IO[name]
        print(f"{manifest.root / manifest.component(name)['file']}: {', '.join(io.inputs)} -> {', '.join(io.outputs)}")
    print(f"{manifest.draws} noise draw(s) per image, latents {list(manifest.latent_shape)}. TensorRT engines for "
          f"them: python -m export.tensorrt --model {manifest.root} --components {','.join(DRAW_COMPONENTS)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
