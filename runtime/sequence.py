"""The DiAD inference sequence, written once; every implementation supplies only the stage kernels.

encode the images to latents and hints -> noise each latent to ``plan.start_t`` with each of the K fixed draws ->
the DDIM steps on all draws at once -> each image's mean over its draws -> decode -> score. The VAE-only plan
(:attr:`DDIMPlan.vae_only`) decodes the clean latent: no hint, no noise, no step.

:class:`Stages` is what an implementation supplies: the ONNX Runtime sessions, the TensorRT contexts (whose
kernels only enqueue work on a CUDA stream), the benchmarks' PyTorch pipeline and the PyTorch model itself
(:meth:`training.models.diad.DiAD.reconstruct`). The values a kernel takes and returns are the implementation's
own (device buffers, OrtValues, tensors); the order, the branching and the stage boundaries are this module's.
A :class:`Clock` is told where each of :data:`STAGES` ends (wall time, or CUDA events recorded on a stream).
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from runtime.schedule import DDIMPlan

T = TypeVar("T")

STAGES = ("encode", "steps", "decode", "score")  # encode: encoders and noising; steps: DDIM loop and mean


class Stages(Protocol[T]):
    """One kernel per stage of the sequence, on the implementation's own memory and device."""

    def encode(self, images: T) -> T:
        """The images' clean latents."""

    def encode_hint(self, images: T) -> T:
        """The images' encoded hints (the Semantic-Guided network's input, once per image)."""

    def noise(self, latent: T, hint: T, plan: DDIMPlan) -> tuple[T, T]:
        """The latents noised to ``plan.start_t`` with every draw, and a hint per noised latent."""

    def loop(self, x: T, hints: T, plan: DDIMPlan) -> T:
        """The plan's DDIM steps on every noised latent (eagerly through :func:`ddim_loop`, or a captured graph)."""

    def mean(self, x: T) -> T:
        """Each image's mean over its draws' samples (called only with several draws)."""

    def decode(self, sample: T) -> T:
        """The sample latents decoded to images."""

    def score(self, images: T, reconstruction: T) -> Any:
        """The anomaly maps and scores of the images against their reconstructions."""


class Clock(Protocol):
    """Told where each stage starts and ends; an implementation keeps wall seconds or records device events."""

    def start(self) -> None: ...

    def lap(self, stage: str) -> None:
        """``stage`` ended now: it took the time since the last lap or the start."""

    def skip(self, stage: str) -> None:
        """``stage`` has nothing to run in this plan: it took no time."""


@dataclass
class Sampled(Generic[T]):
    """The latent side of a batch: clean latents, the noised latents of every draw (the clean latent for the
    VAE-only plan) and the sample latents to decode."""

    latent: T
    noised: T
    sample: T


@dataclass
class Inference(Generic[T]):
    """A batch through the whole sequence: its latents, reconstructions and what the scorer returned."""

    sampled: Sampled[T]
    reconstruction: T
    scored: Any


def ddim_loop(step: Callable[[int, T], T], x: T, plan: DDIMPlan, after: Callable[[int], object] | None = None) -> T:
    """``x`` through the plan's DDIM steps, ``step(k, x)`` for k in sampling order; ``after(k)`` once step k is
    queued (per-step timing)."""
    for k in range(plan.steps):
        x = step(k, x)
        if after is not None:
            after(k)
    return x


def sample(stages: Stages[T], images: T, plan: DDIMPlan, draws: int, clock: Clock) -> Sampled[T]:
    """Encode, noise with each of ``draws`` draws and denoise, average the draws: ``encode`` and ``steps``."""
    clock.start()
    latent = stages.encode(images)
    if plan.vae_only:
        clock.lap("encode")
        clock.skip("steps")
        return Sampled(latent, latent, latent)
    hint = stages.encode_hint(images)
    noised, hints = stages.noise(latent, hint, plan)
    clock.lap("encode")
    x = stages.loop(noised, hints, plan)
    if draws > 1:
        x = stages.mean(x)
    clock.lap("steps")
    return Sampled(latent, noised, x)


def infer(stages: Stages[T], images: T, plan: DDIMPlan, draws: int, clock: Clock) -> Inference[T]:
    """The whole sequence on one batch: :func:`sample`, then ``decode`` and ``score``."""
    sampled = sample(stages, images, plan, draws, clock)
    reconstruction = stages.decode(sampled.sample)
    clock.lap("decode")
    scored = stages.score(images, reconstruction)
    clock.lap("score")
    return Inference(sampled, reconstruction, scored)


class WallClock:
    """Wall seconds per stage, summed over batches; ``sync`` (e.g. a CUDA synchronise) runs at each boundary so
    asynchronous work is counted in its own stage."""

    def __init__(self, sync: Callable[[], object] | None = None):
        self.sync = sync or (lambda: None)
        self.seconds: dict[str, float] = defaultdict(float)
        self._last = time.perf_counter()

    def start(self) -> None:
        self.sync()
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.seconds[stage] += now - self._last
        self._last = now

    def skip(self, stage: str) -> None:
        self.seconds[stage] += 0.0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the body as stage ``name`` (outside :func:`sample` and :func:`infer`)."""
        self.start()
        yield
        self.lap(name)
