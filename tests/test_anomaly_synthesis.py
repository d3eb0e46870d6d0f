"""training.anomaly_synthesis and DiAD's repair loss: local, seeded defects; targets that lead back to the clean
latent."""
import numpy as np
import pytest
import torch

from runtime.schedule import alphas_cumprod
from training.anomaly_synthesis import defect_mask, perlin, synthesize
from training.models.diad import REPAIR_SNR_CAP, build_model, repair_target
from training.models.presets import get_preset


def batch(n: int = 4, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_perlin_noise_is_smooth_bounded_and_seeded():
    a = perlin(64, 4, torch.Generator().manual_seed(0))
    assert a.shape == (64, 64) and a.abs().max() <= 1.5 and a.std() > 0.1
    assert torch.equal(a, perlin(64, 4, torch.Generator().manual_seed(0)))
    assert (a[:, 1:] - a[:, :-1]).abs().max() < 0.3  # neighbours close: smooth at 16 pixels per cell


def test_defect_masks_are_local():
    g = torch.Generator().manual_seed(3)
    areas = [float(defect_mask(128, g).mean()) for _ in range(30)]
    assert min(areas) >= 0.002 and max(areas) <= np.pi * 0.25**2 + 1e-6  # inside the largest window


def test_synthesize_changes_the_chosen_rows_only_and_is_seeded():
    x = batch()
    same, none = synthesize(x, torch.Generator().manual_seed(0), 0.0)
    assert torch.equal(same, x) and not none.any()
    out, chosen = synthesize(x, torch.Generator().manual_seed(0), 1.0)
    again, _ = synthesize(x, torch.Generator().manual_seed(0), 1.0)
    assert chosen.all() and torch.equal(out, again)
    changed = (out - x).abs().amax(dim=1) > 0
    assert all(0.001 < float(c.float().mean()) < 0.25 for c in changed), "each defect is a local region"
    half, rows = synthesize(x, torch.Generator().manual_seed(5), 0.5)
    assert torch.equal(half[~rows], x[~rows]) and not torch.equal(half[rows], x[rows])


def test_repair_target_leads_back_to_the_clean_latent():
    t = np.array([0, 24, 150, 900])
    a = alphas_cumprod()[t]
    latent, noise = torch.randn(4, 8, 4, 4), torch.randn(4, 8, 4, 4)
    shift = torch.randn(4, 8, 4, 4)
    shift[1] = 0  # a row without a defect
    target, weight = repair_target(noise, shift, a)
    sa = torch.tensor(np.sqrt(a), dtype=torch.float32).view(-1, 1, 1, 1)
    sb = torch.tensor(np.sqrt(1 - a), dtype=torch.float32).view(-1, 1, 1, 1)
    x_t = sa * (latent + shift) + sb * noise
    x0 = (x_t - sb * target) / sa  # the DDIM estimate of x0 from the target noise
    assert torch.allclose(x0, latent, atol=1e-3)
    snr = a / (1 - a)
    expected = np.where([True, False, True, True], np.minimum(snr, REPAIR_SNR_CAP) / snr, 1.0)
    assert np.allclose(weight.numpy(), expected, rtol=1e-5)
    assert torch.equal(target[1], noise[1])


def test_training_loss_with_unchanged_images_is_the_plain_loss():
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        plain = model.training_loss(x, torch.Generator().manual_seed(0), max_timestep=200)
        same = model.training_loss(x, torch.Generator().manual_seed(0), max_timestep=200, corrupted=x.clone())
        other = model.training_loss(x, torch.Generator().manual_seed(0), max_timestep=200, corrupted=x + 0.5)
    assert float(same) == pytest.approx(float(plain), rel=1e-6)
    assert float(other) != pytest.approx(float(plain), rel=1e-3)


def test_patch_masking_blanks_whole_squares_in_the_chosen_rows():
    from training.anomaly_synthesis import MASK_PATCH, mask_patches

    x = batch(4, 64)
    out, chosen = mask_patches(x, torch.Generator().manual_seed(0), 1.0)
    assert chosen.all()
    for image in out:
        blank = (image == 0).all(dim=0).float()  # masked pixels are the ImageNet mean: 0 in every channel
        cells = blank.view(64 // MASK_PATCH, MASK_PATCH, 64 // MASK_PATCH, MASK_PATCH).mean(dim=(1, 3))
        assert set(cells.unique().tolist()) <= {0.0, 1.0}, "whole squares, nothing else"
        assert 0.0 < float(cells.mean()) < 0.8
    same, none = mask_patches(x, torch.Generator().manual_seed(0), 0.0)
    assert torch.equal(same, x) and not none.any()
