"""Our model against golden numbers of the official DiAD code (``benchmarks/golden_reference.py`` made them).

The golden file holds the reference's inputs and outputs on seeded small weights (the weights are stored as a
spec and redrawn here). The weights, in the reference's LDM / ``control_model`` key layout, go through
``training.build_model``; the run folder's model and a scorer with the same backbone weights then run our forward
passes in float64. Each output must match to ``TOLERANCE`` relative to the reference tensor's largest magnitude:
``max|ours - reference| / max|reference|``. The stored numbers carry the reference's float32 rounding, which
this random-weight model amplifies to at most 6e-6 (the VAE reconstruction; the others stay below 2e-6); ours in
float64 adds none, so the check does not depend on the test machine's float32 arithmetic. (Ours in float32 is
as far from float64 as the reference is: up to 8e-6.)

Ours encodes with the posterior mean where the reference samples the posterior: the ``mean`` run is the reference
with that one change, and ours must reproduce it; the difference from the ``released`` run is pinned.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from benchmarks.golden_reference import REFERENCE_COMMIT, seeded_tensors
from runtime.schedule import ddim_plan
from training.build_model import main as build_model_main
from training.models.diad import q_sample
from training.models.presets import ModelConfig
from training.models.scorer import FeatureScorer
from training.run_folder import RunFolder

GOLDEN = Path(__file__).parent / "data" / "golden_reference.safetensors"
TOLERANCE = 1e-5


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float((ours.double() - reference.double()).abs().max() / reference.double().abs().max())


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(GOLDEN), "pt") as f:
        meta = f.metadata()
    return load_file(str(GOLDEN)), meta


@pytest.fixture(scope="module")
def ours(golden, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Our outputs for every golden tensor, from a run folder made by ``training.build_model``."""
    tensors, meta = golden
    root = tmp_path_factory.mktemp("golden")
    weights = json.loads(meta["weights"])
    save_file(seeded_tensors(weights["spec"], weights["seed"]), str(root / "reference.safetensors"))
    scorer_spec = json.loads(meta["scorer_weights"])
    scorer_weights = seeded_tensors(scorer_spec["spec"], scorer_spec["seed"])
    counters = [k.replace("running_mean", "num_batches_tracked") for k in scorer_weights if k.endswith("running_mean")]
    scorer_weights.update({k: torch.tensor(0) for k in counters})  # a timm file has them; unused in eval mode
    save_file(scorer_weights, str(root / "scorer.safetensors"))
    config = ModelConfig.from_dict(json.loads(meta["config"]))
    config.scorer.weights = str(root / "scorer.safetensors")
    (root / "model.json").write_text(json.dumps(config.to_dict()))
    with pytest.warns(UserWarning, match="no text encoder"):  # the reference ran with the same stand-in context
        build_model_main(["--checkpoint", str(root / "reference.safetensors"), "--config", str(root / "model.json"),
                          "--out", str(root / "run")])
    model = RunFolder(root / "run").load_model().double()
    scorer = FeatureScorer.from_config(config.scorer, config.image_size).double()
    tensors = {name: tensor.double() for name, tensor in tensors.items()}
    image = tensors["image"]

    out: dict[str, torch.Tensor] = {"context": model.context}
    with torch.no_grad():
        hint = model.sg.encode_hint(image)
        for t in json.loads(meta["eps_timesteps"]):
            out[f"eps.t{t}"] = model.denoise(tensors["mean.noised_latent"], t, hint)

        rec = model.reconstruct(image, noise=tensors["mean.noise"])
        out["vae.latent_mean"], out["vae.reconstruction"] = rec["latent"], rec["vae_reconstruction"]
        out["mean.noised_latent"], out["mean.sample_latent"] = rec["noised_latent"], rec["sample_latent"]
        out["mean.reconstruction"] = out["nocfg.reconstruction"] = rec["reconstruction"]
        out["nocfg.sample_latent"] = rec["sample_latent"]
        out["mean.anomaly_map"], out["mean.score"] = scorer(image, rec["reconstruction"])

        # The released run differs only in its latent (a posterior sample): the same forward diffusion.
        plan = ddim_plan(config.inference.steps, config.inference.start_t)
        out["released.noised_latent"] = q_sample(
            tensors["vae.latent_sample"], tensors["released.noise"], plan.start_alpha
        )
    return out


COMPARED = [
    "context",
    "vae.latent_mean",
    "vae.reconstruction",
    "eps.t901",
    "eps.t501",
    "mean.noised_latent",
    "mean.sample_latent",
    "mean.reconstruction",
    "mean.anomaly_map",
    "mean.score",
    "nocfg.sample_latent",
    "nocfg.reconstruction",
    "released.noised_latent",
]
RELEASED = ["released.sample_latent", "released.reconstruction", "released.anomaly_map", "released.score"]


def test_golden_file_is_small_and_names_the_reference(golden):
    tensors, meta = golden
    assert GOLDEN.stat().st_size <= 5_000_000
    assert meta["reference_commit"] == REFERENCE_COMMIT
    inputs = {"image", "vae.latent_sample", "mean.noise", "released.noise"}
    assert set(COMPARED) | set(RELEASED) | inputs == set(tensors)


@pytest.mark.parametrize("name", COMPARED)
def test_matches_reference(golden, ours, name):
    error = relative_error(ours[name], golden[0][name])
    assert error <= TOLERANCE, f"{name}: max|ours - reference| / max|reference| = {error:.3g}"


def test_posterior_mean_not_sample_is_the_one_difference(golden, ours):
    """Ours encodes to the posterior mean (the reference's ``mean`` run); the reference as released samples the
    posterior, which moves the latent and everything after it far beyond rounding."""
    tensors, _ = golden
    assert relative_error(ours["vae.latent_mean"], tensors["vae.latent_mean"]) <= TOLERANCE
    assert relative_error(ours["vae.latent_mean"], tensors["vae.latent_sample"]) > 0.1
    for name in RELEASED:
        assert relative_error(ours[name.replace("released", "mean")], tensors[name]) > 1e-2, name
