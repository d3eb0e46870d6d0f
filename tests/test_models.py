"""training.models: DiAD components on the tiny preset (CPU), sd15 only on the meta device."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from safetensors.torch import save_file
from scipy.ndimage import gaussian_filter

from runtime.errors import CheckpointError
from runtime.schedule import alphas_cumprod, ddim_plan, ddim_timesteps, noise_draws
from runtime.scoring import anomaly_map, image_score
from training.models.diad import DiAD, build_model, empty_prompt_context
from training.models.presets import REFERENCE_PARAMETERS_M, ModelConfig, get_preset, sd15, tiny
from training.models.scorer import FeatureScorer


def tiny_model(seed: int = 0, **overrides) -> DiAD:
    config = tiny()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return build_model(config)


def perturb(module: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Add noise to every parameter, so the zero-initialised convs become non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


TINY_SIZE, TINY_LATENT = tiny().image_size, tiny().unet.sample_size


def images(n: int, seed: int = 0, size: int = TINY_SIZE) -> torch.Tensor:
    """ImageNet-normalised-like noise images, at the tiny preset's image size unless told otherwise."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> DiAD:
    m = tiny_model()
    perturb(m.sg)
    return m.eval()


# ---------------------------------------------------------------- config


def test_config_round_trips_through_json_and_rejects_unknown_keys():
    for name in ("sd15", "tiny"):
        config = get_preset(name)
        assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    data = tiny().to_dict()
    data["unet"]["block_out_chanels"] = [1, 2]
    with pytest.raises(ValueError, match="block_out_chanels"):
        ModelConfig.from_dict(data)
    with pytest.raises(ValueError, match="injection"):
        ModelConfig(injection="some")


# ---------------------------------------------------------------- shapes, determinism


def test_tiny_shapes_end_to_end(model):
    x = images(2)
    with torch.no_grad():
        latent = model.vae.encode_mean(x)
        hint = model.sg.encode_hint(x)
        eps = model.denoise(latent, 500, hint)
    assert latent.shape == (2, tiny().vae.latent_channels, TINY_LATENT, TINY_LATENT)
    assert hint.shape == (2, tiny().unet.block_out_channels[0], TINY_LATENT, TINY_LATENT)
    assert eps.shape == latent.shape

    calls = []
    encode_hint = model.sg.encode_hint
    model.sg.encode_hint = lambda image: calls.append(1) or encode_hint(image)
    try:
        out = model.reconstruct(x, steps=3)
    finally:
        del model.sg.encode_hint
    assert calls == [1]  # the hint is encoded once per image, not once per step
    assert out["reconstruction"].shape == out["vae_reconstruction"].shape == x.shape
    assert out["sample_latent"].shape == out["latent"].shape == (2, tiny().vae.latent_channels, TINY_LATENT, TINY_LATENT)


def test_reconstruct_is_deterministic_and_batch_independent(model):
    x = images(2, seed=3, size=128)
    a = model.reconstruct(x, steps=2, decode_vae_reconstruction=False)
    b = model.reconstruct(x, steps=2, decode_vae_reconstruction=False)
    assert torch.equal(a["reconstruction"], b["reconstruction"])
    singles = [model.reconstruct(x[i : i + 1], steps=2, decode_vae_reconstruction=False) for i in range(2)]
    for key in ("noised_latent", "sample_latent", "reconstruction"):
        batched, single = a[key], torch.cat([s[key] for s in singles])
        # float32 batch-size-dependent conv kernels: ~1e-6 after the diffusion, ~1e-5 relative after the
        # (deep, random-weight) VAE decoder
        tolerance = 1e-5 * (1.0 if key != "reconstruction" else float(batched.abs().max()))
        assert float((batched - single).abs().max()) <= tolerance, key


def test_reconstruct_averages_the_sample_latents_of_its_noise_draws(model):
    """Two draws (the tiny preset's) decode the mean of the DDIM samples started from +eps and from -eps."""
    x = images(2, seed=4, size=128)
    eps = torch.from_numpy(noise_draws(tuple(model.vae.encode_mean(x).shape[1:]), 0, 1)[0])
    plus, minus = (model.reconstruct(x, steps=2, noise=n, decode_vae_reconstruction=False) for n in (eps, -eps))
    both = model.reconstruct(x, steps=2, draws=2, decode_vae_reconstruction=False)
    torch.testing.assert_close(both["sample_latent"], (plus["sample_latent"] + minus["sample_latent"]) / 2,
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(both["noised_latent"], plus["noised_latent"])
    assert not torch.allclose(both["sample_latent"], plus["sample_latent"], atol=1e-3)


@torch.no_grad()
def test_training_loss_is_seeded_and_takes_a_fixed_timestep():
    m = tiny_model()
    x = images(2, size=128)

    def loss(**options) -> float:
        return float(m.training_loss(x, torch.Generator().manual_seed(0), **options))

    assert loss() == loss()
    assert loss(timestep=500) == loss(timestep=500, with_sg=False)  # SG contributes zero at init
    assert loss(timestep=500) != loss(timestep=50)


# ---------------------------------------------------------------- residual injection


def _unet_kwargs_spy(model: DiAD) -> tuple[list[dict], torch.utils.hooks.RemovableHandle]:
    seen: list[dict] = []
    handle = model.unet.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs), with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("injection", ["mid+sff", "all"])
def test_sg_contributes_zero_at_init_and_injects_per_mode_after_training(injection):
    m = tiny_model(injection=injection)
    x = images(1)
    g = torch.Generator().manual_seed(5)
    x_t = torch.randn(1, tiny().vae.latent_channels, TINY_LATENT, TINY_LATENT, generator=g)
    with torch.no_grad():
        plain = m.unet(x_t, 700, encoder_hidden_states=m.context[None]).sample
        assert torch.equal(m.denoise(x_t, 700, None), plain)
        assert torch.equal(m.denoise(x_t, 700, m.sg.encode_hint(x)), plain)

        perturb(m.sg)
        seen, handle = _unet_kwargs_spy(m)
        eps = m.denoise(x_t, 700, m.sg.encode_hint(x))
        handle.remove()
    down = seen[0]["down_block_additional_residuals"]
    assert len(down) == 12 and seen[0]["mid_block_additional_residual"].abs().max() > 0
    nonzero = [bool(r.abs().max() > 0) for r in down]
    assert nonzero == ([False] * 9 + [True] * 3 if injection == "mid+sff" else [True] * 12)
    assert not torch.equal(eps, plain)


# ---------------------------------------------------------------- SFF gradient


def _sff_weights(m: DiAD) -> list[torch.Tensor]:
    return [conv.weight for conv in m.sg.sff.convs()]


def _sff_values(m: DiAD) -> list[torch.Tensor]:
    return [w.detach().clone() for w in _sff_weights(m)]


@pytest.mark.parametrize("sff_init", ["small_random", "zero"])
def test_sff_learns_unless_zero_initialised(sff_init):
    m = tiny_model(sff_init=sff_init, trainable="sg", injection="mid+sff")  # the reference scripts' wiring
    before = _sff_values(m)
    assert len(before) == 9
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = images(1, size=128)
    grad_norms = []
    for _ in range(3):
        opt.zero_grad()
        m.training_loss(x, g).backward()
        grad_norms.append(sum(float(w.grad.abs().sum()) for w in _sff_weights(m)))
        opt.step()
    changed = [not torch.equal(w, b) for w, b in zip(_sff_values(m), before)]
    if sff_init == "small_random":
        assert grad_norms[-1] > 0 and all(changed)
    else:  # the reference's double zero-init: dead gradient forever (diad-method.md §6.3)
        assert grad_norms == [0.0, 0.0, 0.0] and not any(changed)
        assert all(float(w.abs().max()) == 0.0 for w in _sff_values(m))
        for i in m.sg.sff_sources:  # the zero convs feeding SFF stay dead too
            assert float(m.sg.controlnet.controlnet_down_blocks[i].weight.detach().abs().max()) == 0.0


# ---------------------------------------------------------------- trainable sets


def test_trainable_sets():
    m = tiny_model()
    params = dict(m.named_parameters())
    sg = {n for n in params if n.startswith("sg.")}
    decoder = {n for n in params if n.startswith(("unet.up_blocks.", "unet.conv_norm_out.", "unet.conv_out."))}
    unet = {n for n in params if n.startswith("unet.")}
    assert sum(params[n].numel() for n in decoder) == m.parameter_counts()["unet_decoder"] > 0
    for trainable, expected in [("sg", sg), ("sg+decoder", sg | decoder), ("unet", unet)]:
        m.set_trainable(trainable)
        names = {n for n, p in params.items() if p.requires_grad}
        assert names == expected, trainable
        assert {id(p) for p in m.trainable_parameters()} == {id(params[n]) for n in names}
        if trainable != "unet":  # the UNet encoder is frozen in DiAD proper
            frozen = ("unet.conv_in.", "unet.time_embedding.", "unet.down_blocks.", "unet.mid_block.")
            assert not any(n.startswith(frozen) for n in names)
        assert not any(n.startswith("vae.") for n in names)
    assert {n for n, p in tiny_model(trainable="sg").named_parameters() if p.requires_grad} == sg
    with pytest.raises(ValueError):
        m.set_trainable("everything")


def test_sg_encoder_is_a_copy_of_the_unet_encoder():
    m = tiny_model()
    perturb(m.unet, seed=2)  # e.g. SD weights loaded after building
    m.sg.copy_encoder_from(m.unet)
    unet, sg = m.unet.state_dict(), m.sg.controlnet.state_dict()
    copied = [k for k in unet if k.startswith(("conv_in.", "time_embedding.", "down_blocks.", "mid_block."))]
    assert copied and all(torch.equal(unet[k], sg[k]) for k in copied)
    assert all(p.requires_grad for p in m.sg.parameters())  # the copy stays trainable


# ---------------------------------------------------------------- DDIM


def _scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False,
    )


def test_schedule_matches_diffusers():
    scheduler = _scheduler()
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == ddim_timesteps(10).tolist() == list(range(901, 0, -100))
    np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), alphas_cumprod(), rtol=2e-6)


@pytest.mark.parametrize("steps", [10, 5, 3, 2, 1])
def test_ddim_step_matches_diffusers(steps):
    scheduler = _scheduler()
    scheduler.set_timesteps(steps)
    plan = ddim_plan(steps)
    assert scheduler.timesteps.tolist() == plan.timesteps.tolist()
    stride = 1000 // steps
    g = torch.Generator().manual_seed(steps)
    x = torch.randn(2, 4, 32, 32, generator=g)
    for t, alpha, alpha_prev in zip(plan.timesteps, plan.alphas, plan.alphas_prev):
        eps = torch.randn(x.shape, generator=g)
        expected = scheduler.step(eps, int(t), x, eta=0.0).prev_sample
        # the update rule, with diffusers' own (float32-cumprod) alphas: identical to 1e-6
        theirs = scheduler.alphas_cumprod
        their_prev = theirs[t - stride] if t >= stride else scheduler.final_alpha_cumprod
        assert (float(theirs[t]), float(their_prev)) == pytest.approx((alpha, alpha_prev), rel=1e-6)
        torch.testing.assert_close(DiAD.ddim_step(x, eps, theirs[t], their_prev), expected, rtol=1e-6, atol=1e-6)
        # with the runtime plan's float64-exact alphas the steps differ only by that < 1e-6 alpha rounding
        torch.testing.assert_close(DiAD.ddim_step(x, eps, float(alpha), float(alpha_prev)), expected, rtol=1e-5, atol=1e-5)
        x = expected


# ---------------------------------------------------------------- scorer


@pytest.fixture(scope="module")
def random_scorer() -> FeatureScorer:
    torch.manual_seed(0)
    return FeatureScorer(pretrained=False)


def _reference_postprocess(cos_maps: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """The reference formulation: interpolate, sum, scipy Gaussian per map, 8x avg-pool, max."""
    total = sum(F.interpolate(c[:, None], size=256, mode="bilinear", align_corners=True)[:, 0] for c in cos_maps)
    smooth = np.stack([gaussian_filter(m, sigma=5) for m in total.numpy()])
    pooled = torch.from_numpy(smooth)[:, None]
    for _ in range(8):
        pooled = F.avg_pool2d(pooled, 8, stride=1)
    return smooth, pooled.flatten(1).max(dim=1).values.numpy()


def test_scorer_matches_reference_and_runtime(random_scorer):
    x = images(2, seed=7, size=256)
    rec = x + 0.3 * images(2, seed=8, size=256)
    rec[1, :, 100:140, 60:120] += 2.0  # a local defect
    with torch.no_grad():
        cos = random_scorer.cos_maps(x, rec)
        amap, score = random_scorer(x, rec)
    assert [tuple(c.shape) for c in cos] == [(2, 64, 64), (2, 32, 32), (2, 16, 16)]
    assert amap.shape == (2, 256, 256) and score.shape == (2,)

    ref_map, ref_score = _reference_postprocess(cos)
    np.testing.assert_allclose(amap.numpy(), ref_map, rtol=1e-4, atol=1e-4 * np.abs(ref_map).max())
    np.testing.assert_allclose(score.numpy(), ref_score, rtol=1e-4)

    cos_np = [c.numpy() for c in cos]
    np.testing.assert_allclose(amap.numpy(), anomaly_map(cos_np, 256), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score.numpy(), image_score(anomaly_map(cos_np, 256)), rtol=1e-5)


def test_scorer_loads_a_local_weights_file(tmp_path, random_scorer):
    path = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in random_scorer.backbone.state_dict().items()}, str(path))
    loaded = FeatureScorer(weights=path)
    for (name, a), b in zip(random_scorer.backbone.state_dict().items(), loaded.backbone.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError):
        FeatureScorer(weights=tmp_path / "missing.safetensors")


# ---------------------------------------------------------------- sd15 sizes (meta device)


def test_sd15_parameter_counts_match_reference_on_meta_device():
    with pytest.warns(UserWarning, match="CLIP"):
        m = build_model(sd15(), device="meta")
    assert next(m.unet.parameters()).is_meta
    counts = m.parameter_counts()
    for name, reference in REFERENCE_PARAMETERS_M.items():
        assert counts[name] / 1e6 == pytest.approx(reference, abs=0.01), name


# ---------------------------------------------------------------- context


def test_empty_prompt_context_uses_bos_then_eos_padding():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=77,
        )
    ).eval()
    context = empty_prompt_context(encoder)
    assert context.shape == (77, 16)
    ids = torch.tensor([[49406] + [49407] * 76])
    with torch.no_grad():
        torch.testing.assert_close(context, encoder(input_ids=ids).last_hidden_state[0], rtol=0, atol=0)

    config = tiny()
    config.unet.cross_attention_dim = 16
    m = build_model(config, context=context)
    assert torch.equal(m.context, context) and "context" in m.state_dict()
