"""A tiny real model folder: five ONNX graphs of a few nodes (8x8 images, 4x4x4 latents, 3 DDIM steps), the draw
graphs :mod:`export.draw_graphs` writes (no torch) and a manifest as ``export`` writes one, for tests that need a
folder in milliseconds rather than the tiny DiAD export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.draw_graphs import write_draw_graphs
from runtime.manifest import FORMAT, FORMAT_VERSION, Manifest, file_entry
from runtime.schedule import ddim_plan

S, LATENT, MAX_BATCH = 8, (4, 4, 4), 4


def graph(nodes: list, inputs: dict, outputs: dict, weights: dict, fp16: bool) -> onnx.ModelProto:
    """A graph with float32 I/O; with ``fp16`` its body and float weights are float16 between Casts."""
    if fp16:
        io = set(inputs) | set(outputs)
        for node in nodes:
            node.input[:] = [f"{n}_16" if n in io else n for n in node.input]
            node.output[:] = [f"{n}_16" if n in io else n for n in node.output]
        to16 = [helper.make_node("Cast", [n], [f"{n}_16"], to=TensorProto.FLOAT16, name=f"cast_{n}") for n in inputs]
        to32 = [helper.make_node("Cast", [f"{n}_16"], [n], to=TensorProto.FLOAT, name=f"cast_{n}") for n in outputs]
        nodes = to16 + nodes + to32
    dtype = np.float16 if fp16 else np.float32
    init = [numpy_helper.from_array(w.astype(dtype) if w.dtype.kind == "f" else w, k) for k, w in weights.items()]
    body = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()],
        init,
    )
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _components(fp16: bool) -> dict[str, tuple[onnx.ModelProto, dict]]:
    rng = np.random.default_rng(0)
    image, latent, vec = ["B", 3, S, S], ["B", *LATENT], ["B"]

    def w(*shape: int) -> np.ndarray:
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)

    n = helper.make_node
    specs = {
        "vae_encoder": (
            [n("Conv", ["image", "we", "be"], ["latent"], strides=[2, 2], name="enc_conv")],
            {"image": image}, {"latent": latent}, {"we": w(4, 3, 2, 2), "be": w(4)},
        ),
        "hint_encoder": (
            [n("Conv", ["image", "wh"], ["h"], strides=[2, 2], name="hint_conv"), n("Relu", ["h"], ["hint"])],
            {"image": image}, {"hint": latent}, {"wh": w(4, 3, 2, 2)},
        ),
        "denoise_step": (
            [
                n("Add", ["x_t", "hint"], ["a"]),
                n("Conv", ["a", "wd"], ["c"], pads=[1, 1, 1, 1], name="step_conv"),
                n("Tanh", ["c"], ["eps"]),
                n("Reshape", ["alpha_t", "col"], ["at"]),
                n("Reshape", ["alpha_prev", "col"], ["ap"]),
                n("Reshape", ["timestep", "col"], ["t"]),
                n("Mul", ["eps", "ap"], ["m1"]),
                n("Mul", ["x_t", "at"], ["m2"]),
                n("Mul", ["t", "k"], ["m3"]),
                n("Add", ["m1", "m2"], ["s"]),
                n("Add", ["s", "m3"], ["x_prev"]),
            ],
            {"x_t": latent, "hint": latent, "timestep": vec, "alpha_t": vec, "alpha_prev": vec},
            {"x_prev": latent},
            {"wd": w(4, 4, 3, 3), "col": np.array([-1, 1, 1, 1], np.int64), "k": np.array(1e-3, np.float32)},
        ),
        "vae_decoder": (
            [n("ConvTranspose", ["latent", "wt"], ["image"], strides=[2, 2], name="dec_convt")],
            {"latent": latent}, {"image": image}, {"wt": w(4, 3, 2, 2)},
        ),
        "scorer": (
            [
                n("Sub", ["image", "reconstruction"], ["d"]),
                n("Abs", ["d"], ["e"]),
                n("ReduceMean", ["e"], ["anomaly_map"], axes=[1], keepdims=0),
                n("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2], keepdims=0),
            ],
            {"image": image, "reconstruction": image}, {"anomaly_map": ["B", S, S], "score": vec}, {},
        ),
    }
    return {
        name: (graph(nodes, inputs, outputs, weights, fp16), {"inputs": inputs, "outputs": outputs})
        for name, (nodes, inputs, outputs, weights) in specs.items()
    }


def make_folder(root: Path, precision: str = "fp32", draws: int = 1, draw_graphs: bool = True) -> Manifest:
    """A valid model folder of tiny real ONNX graphs (8x8 images, 4x4x4 latents, 3 DDIM steps, ``draws`` noise
    draws per image); without ``draw_graphs`` as exported before the draw graphs (noising on the host)."""
    root.mkdir(parents=True)
    entries = {}
    for name, (model, io) in _components(precision == "fp16").items():
        onnx.save(model, str(root / f"{name}.onnx"))
        entries[name] = {**file_entry(root, f"{name}.onnx"), "external_data": [], **io}
    if draw_graphs:
        entries |= write_draw_graphs(root, S, LATENT, LATENT, draws)
    data = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "image_size": S,
        "latent_shape": list(LATENT),
        "hint_shape": list(LATENT),
        "precision": precision,
        "max_batch": MAX_BATCH,
        "schedule": ddim_plan(3, 399).to_dict(),
        "noise": {"policy": "fixed", "seed": 0, "draws": draws},
        "components": entries,
        "engines": {},
    }
    Manifest(root, data).save()
    return Manifest.load(root)
