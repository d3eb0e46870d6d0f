"""runtime.scoring against the reference post-processing (torch interpolate, scipy gaussian, avg-pool x8)."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from runtime.scoring import anomaly_map, blur_matrix, image_score, normalize_to_threshold, pool_matrix


def _reference_map(cos_maps, size):
    import torch
    import torch.nn.functional as F

    total = sum(
        F.interpolate(torch.from_numpy(c)[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
        for c in cos_maps
    ).numpy()
    return np.stack([gaussian_filter(m, sigma=5) for m in total])


def _reference_score(maps):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(maps)[:, None]
    for _ in range(8):
        x = F.avg_pool2d(x, 8, stride=1)
    return x.flatten(1).max(dim=1).values.numpy()


@pytest.mark.torch
def test_anomaly_map_and_score_match_reference():
    rng = np.random.default_rng(0)
    cos = [rng.random((3, s, s)).astype(np.float32) * 0.5 for s in (64, 32, 16)]
    cos[0][1, 20:30, 40:44] += 1.5  # a local anomaly
    ref = _reference_map(cos, 256)
    ours = anomaly_map(cos, 256)
    assert ours.shape == (3, 256, 256) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-6)
    np.testing.assert_allclose(image_score(ours), _reference_score(ref), rtol=1e-5)
    assert np.unravel_index(ours[1].argmax(), (256, 256))[1] in range(150, 180)


def test_matrices_preserve_constants():
    assert np.allclose(blur_matrix(256).sum(axis=1), 1.0)
    p = pool_matrix(256)
    assert p.shape == (200, 256) and np.allclose(p.sum(axis=1), 1.0)
    flat = np.full((1, 256, 256), 0.7, np.float32)
    assert np.isclose(image_score(flat)[0], 0.7, atol=1e-6)


def test_normalize_maps_threshold_to_half():
    out = normalize_to_threshold(np.array([1.0, 2.0, 3.0, 10.0]), threshold=2.0, vmin=0.0, vmax=4.0)
    np.testing.assert_allclose(out, [0.25, 0.5, 0.75, 1.0])
