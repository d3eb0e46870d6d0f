"""The graphs of a model folder and their tensors (:data:`COMPONENT_IO`; batch axis ``B`` dynamic, all I/O float32
even in an FP16 model folder), one table for the exporter, the manifest and the backends; torch-free.

* ``vae_encoder``: ``image`` (B, 3, S, S) ImageNet-normalised -> ``latent`` (B, C, s, s), posterior mean x the VAE's
  scaling factor
* ``hint_encoder``: ``image`` -> ``hint`` (B, C, s, s), the SG network's encoded hint (once per image)
* ``denoise_step``: ``x_t``, ``hint``, ``timestep`` (B,), ``alpha_t`` (B,), ``alpha_prev`` (B,) -> ``x_prev``:
  SG network + UNet + the DDIM update, one call per step
* ``vae_decoder``: ``latent`` -> ``image``
* ``scorer``: ``image``, ``reconstruction`` -> ``anomaly_map`` (B, S, S), ``score`` (B,)

and, in folders exported since the noise draws stay on the device (:data:`DRAW_COMPONENTS`; older folders lack
them and still load), two graphs without weights that fan a batch out to its ``K`` noise draws and back
(:mod:`export.draw_graphs`; the arithmetic of :func:`runtime.schedule.noise_latents` and
:func:`runtime.schedule.mean_of_draws`, image-major):

* ``noise_latents``: ``latent``, ``hint``, ``noise`` (B, K, C, s, s), ``signal`` (B,), ``spread`` (B,) ->
  ``x_t`` (B, K, C, s, s) ``signal * latent + spread * noise``, ``hints`` (B, K, *hint) the hint once per draw
* ``mean_of_draws``: ``samples`` (B, K, C, s, s) -> ``mean`` (B, C, s, s)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.schedule import DDIMPlan

BATCH_AXIS = "B"


@dataclass(frozen=True)
class ComponentIO:
    """A component's input and output tensors in its graph's order: name -> kind of shape (:func:`tensor_shapes`)."""

    inputs: dict[str, str]
    outputs: dict[str, str]

    def named_inputs(self, *values: Any) -> dict[str, Any]:
        """``values`` given in the table's input order, by input name."""
        return dict(zip(self.inputs, values, strict=True))

    def named_outputs(self, *values: Any) -> dict[str, Any]:
        """``values`` given in the table's output order, by output name."""
        return dict(zip(self.outputs, values, strict=True))

    @property
    def tensors(self) -> dict[str, str]:
        """Inputs, then outputs: name -> kind."""
        return {**self.inputs, **self.outputs}

    def of_kind(self, kind: str, side: str = "inputs") -> tuple[str, ...]:
        """The names of the ``side`` (``"inputs"`` or ``"outputs"``) tensors of shape kind ``kind``."""
        return tuple(name for name, k in getattr(self, side).items() if k == kind)

    def only(self, kind: str, side: str = "inputs") -> str:
        """The name of the one ``side`` tensor of kind ``kind``."""
        (name,) = self.of_kind(kind, side)
        return name


# The one table of components and their tensors: the exporter names the graphs' I/O from it, the manifest's
# expected tensors, the ONNX Runtime and TensorRT bindings and the checks all follow it. Kinds: "image"
# (B, 3, S, S), "latent" (B, *latent_shape), "hint" (B, *hint_shape), "map" (B, S, S), "vector" (B,), "step":
# a (B,) input taken from the DDIM plan (:func:`schedule_inputs`, :func:`noise_inputs`), and per image one of each
# of its K noise draws: "draws" (B, K, *latent_shape), "hint_draws" (B, K, *hint_shape).
COMPONENT_IO = {
    "vae_encoder": ComponentIO({"image": "image"}, {"latent": "latent"}),
    "hint_encoder": ComponentIO({"image": "image"}, {"hint": "hint"}),
    "denoise_step": ComponentIO(
        {"x_t": "latent", "hint": "hint", "timestep": "step", "alpha_t": "step", "alpha_prev": "step"},
        {"x_prev": "latent"},
    ),
    "vae_decoder": ComponentIO({"latent": "latent"}, {"image": "image"}),
    "scorer": ComponentIO({"image": "image", "reconstruction": "image"}, {"anomaly_map": "map", "score": "vector"}),
    "noise_latents": ComponentIO(
        {"latent": "latent", "hint": "hint", "noise": "draws", "signal": "step", "spread": "step"},
        {"x_t": "draws", "hints": "hint_draws"},
    ),
    "mean_of_draws": ComponentIO({"samples": "draws"}, {"mean": "latent"}),
}
DRAW_COMPONENTS = ("noise_latents", "mean_of_draws")  # optional: folders exported before them lack both
COMPONENTS = tuple(name for name in COMPONENT_IO if name not in DRAW_COMPONENTS)  # in every model folder
SCHEDULE_INPUTS = COMPONENT_IO["denoise_step"].of_kind("step")  # timestep, alpha_t, alpha_prev
NOISE_INPUTS = COMPONENT_IO["noise_latents"].of_kind("step")  # signal, spread: sqrt(a), sqrt(1 - a) at start_t


def tensor_shapes(
    image_size: int, latent_shape: Sequence[int], hint_shape: Sequence[int], draws: int = 1
) -> dict[str, list]:
    """Per kind of tensor (:data:`COMPONENT_IO`), its shape with the batch axis written ``"B"`` (``draws``: the
    noise draws per image, K)."""
    return {
        "image": [BATCH_AXIS, 3, image_size, image_size],
        "latent": [BATCH_AXIS, *latent_shape],
        "hint": [BATCH_AXIS, *hint_shape],
        "map": [BATCH_AXIS, image_size, image_size],
        "vector": [BATCH_AXIS],
        "step": [BATCH_AXIS],
        "draws": [BATCH_AXIS, draws, *latent_shape],
        "hint_draws": [BATCH_AXIS, draws, *hint_shape],
    }


def expected_tensors(
    image_size: int, latent_shape: Sequence[int], hint_shape: Sequence[int], draws: int = 1
) -> dict[str, dict]:
    """Per component (:data:`DRAW_COMPONENTS` too), the ``inputs`` and ``outputs`` (name -> shape, batch axis
    ``"B"``) the runtime binds."""
    shapes = tensor_shapes(image_size, latent_shape, hint_shape, draws)
    return {
        name: {side: {tensor: shapes[kind] for tensor, kind in getattr(io, side).items()}
               for side in ("inputs", "outputs")}
        for name, io in COMPONENT_IO.items()
    }


def schedule_inputs(plan: DDIMPlan) -> dict[str, np.ndarray]:
    """``denoise_step``'s plan inputs (:data:`SCHEDULE_INPUTS`) for every step of ``plan``: name -> (steps,)."""
    return dict(zip(SCHEDULE_INPUTS, (plan.timesteps, plan.alphas, plan.alphas_prev), strict=True))


def noise_inputs(plan: DDIMPlan, batch: int) -> dict[str, np.ndarray]:
    """``noise_latents``' plan inputs (:data:`NOISE_INPUTS`) for ``batch`` images: float32 ``(batch,)``, the
    coefficients :func:`runtime.schedule.q_sample` uses (:attr:`DDIMPlan.noise_scales` rounded to float32)."""
    values = zip(NOISE_INPUTS, plan.noise_scales, strict=True)
    return {name: np.full(batch, value, np.float32) for name, value in values}
