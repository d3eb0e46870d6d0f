"""benchmarks.ort_settings feeds ``denoise_step`` one DDIM step: the manifest's first, or where the folder's default
plan is VAE-only, the first of a DDIM plan (the folder still holds the step graph)."""
from __future__ import annotations

import numpy as np
from helpers.model_folder import LATENT, make_folder

from benchmarks.ort_settings import measure, step_feeds
from runtime.manifest import Manifest
from runtime.schedule import ddim_plan


def test_step_feeds_take_the_first_step_of_the_manifest_plan(tmp_path):
    manifest = make_folder(tmp_path / "m")  # 3 DDIM steps from t=399
    feeds = step_feeds(manifest)
    first = manifest.plan()
    assert feeds["timestep"].tolist() == [float(first.timesteps[0])] and feeds["x_t"].shape == (1, *LATENT)
    np.testing.assert_allclose(feeds["alpha_prev"], first.alphas_prev[:1], rtol=1e-6)


def test_step_feeds_and_measure_on_a_vae_only_folder(tmp_path):
    manifest = make_folder(tmp_path / "m")
    manifest.data["schedule"].update(ddim_plan(0).to_dict())  # the default plan VAE-only (`export --steps 0`)
    manifest.save()
    manifest = Manifest.load(manifest.root)
    assert manifest.plan().vae_only
    feeds = step_feeds(manifest)
    plan = ddim_plan()  # the default DDIM plan from t=999
    assert all(v.shape == (1,) and v.dtype == np.float32 for k, v in feeds.items() if k not in ("x_t", "hint"))
    assert feeds["timestep"].tolist() == [float(plan.timesteps[0])]
    np.testing.assert_allclose(feeds["alpha_t"], plan.alphas[:1], rtol=1e-6)
    result = measure(str(manifest.root), "default", 2)
    assert len(result["steps_s"]) == 2 and result["session_s"] > 0
