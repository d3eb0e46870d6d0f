"""ONNX Runtime against PyTorch, component by component, on random and on real inputs; the weight-free draw graphs
(:mod:`export.draw_graphs`) against :mod:`runtime.schedule`'s numpy.

Tolerances are relative to the largest ``|output|`` of PyTorch. FP32: ONNX Runtime (MLAS) and PyTorch (oneDNN)
sum convolutions and matmuls in different orders, which moves float32 results by a few ulps per layer (measured
~1e-6 relative); 1e-4 leaves 100x headroom and still fails for any wrong op, weight, constant or layout (errors of
order 1). FP16 graphs against the FP32 model: about 1e-3 measured, 5e-2 allowed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch

from export.draw_graphs import draw_parity
from export.graphs import Component, components
from runtime.errors import DiadError
from runtime.component_io import COMPONENT_IO, SCHEDULE_INPUTS, schedule_inputs
from runtime.manifest import Manifest
from runtime.schedule import ddim_plan, fixed_noise, q_sample
from training.models.diad import DiAD
from training.models.scorer import FeatureScorer

TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}


class ParityError(DiadError):
    """An exported graph computes something else than the PyTorch model it came from."""


@dataclass
class Parity:
    component: str
    inputs: str
    max_abs: float
    max_ref: float  # largest |reference output| (torch's; numpy's for the draw graphs), to read max_abs against

    @property
    def relative(self) -> float:
        return self.max_abs / max(self.max_ref, 1e-12)


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def real_inputs(model: DiAD, images: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Per component, inputs met in real inference: the images, their latents noised as the plan does, the
    hint, the first DDIM step's numbers and the VAE's reconstructions."""
    config = model.config
    plan = ddim_plan(config.inference.steps, config.inference.start_t)
    batch = len(images)
    with torch.no_grad():
        x = torch.from_numpy(images)
        latent = model.vae.encode_mean(x).numpy()
        hint = model.sg.encode_hint(x).numpy()
        recon = model.vae.decode(torch.from_numpy(latent)).numpy()
    noised = q_sample(latent, fixed_noise(latent.shape[1:], config.inference.noise_seed), plan.start_alpha)
    first_step = [np.full((batch,), values[0], np.float32) for values in schedule_inputs(plan).values()]
    arrays = {
        "vae_encoder": (images,),
        "hint_encoder": (images,),
        "denoise_step": (noised, hint, *first_step),
        "vae_decoder": (latent,),
        "scorer": (images, recon),
    }
    return {name: COMPONENT_IO[name].named_inputs(*values) for name, values in arrays.items()}


def random_inputs(component: Component, seed: int) -> dict[str, np.ndarray]:
    """N(0, 1) inputs of the example shapes; plan inputs drawn as a DDIM step's (t, alpha_t < alpha_prev)."""
    rng = np.random.default_rng(seed)
    feeds = {k: rng.standard_normal(tuple(v.shape), dtype=np.float32) for k, v in component.inputs.items()}
    if component.name == "denoise_step":
        batch = len(next(iter(feeds.values())))
        timestep = rng.integers(1, 1000, batch).astype(np.float32)
        alpha_t = rng.uniform(0.005, 0.5, batch).astype(np.float32)
        alpha_prev = np.minimum(alpha_t * 2, 0.999).astype(np.float32)
        feeds.update(zip(SCHEDULE_INPUTS, (timestep, alpha_t, alpha_prev), strict=True))
    return feeds


def run_torch(component: Component, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = component.module(*(torch.from_numpy(feeds[k]) for k in component.inputs))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def parity(
    model: DiAD, scorer: FeatureScorer, manifest: Manifest, images: np.ndarray | None = None, seed: int = 0
) -> list[Parity]:
    """Max |ORT - torch| per component and output, on random inputs and (given ``images``) on real ones; then the
    draw graphs against :mod:`runtime.schedule` (:func:`export.draw_graphs.draw_parity`)."""
    model.eval()
    real = real_inputs(model, images) if images is not None else {}
    results = []
    for component in components(model, scorer):
        sess = session(str(manifest.path(component.name)))
        cases = {"random": random_inputs(component, seed)}
        if component.name in real:
            cases["real"] = real[component.name]
        for kind, feeds in cases.items():
            got = sess.run(list(component.outputs), feeds)
            for name, a, b in zip(component.outputs, got, run_torch(component, feeds)):
                label = component.name if len(component.outputs) == 1 else f"{component.name}.{name}"
                results.append(Parity(label, kind, float(np.abs(a - b).max()), float(np.abs(b).max())))
    return results + [Parity(name, "random", error, value) for name, (error, value) in draw_parity(manifest).items()]


def check_parity(results: list[Parity], precision: str) -> None:
    """Raise :class:`ParityError` naming every component whose error exceeds the precision's tolerance."""
    bound = TOLERANCE[precision]
    failed = [r for r in results if not r.relative <= bound]
    if failed:
        raise ParityError(
            f"{len(failed)} exported graph(s) disagree with PyTorch beyond {bound:g} x max|output| ({precision}): "
            + "; ".join(f"{r.component} on {r.inputs} inputs: max abs error {r.max_abs:.3g} against max "
                        f"|value| {r.max_ref:.3g} (relative {r.relative:.2g})" for r in failed)
        )


def format_parity(results: list[Parity]) -> str:
    lines = ["| component | inputs | max abs error | max abs value | relative |", "|:---|:---|---:|---:|---:|"]
    lines += [
        f"| {r.component} | {r.inputs} | {r.max_abs:.3g} | {r.max_ref:.3g} | {r.relative:.2g} |" for r in results
    ]
    return "\n".join(lines) + "\n"
