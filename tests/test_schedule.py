"""runtime.schedule: the reference's betas, alpha_bar values and DDIM plan."""
import numpy as np
import pytest
import torch

from runtime.schedule import alphas_cumprod, betas, ddim_plan, ddim_timesteps, fixed_noise, q_sample


def test_betas_are_ldm_scaled_linear():
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


def test_fixed_noise_and_q_sample():
    a, b = fixed_noise((4, 8, 8), 0), fixed_noise((4, 8, 8), 0)
    assert a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, fixed_noise((4, 8, 8), 1))
    z = np.ones((4, 8, 8), np.float32)
    x = q_sample(z, a, 0.25)
    np.testing.assert_allclose(x, 0.5 * z + np.sqrt(0.75) * a, rtol=1e-5, atol=1e-7)
