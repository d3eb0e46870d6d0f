"""DiAD: frozen VAE + SD UNet steered by the Semantic-Guided network, trained with the epsilon-MSE loss.

Schedule numbers (betas, alpha_bar, DDIM plan, fixed noise) come from :mod:`runtime.schedule`; the one torch
implementation of the DDIM update is :meth:`DiAD.ddim_step` (later exported fused with the denoiser).

Inference as the reference minus its quirks that only cost time: encode (posterior mean), noise to
``start_t`` = 999, 10 DDIM steps (eta 0) over 901 .. 1 without classifier-free guidance (the reference's CFG
uses the same context in both branches, so it is a no-op), decode without clamping.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from runtime.schedule import NUM_TRAIN_TIMESTEPS, DDIMPlan, alphas_cumprod, ddim_plan, noise_draws
from runtime.sequence import Clock, WallClock, ddim_loop, sample
from training.models.notices import warn_loudly
from training.models.presets import TRAINABLE_SETS, ModelConfig
from training.models.sg_network import SemanticGuidedNetwork, timestep_batch
from training.models.unet import build_unet, unet_decoder, unet_encoder
from training.models.vae import LatentAutoencoder

CLIP_BOS, CLIP_EOS = 49406, 49407  # CLIP's <|startoftext|> and <|endoftext|> (also SD's padding token)
ALPHAS_CUMPROD = alphas_cumprod()
REPAIR_SNR_CAP = 5.0  # min-SNR weighting of the repair loss (training with synthetic defects)


def empty_prompt_context(text_encoder: nn.Module, length: int = 77) -> torch.Tensor:
    """CLIP(""): ``last_hidden_state`` of the token ids ``[49406] + [49407] * (length - 1)``, shape (length, D).

    These are the ids SD's ``FrozenCLIPEmbedder`` tokenizer gives the empty prompt (BOS, EOS, EOS padding).
    """
    device = next(text_encoder.parameters()).device
    ids = torch.tensor([[CLIP_BOS] + [CLIP_EOS] * (length - 1)], device=device)
    with torch.no_grad():
        return text_encoder(input_ids=ids).last_hidden_state[0]


def random_context(length: int, dim: int, seed: int) -> torch.Tensor:
    """A deterministic N(0, 1) stand-in for the context, drawn on the CPU with ``seed``."""
    return torch.randn(length, dim, generator=torch.Generator().manual_seed(seed), device="cpu")


def q_sample(latent: torch.Tensor, noise: torch.Tensor, alpha_bar: np.ndarray | float) -> torch.Tensor:
    """Forward diffusion ``sqrt(a) z0 + sqrt(1 - a) eps`` with ``a`` scalar or per sample.

    The coefficients are taken in float64 and rounded to float32, exactly as ``runtime.schedule.q_sample``.
    """
    a = np.asarray(alpha_bar, np.float64).reshape((-1,) + (1,) * (latent.ndim - 1))
    signal = torch.from_numpy(np.sqrt(a).astype(np.float32)).to(latent.device, latent.dtype)
    spread = torch.from_numpy(np.sqrt(1.0 - a).astype(np.float32)).to(latent.device, latent.dtype)
    return signal * latent + spread * noise


def noise_latents(latent: torch.Tensor, draws: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """``(B, ...)`` latents noised with each of the ``(K, ...)`` draws: ``(K * B, ...)`` draw-major, as
    ``runtime.schedule.noise_latents``."""
    return torch.cat([q_sample(latent, draw.expand_as(latent), alpha_bar) for draw in draws])


def mean_of_draws(samples: torch.Tensor, draws: int) -> torch.Tensor:
    """Per image, the mean over ``draws`` of draw-major ``(K * B, ...)`` latents, as
    ``runtime.schedule.mean_of_draws``."""
    return samples.view(draws, -1, *samples.shape[1:]).mean(dim=0)


def repair_target(
    noise: torch.Tensor, shift: torch.Tensor, alpha_bar: np.ndarray, snr_cap: float = REPAIR_SNR_CAP
) -> tuple[torch.Tensor, torch.Tensor]:
    """The epsilon target whose x0 estimate is the clean latent when the noised latent started ``shift`` away
    from it, ``eps + sqrt(a / (1 - a)) * shift``, and per-sample loss weights ``min(SNR, cap) / SNR``
    (SNR = a / (1 - a)): the x0 error weighted by at most ``cap`` (min-SNR weighting), so the lowest timesteps,
    whose targets grow as ``1 / sqrt(1 - a)``, do not swamp the loss. Rows with no shift keep weight 1."""
    a = np.asarray(alpha_bar, np.float64)
    snr = a / (1.0 - a)
    view = (-1,) + (1,) * (noise.ndim - 1)
    gain = torch.from_numpy(np.sqrt(snr).astype(np.float32)).to(noise).view(view)
    repaired = shift.flatten(1).abs().amax(dim=1) > 0
    weight = torch.from_numpy((np.minimum(snr, snr_cap) / snr).astype(np.float32)).to(noise)
    return noise + gain * shift, torch.where(repaired, weight, torch.ones_like(weight))


class DiAD(nn.Module):
    """VAE + SD UNet + SG network + the constant cross-attention context (a buffer, saved in checkpoints).

    ``context``: a precomputed ``(context_length, cross_attention_dim)`` tensor, e.g. from
    :func:`empty_prompt_context`. Without one, a seeded N(0, 1) tensor stands in, with a loud warning when the
    config asks for CLIP (``config.context == "clip"``): load a checkpoint that carries the real context.
    """

    def __init__(self, config: ModelConfig, context: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.vae = LatentAutoencoder(config.vae)
        self.unet = build_unet(config.unet, config.vae.latent_channels)
        self.sg = SemanticGuidedNetwork(
            self.unet, config.sg.hint_channels, config.injection, config.sff_init, config.sg.sff_init_gain
        )
        shape = (config.unet.context_length, config.unet.cross_attention_dim)
        if context is None:
            if config.context == "clip":
                warn_loudly(
                    f"DiAD '{config.name}': no CLIP-L(\"\") context given - using a seeded random {shape} tensor. "
                    "Pretrained SD cross-attention expects the real one: compute it with "
                    "training.models.diad.empty_prompt_context(CLIPTextModel of openai/clip-vit-large-patch14) "
                    "or load a DiAD checkpoint (it carries the 'context' buffer)."
                )
            context = random_context(*shape, seed=config.context_seed)
        if tuple(context.shape) != shape:
            raise ValueError(f"context has shape {tuple(context.shape)}, the config needs {shape}")
        self.register_buffer("context", context.detach().clone())
        self.set_trainable(config.trainable)

    def set_trainable(self, trainable: str) -> None:
        """Freeze all but one set: "sg", "sg+decoder" (SG + UNet decoder half) or "unet" (the whole UNet, SG
        frozen: the stage that pretrains a UNet which has no SD-1.5 weights, e.g. ``tiny``). VAE always frozen."""
        if trainable not in TRAINABLE_SETS + ("unet",):
            raise ValueError(f"trainable set {trainable!r}: expected one of {TRAINABLE_SETS + ('unet',)}")
        self.requires_grad_(False)
        if trainable == "unet":
            self.unet.requires_grad_(True)
            return
        self.sg.requires_grad_(True)
        if trainable == "sg+decoder":
            for module in unet_decoder(self.unet):
                module.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The optimiser's parameters: those of the current trainable set (see :meth:`set_trainable`)."""
        return [p for p in self.parameters() if p.requires_grad]

    def denoise(self, x_t: torch.Tensor, timestep: torch.Tensor | int, hint: torch.Tensor | None) -> torch.Tensor:
        """Predicted noise: the UNet with the SG residuals for an encoded ``hint`` (``sg.encode_hint``);
        ``hint=None`` runs the plain UNet (no SG)."""
        t = timestep_batch(timestep, x_t.shape[0], x_t.device)
        context = self.context.expand(x_t.shape[0], -1, -1)
        down, mid = self.sg(x_t, t, context, hint) if hint is not None else (None, None)
        return self.unet(
            x_t,
            t,
            encoder_hidden_states=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample

    @staticmethod
    def ddim_step(
        x_t: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor | float, alpha_prev: torch.Tensor | float
    ) -> torch.Tensor:
        """One DDIM update with eta = 0 from ``alpha_bar_t`` to ``alpha_bar_prev``."""
        alpha_t = torch.as_tensor(alpha_t, dtype=x_t.dtype, device=x_t.device)
        alpha_prev = torch.as_tensor(alpha_prev, dtype=x_t.dtype, device=x_t.device)
        x0 = (x_t - (1 - alpha_t).sqrt() * eps) / alpha_t.sqrt()
        return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps

    @torch.no_grad()
    def reconstruct(
        self,
        image: torch.Tensor,
        steps: int | None = None,
        start_t: int | None = None,
        noise: torch.Tensor | None = None,
        decode_vae_reconstruction: bool = True,
        draws: int | None = None,
        clock: Clock | None = None,
    ) -> dict[str, torch.Tensor]:
        """Reconstruct ImageNet-normalised images ``(B, 3, S, S)``: the inference sequence of
        :func:`runtime.sequence.sample` on this model (:class:`ModelStages`), then the decoder.

        ``noise``: one latent-shaped draw (with or without the batch axis); default the config's fixed seeded
        draws (``draws`` of them, default the config's: :func:`runtime.schedule.noise_draws`), the same for
        every image, each denoised, the sample latents averaged (:func:`mean_of_draws`).
        Returns ``reconstruction`` (decoded DDIM sample), ``vae_reconstruction`` (decoded clean latent, if asked),
        ``latent``, ``noised_latent`` (with the first draw) and ``sample_latent`` (the mean over draws: decoded).
        ``steps`` 0 is the VAE-only plan: no noise, no hint, the clean latent is the sample (both reconstructions
        are its decode). ``clock`` (:class:`runtime.sequence.WallClock`): told where ``encode``, ``steps`` and
        ``decode`` end.
        """
        inference = self.config.inference
        plan = ddim_plan(inference.steps if steps is None else steps, inference.start_t if start_t is None else start_t)
        count = 1 if noise is not None else inference.draws if draws is None else draws
        clock = clock or WallClock()
        stages = ModelStages(self, noise, count)
        sampled = sample(stages, image, plan, count, clock)
        decoded = stages.decode(sampled.sample)
        clock.lap("decode")
        out = {"reconstruction": decoded, "latent": sampled.latent, "noised_latent": sampled.noised[: len(image)],
               "sample_latent": sampled.sample}
        if decode_vae_reconstruction:
            out["vae_reconstruction"] = decoded if plan.vae_only else self.vae.decode(sampled.latent)
        return out

    def training_loss(
        self,
        image: torch.Tensor,
        generator: torch.Generator | None = None,
        with_sg: bool = True,
        timestep: int | None = None,
        max_timestep: int = NUM_TRAIN_TIMESTEPS,
        corrupted: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """epsilon-MSE at ``t ~ U{0..max_timestep-1}`` on the posterior-sample latent (the reference's training
        loss, with ``max_timestep`` 1000).

        ``timestep`` fixes t for all samples (validation); ``with_sg=False`` scores the plain UNet.
        ``corrupted``: the same images with synthetic defects (:mod:`training.anomaly_synthesis`; rows without one
        equal ``image``). Their latent is noised and their hint steers, but the target is the noise that leads
        back to the clean latent (:func:`repair_target`).
        """
        with torch.no_grad():
            latent = self.vae.encode_sample(image, generator)
            shift = None  # with defects: the clean posterior sample is moved by the defect's shift of the mean
            if corrupted is not None:
                shift = self.vae.encode_mean(corrupted) - self.vae.encode_mean(image)
        if timestep is None:
            device = generator.device if generator is not None else "cpu"
            t = torch.randint(0, max_timestep, (image.shape[0],), generator=generator, device=device)
        else:
            t = torch.full((image.shape[0],), timestep, dtype=torch.long)
        noise = randn_tensor(latent.shape, generator=generator, device=latent.device, dtype=latent.dtype)
        alpha = ALPHAS_CUMPROD[t.cpu().numpy()]
        noised = q_sample(latent if shift is None else latent + shift, noise, alpha)
        hint = self.sg.encode_hint(image if corrupted is None else corrupted) if with_sg else None
        predicted = self.denoise(noised, t.to(latent.device), hint)
        if corrupted is None:
            return F.mse_loss(predicted, noise)
        target, weight = repair_target(noise, shift, alpha)
        return (weight * (predicted - target).pow(2).flatten(1).mean(dim=1)).mean()

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (works on the meta device)."""

        def count(*modules: nn.Module) -> int:
            return sum(p.numel() for m in modules for p in m.parameters())

        cn, ae = self.sg.controlnet, self.vae.autoencoder
        counts = {
            "unet": count(self.unet),
            "unet_encoder": count(*unet_encoder(self.unet)),
            "unet_decoder": count(*unet_decoder(self.unet)),
            "sg": count(self.sg),
            "sg_encoder_copy": count(cn.conv_in, cn.time_embedding, cn.down_blocks, cn.mid_block),
            "hint_encoder": count(cn.controlnet_cond_embedding),
            "zero_convs": count(cn.controlnet_down_blocks, cn.controlnet_mid_block),
            "sff": count(self.sg.sff),
            "vae": count(self.vae),
            "vae_encoder": count(ae.encoder, ae.quant_conv),
            "vae_decoder": count(ae.post_quant_conv, ae.decoder),
        }
        counts["unet+sg"] = counts["unet"] + counts["sg"]
        counts["total"] = counts["unet+sg"] + counts["vae"]
        counts["trainable"] = sum(p.numel() for p in self.trainable_parameters())
        return counts


class ModelStages:
    """The stage kernels of :mod:`runtime.sequence` on a :class:`DiAD` (draw-major draws: row ``k * B + b``), up
to the decoder; a scorer adds ``score`` (the benchmarks' PyTorch pipeline).

    ``noise``: one latent-shaped draw for every image, or None for the config's ``draws`` fixed seeded draws.
    ``step_values`` gives each DDIM step's timestep and alphas (Python numbers here; device tensors made once per
    plan where a CUDA graph captures the loop); ``after(k)`` runs once step k is queued.
    """

    def __init__(self, model: DiAD, noise: torch.Tensor | None, draws: int,
                 after: Callable[[int], object] | None = None):
        self.model, self.given, self.draws, self.after = model, noise, draws, after

    def draws_like(self, latent: torch.Tensor) -> torch.Tensor:
        """The ``(K, ...)`` draws for ``latent``'s shape, dtype and device."""
        if self.given is not None:
            return self.given.to(latent).expand_as(latent)[None]
        seed = self.model.config.inference.noise_seed
        return torch.from_numpy(noise_draws(tuple(latent.shape[1:]), seed, self.draws)).to(latent)

    def step_values(self, plan: DDIMPlan) -> list[tuple]:
        return [(int(t), float(a), float(p)) for t, a, p in zip(plan.timesteps, plan.alphas, plan.alphas_prev)]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.vae.encode_mean(images)

    def encode_hint(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.sg.encode_hint(images)  # once per image, not per step or draw

    def noise(self, latent: torch.Tensor, hint: torch.Tensor, plan: DDIMPlan) -> tuple[torch.Tensor, torch.Tensor]:
        draws = self.draws_like(latent)
        return noise_latents(latent, draws, plan.start_alpha), hint.repeat(len(draws), 1, 1, 1)

    def loop(self, x: torch.Tensor, hints: torch.Tensor, plan: DDIMPlan) -> torch.Tensor:
        values = self.step_values(plan)

        def step(k: int, x: torch.Tensor) -> torch.Tensor:
            t, alpha, alpha_prev = values[k]
            return self.model.ddim_step(x, self.model.denoise(x, t, hints), alpha, alpha_prev)

        return ddim_loop(step, x, plan, self.after)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return mean_of_draws(x, self.draws)

    def decode(self, sample: torch.Tensor) -> torch.Tensor:
        return self.model.vae.decode(sample)


def build_model(config: ModelConfig, device: str | torch.device = "cpu", context: torch.Tensor | None = None) -> DiAD:
    """Build DiAD with its parameters created directly on ``device`` ("meta": shapes only, nothing allocated)."""
    with torch.device(device):
        model = DiAD(config, context)
    return model.to(device)
