"""The diffusion schedule of DiAD (SD-1.5): scaled-linear betas and the DDIM sampling plan, in numpy.

Training, export, the runtime and the benchmarks all take their numbers from here.

Reference behaviour (``ldm/modules/diffusionmodules/util.py`` and ``ddim.py`` of the DiAD code):
betas are ``linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2``; inference noises the latent to ``t = 999`` and then
runs DDIM (eta = 0) over the "leading" grid ``tau = 1 + k * (1000 // steps)``, i.e. 901, 801, ..., 1 for 10
steps; the last step goes to ``alphas_cumprod[0]``. With a start timestep ``start_t`` other than 999 the same grid
is laid over ``start_t + 1`` training steps, so the default reproduces the reference exactly.

Zero steps is the VAE-only plan: no noise and no DDIM step, the clean latent is decoded and scored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def betas(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> np.ndarray:
    """SD's scaled-linear betas, float64."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2


def alphas_cumprod(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> np.ndarray:
    """``alpha_bar_t`` for t = 0 .. T-1, float64."""
    return np.cumprod(1.0 - betas(num_train_timesteps, beta_start, beta_end))


def ddim_timesteps(steps: int, start_t: int = NUM_TRAIN_TIMESTEPS - 1) -> np.ndarray:
    """The DDIM timesteps in sampling order (descending): the leading grid over ``start_t + 1`` steps."""
    if steps < 1:
        raise ValueError(f"DDIM needs at least one step, got {steps}")
    if not 0 < start_t < NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"start timestep must be in 1..{NUM_TRAIN_TIMESTEPS - 1}, got {start_t}")
    stride = (start_t + 1) // steps
    if stride < 1:
        raise ValueError(f"{steps} DDIM steps do not fit below start timestep {start_t}")
    return (np.arange(steps, dtype=np.int64) * stride + 1)[::-1].copy()


@dataclass(frozen=True)
class DDIMPlan:
    """Everything inference needs: where to noise to, and each step's (t, alpha_bar_t, alpha_bar_prev)."""

    start_t: int
    start_alpha: float
    timesteps: np.ndarray
    alphas: np.ndarray
    alphas_prev: np.ndarray

    @property
    def steps(self) -> int:
        """The number of DDIM steps (0: the VAE-only plan)."""
        return len(self.timesteps)

    @property
    def vae_only(self) -> bool:
        """True for the VAE-only plan: no DDIM step, the clean latent is decoded (no noise, no hint)."""
        return self.steps == 0

    @property
    def brief(self) -> dict[str, int]:
        """``{"steps", "start_t"}``: what calibration records and the detector compares."""
        return {"steps": self.steps, "start_t": int(self.start_t)}

    @property
    def label(self) -> str:
        """The plan in words (:func:`plan_label`)."""
        return plan_label(self.steps, self.start_t)

    @property
    def noise_scales(self) -> tuple[float, float]:
        """``(sqrt(alpha_bar_start), sqrt(1 - alpha_bar_start))``: the q_sample coefficients."""
        return float(np.sqrt(self.start_alpha)), float(np.sqrt(1.0 - self.start_alpha))

    def to_dict(self) -> dict:
        return {
            "start_t": self.start_t,
            "start_alpha": self.start_alpha,
            "timesteps": self.timesteps.tolist(),
            "alphas": self.alphas.tolist(),
            "alphas_prev": self.alphas_prev.tolist(),
        }


def ddim_plan(steps: int = 10, start_t: int = NUM_TRAIN_TIMESTEPS - 1) -> DDIMPlan:
    """The DDIM plan for ``steps`` steps after noising to ``start_t`` (eta = 0, final alpha = alpha_bar_0).

    ``steps`` 0 gives the VAE-only plan (``start_t`` ignored): start_t 0, start_alpha 1, no timesteps."""
    if steps == 0:
        empty = np.zeros(0, np.float64)
        return DDIMPlan(0, 1.0, np.zeros(0, np.int64), empty, empty.copy())
    if steps < 0:
        raise ValueError(f"DDIM steps {steps}: expected 0 (the VAE-only plan, no diffusion) or more")
    acp = alphas_cumprod()
    taus = ddim_timesteps(steps, start_t)
    prev = np.concatenate([taus[1:], [-1]])
    alphas_prev = np.where(prev >= 0, acp[np.maximum(prev, 0)], acp[0])
    return DDIMPlan(int(start_t), float(acp[start_t]), taus, acp[taus], alphas_prev)


def plan_label(steps: int, start_t: int) -> str:
    """A plan in words for summaries: "VAE-only (no DDIM steps)" or "DDIM 10 steps from t=999"."""
    return "VAE-only (no DDIM steps)" if steps == 0 else f"DDIM {steps} steps from t={start_t}"


def q_sample(latent: np.ndarray, noise: np.ndarray, alpha_bar: float) -> np.ndarray:
    """Forward diffusion ``sqrt(a) z0 + sqrt(1 - a) eps`` (float32)."""
    a = np.float32(np.sqrt(alpha_bar))
    b = np.float32(np.sqrt(1.0 - alpha_bar))
    return (a * latent + b * noise).astype(np.float32)


def fixed_noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The diffusion noise of the "fixed" seed policy: one float32 N(0, 1) tensor drawn with numpy's PCG64.

    Every image gets the same noise, so a given image always gets the same score, batched or not.
    """
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def noise_draws(shape: tuple[int, ...], seed: int, draws: int = 1) -> np.ndarray:
    """``draws`` noise tensors ``(draws, *shape)`` in antithetic pairs: draw ``2j`` is the ``j``-th tensor of
    :func:`fixed_noise` ``((ceil(draws / 2), *shape), seed)``, draw ``2j + 1`` its negative.

    Averaging the denoised latents of a pair cancels the sample's first-order dependence on the noise (antithetic
    variates). One draw is exactly ``fixed_noise(shape, seed)``.
    """
    if draws < 1:
        raise ValueError(f"need at least one noise draw, got {draws}")
    noise = np.repeat(fixed_noise(((draws + 1) // 2, *shape), seed), 2, axis=0)[:draws]
    noise[1::2] *= -1
    return noise


def as_draws(noise: np.ndarray) -> np.ndarray:
    """Noise as draws ``(K, C, h, w)``: a latent-shaped ``(C, h, w)`` tensor is one draw."""
    return noise[None] if noise.ndim == 3 else noise


def noise_latents(latent: np.ndarray, draws: np.ndarray, alpha_bar: float) -> np.ndarray:
    """The ``(B, ...)`` clean latents noised with each of ``K`` draws (:func:`as_draws`): ``(K * B, ...)``,
    draw-major (row ``k * B + b`` is image ``b`` with draw ``k``), so the hint of a batch repeats as ``K`` whole
    copies."""
    return np.concatenate([q_sample(latent, draw, alpha_bar) for draw in as_draws(draws)])


def draws_per_image(draws: np.ndarray, batch: int) -> np.ndarray:
    """The noise draws (:func:`as_draws`) once per image, ``(batch, K, ...)``: the ``noise`` input of the
    ``noise_latents`` graph, which noises image-major (row ``b * K + k`` is image ``b`` with draw ``k``)."""
    return np.repeat(as_draws(draws)[None].astype(np.float32, copy=False), batch, axis=0)


def mean_of_draws(samples: np.ndarray, draws: int) -> np.ndarray:
    """The per-image mean over draws of draw-major ``(K * B, ...)`` latents (:func:`noise_latents`): ``(B, ...)``."""
    if len(samples) % draws:
        raise ValueError(f"{len(samples)} latents are not {draws} draws of one batch")
    return samples.reshape(draws, -1, *samples.shape[1:]).mean(axis=0, dtype=np.float32)
