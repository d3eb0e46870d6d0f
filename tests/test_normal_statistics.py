"""training.models.normal_statistics: Gaussians of the scorer's features on normal images, checked against a
direct numpy computation; save/load; the scorer switches between 1 - cos and the statistics."""
import numpy as np
import pytest
import torch

from runtime.errors import CheckpointError
from training.models.normal_statistics import NormalStatistics, StatisticsFit, StatisticsSettings, channel_subsets
from training.models.scorer import FeatureScorer

WIDTHS = (6, 10)


def features(n: int, seed: int, shift: float = 0.0) -> list[torch.Tensor]:
    """Images' then reconstructions' feature maps of two layers (4x4 and 2x2), ``n`` images."""
    g = torch.Generator().manual_seed(seed)
    maps = []
    for width, side in zip(WIDTHS, (4, 2)):
        image = torch.randn(n, width, side, side, generator=g) * torch.linspace(0.5, 2, width).view(1, -1, 1, 1)
        recon = image + 0.3 * torch.randn(n, width, side, side, generator=g) + shift
        maps.append(torch.cat([image, recon]))
    return maps


def reference_distance(train: list[torch.Tensor], test: list[torch.Tensor], n: int, m: int, settings, k: int):
    """The same distance by hand in numpy, float64."""
    channels = channel_subsets(WIDTHS, settings)[k]
    def vectors(f, count):
        x = f[:count].double().numpy()[:, channels]
        r = x - f[count:].double().numpy()[:, channels]
        v = r if settings.kind == "residual" else np.concatenate([x, r], 1)
        return v.reshape(count, v.shape[1], -1).transpose(0, 2, 1)  # B, P, D
    a, b = vectors(train[k], n), vectors(test[k], m)
    mean = a.mean(0)
    centred = a - mean
    if settings.scope == "position":
        cov = np.einsum("npd,npe->pde", centred, centred) / (n - 1)
    else:
        cov = np.einsum("npd,npe->de", centred, centred) / (n * a.shape[1] - a.shape[1])
    ridge = settings.shrinkage * np.diagonal(cov, axis1=-2, axis2=-1).mean() + 1e-8
    inv = np.linalg.inv(cov + ridge * np.eye(cov.shape[-1]))
    d = b - mean
    d2 = np.einsum("bpd,pde,bpe->bp", d, inv, d) if inv.ndim == 3 else np.einsum("bpd,de,bpe->bp", d, inv, d)
    return np.sqrt(d2 / d.shape[-1])


@pytest.mark.parametrize("kind,scope", [("joint", "position"), ("residual", "shared"), ("joint", "shared")])
def test_distances_match_a_direct_computation(kind, scope):
    settings = StatisticsSettings(kind, scope, channels=4)
    train, test = features(40, 0), features(5, 1, shift=0.5)
    fit = StatisticsFit(settings, WIDTHS)
    fit.add([torch.cat([f[:20], f[40:60]]) for f in train], 20)  # two batches
    fit.add([torch.cat([f[20:40], f[60:80]]) for f in train], 20)
    statistics = fit.finish()
    assert statistics.info["images"] == 40 and len(statistics.channels_0) == 4 and len(statistics.channels_1) == 4
    got = statistics.distances(test, 5)
    for k in range(2):
        assert got[k].shape == (5, *test[k].shape[-2:])
        assert np.allclose(got[k].numpy().reshape(5, -1), reference_distance(train, test, 40, 5, settings, k),
                           rtol=1e-3, atol=1e-4)


def test_normal_images_score_lower_than_shifted_ones():
    fit = StatisticsFit(StatisticsSettings("residual", "position", 8), WIDTHS)
    fit.add(features(60, 0), 60)
    statistics = fit.finish()
    normal = [d.mean() for d in statistics.distances(features(10, 2), 10)]
    shifted = [d.mean() for d in statistics.distances(features(10, 2, shift=1.0), 10)]
    assert all(0.5 < float(n) < 1.5 for n in normal), "a normal image is about 1 per layer"
    assert all(s > 2 * n for s, n in zip(shifted, normal))


def test_save_and_load_round_trip(tmp_path):
    fit = StatisticsFit(StatisticsSettings("joint", "shared", 3, seed=4), WIDTHS)
    fit.add(features(8, 0), 8)
    statistics = fit.finish({"plan": "vae"})
    statistics.save(tmp_path / "s.safetensors")
    again = NormalStatistics.load(tmp_path / "s.safetensors")
    assert again.settings == statistics.settings and again.info == {"plan": "vae", "images": 8}
    test = features(3, 9)
    assert all(torch.equal(a, b) for a, b in zip(again.distances(test, 3), statistics.distances(test, 3)))
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="bad.safetensors: not a normal-statistics file"):
        NormalStatistics.load(tmp_path / "bad.safetensors")


def test_the_scorer_uses_statistics_when_given():
    torch.manual_seed(0)
    scorer = FeatureScorer("resnet18", (1, 2, 3), 64, pretrained=False)
    image, recon = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    cos_map, cos_score = scorer(image, recon)
    fit = StatisticsFit(StatisticsSettings("joint", "position", 8), scorer.widths())
    fit.add(scorer.backbone(scorer.backbone_input(torch.randn(6, 3, 64, 64), torch.randn(6, 3, 64, 64))), 6)
    stats_map, stats_score = scorer.use_statistics(fit.finish())(image, recon)
    assert stats_map.shape == cos_map.shape and not torch.allclose(stats_map, cos_map)
    again, _ = scorer.use_statistics(None)(image, recon)
    assert torch.equal(again, cos_map)
    wrong = StatisticsFit(StatisticsSettings("joint", "position", 8), (8, 8)).template
    with pytest.raises(ValueError, match="statistics of 2 layers for a scorer of 3"):
        scorer.use_statistics(wrong.__class__(wrong.settings, {"channels_0": torch.arange(2), "mean_0": torch.zeros(1),
                                                              "mean_1": torch.zeros(1)}))
