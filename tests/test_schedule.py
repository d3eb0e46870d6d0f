"""runtime.schedule: the reference's betas, alpha_bar values and DDIM plan."""
import numpy as np
import pytest

from runtime.schedule import (
    alphas_cumprod,
    betas,
    ddim_plan,
    ddim_timesteps,
    fixed_noise,
    mean_of_draws,
    noise_draws,
    noise_latents,
    plan_label,
    q_sample,
)


@pytest.mark.torch
def test_betas_are_ldm_scaled_linear():
    import torch

    reference = (torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2).numpy()
    np.testing.assert_allclose(betas(), reference, rtol=0, atol=1e-15)


@pytest.mark.parametrize("t, value", [(999, 0.00466), (901, 0.0140), (501, 0.275), (1, 0.9983)])
def test_alpha_bar_values_of_the_brief(t, value):
    assert alphas_cumprod()[t] == pytest.approx(value, rel=5e-3)


def test_reference_plan_is_ten_steps_901_to_1_from_999():
    plan = ddim_plan()
    assert plan.start_t == 999 and plan.timesteps.tolist() == list(range(901, 0, -100))
    acp = alphas_cumprod()
    assert plan.start_alpha == acp[999]
    np.testing.assert_array_equal(plan.alphas, acp[plan.timesteps])
    np.testing.assert_array_equal(plan.alphas_prev[:-1], acp[plan.timesteps[1:]])
    assert plan.alphas_prev[-1] == acp[0]  # set_alpha_to_one=False


def test_start_timestep_lays_the_grid_below_it():
    assert ddim_timesteps(4, start_t=399).tolist() == [301, 201, 101, 1]
    assert ddim_timesteps(3).tolist() == [667, 334, 1]  # exactly 3 steps (the reference's range() gives 4)
    for bad in [(0, 999), (5, 0), (5, 1000), (600, 300)]:
        with pytest.raises(ValueError):
            ddim_timesteps(*bad)


def test_zero_steps_is_the_vae_only_plan_whatever_the_start():
    for start_t in (999, 399, 0):
        plan = ddim_plan(0, start_t)
        assert plan.vae_only and plan.steps == 0 and (plan.start_t, plan.start_alpha) == (0, 1.0)
        assert plan.timesteps.dtype == np.int64 and plan.timesteps.size == plan.alphas.size == plan.alphas_prev.size == 0
        assert plan.noise_scales == (1.0, 0.0)  # q_sample would leave the latent clean
    assert plan.to_dict() == {"start_t": 0, "start_alpha": 1.0, "timesteps": [], "alphas": [], "alphas_prev": []}
    assert plan.brief == {"steps": 0, "start_t": 0} and plan.label == "VAE-only (no DDIM steps)"
    diffusion = ddim_plan(3, 399)
    assert not diffusion.vae_only and diffusion.brief == {"steps": 3, "start_t": 399}
    assert diffusion.label == plan_label(3, 399) == "DDIM 3 steps from t=399"
    with pytest.raises(ValueError, match="DDIM steps -1: expected 0 .the VAE-only plan"):
        ddim_plan(-1)
    with pytest.raises(ValueError, match="at least one step"):
        ddim_timesteps(0)  # only ddim_plan knows the VAE-only plan


def test_fixed_noise_and_q_sample():
    a, b = fixed_noise((4, 8, 8), 0), fixed_noise((4, 8, 8), 0)
    assert a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, fixed_noise((4, 8, 8), 1))
    z = np.ones((4, 8, 8), np.float32)
    x = q_sample(z, a, 0.25)
    np.testing.assert_allclose(x, 0.5 * z + np.sqrt(0.75) * a, rtol=1e-5, atol=1e-7)


def test_noise_draws_come_in_antithetic_pairs_and_one_draw_is_the_fixed_noise():
    shape = (4, 8, 8)
    assert np.array_equal(noise_draws(shape, 3, 1), fixed_noise(shape, 3)[None])  # folders before draws score alike
    five = noise_draws(shape, 3, 5)
    assert five.shape == (5, *shape) and five.dtype == np.float32
    assert np.array_equal(five[1], -five[0]) and np.array_equal(five[3], -five[2])
    assert not np.array_equal(five[2], five[0]) and not np.array_equal(five[4], five[0])
    assert np.array_equal(five[:2], noise_draws(shape, 3, 2))  # a prefix: more draws only add pairs
    with pytest.raises(ValueError, match="at least one noise draw"):
        noise_draws(shape, 3, 0)


def test_draws_are_draw_major_and_a_pair_averages_to_the_clean_signal():
    latent = np.random.default_rng(0).standard_normal((3, 4, 8, 8)).astype(np.float32)
    draws = noise_draws(latent.shape[1:], 0, 2)
    noised = noise_latents(latent, draws, 0.25)
    assert noised.shape == (6, 4, 8, 8)
    np.testing.assert_array_equal(noised[4], q_sample(latent[1], draws[1], 0.25))  # row k * B + b
    # the identity "denoiser": the antithetic pair's mean is exactly the scaled clean latent
    np.testing.assert_allclose(mean_of_draws(noised, 2), 0.5 * latent, atol=1e-6)
    np.testing.assert_array_equal(noise_latents(latent, draws[0], 0.25), q_sample(latent, draws[0], 0.25))
    with pytest.raises(ValueError, match="not 4 draws"):
        mean_of_draws(noised, 4)
