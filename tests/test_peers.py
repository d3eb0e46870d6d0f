"""benchmarks.peers: anomalib's PaDiM and PatchCore fitted on all classes at once, scored with our metrics."""
import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("anomalib", reason='anomalib is not installed (the peers extra: pip install -e ".[peers]")')

from benchmarks import peers  # noqa: E402
from runtime.errors import CheckpointError, DatasetLayoutError, ModelFolderError  # noqa: E402
from training.data import load_index  # noqa: E402
from training.models.backbones import RANDOM  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def index(synthetic_data):
    return load_index(synthetic_data)


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_a_peer_fits_all_classes_and_scores_maps_at_mask_resolution(index, name):
    train, test = index.split("train"), index.split("test")
    torch.manual_seed(0)
    peer = peers.build_peer(name, RANDOM, coreset_ratio=0.01)
    fit_s = peers.fit_peer(peer, train, SIZE, progress=False)
    scored = peers.score_peer(peer, test, SIZE, progress=False)

    assert fit_s > 0
    assert scored.maps.shape == scored.masks.shape == (len(test), SIZE, SIZE)
    assert scored.masks.dtype == np.uint8 and scored.masks.any()
    assert np.isfinite(scored.scores).all() and np.isfinite(scored.maps).all()
    assert np.ptp(scored.scores) > 0
    if name == "padim":  # one Gaussian per stride-4 position of the 100 kept channels, from all classes' images
        assert tuple(peer.model.gaussian.mean.shape) == (peers.PADIM_FEATURES, (SIZE // 4) ** 2)
    else:  # the coreset of every training patch (stride 8)
        assert peer.model.memory_bank.shape[0] == int(len(train) * (SIZE // 8) ** 2 * 0.01)
    rows = scored.metrics()
    assert [r["class"] for r in rows] == [*index.classes, "mean"]
    assert all(0 <= rows[-1][k] <= 1 for k in peers.MEANS)


def test_a_seeded_patchcore_fit_repeats_exactly(index):
    banks = []
    for noise in (1, 2):
        np.random.rand(noise)  # other use of numpy's global generator must not change the coreset
        torch.rand(noise)
        peers.seed_all(3)
        peer = peers.build_peer("patchcore", RANDOM, coreset_ratio=0.05)
        peers.fit_peer(peer, index.split("train"), SIZE, progress=False)
        banks.append(peer.model.memory_bank)
    torch.testing.assert_close(banks[0], banks[1], rtol=0, atol=0)


def test_cholesky_inverse_inverts_and_restores_linalg_inv():
    a = torch.randn(3, 5, 7)
    spd = a @ a.transpose(1, 2) + 0.01 * torch.eye(5)
    original = torch.linalg.inv
    with peers.cholesky_inverse():
        assert torch.linalg.inv is not original
        inverse = torch.linalg.inv(spd)
    assert torch.linalg.inv is original
    torch.testing.assert_close(inverse @ spd, torch.eye(5).expand(3, 5, 5), atol=1e-4, rtol=0)


def write_run_metrics(run, data, classes):
    rows = [{"class": c, "i_auroc": 0.5 + 0.1 * k, "p_auroc": 0.9, "aupro": 0.8} for k, c in enumerate(classes)]
    mean = {"class": "mean", "i_auroc": 0.65, "p_auroc": 0.9, "aupro": None}  # null: an undefined metric
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({
        "dataset": {"path": str(data)}, "metrics": {"diad": [*rows, mean], "vae": [*rows, {**mean, "i_auroc": 0.6}]},
    }))


def test_command_writes_the_table_beside_the_runs_rows(synthetic_data, index, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "out"
    write_run_metrics(run, synthetic_data, index.classes)
    argv = ["--data", str(synthetic_data), "--run", str(run), "--out", str(out), "--weights", RANDOM,
            "--image-size", str(SIZE), "--repeats", "1", "--threads", "1", "--coreset-ratio", "0.01", "--quiet"]
    assert peers.main(argv) == 0

    record = json.loads((out / "peers.json").read_text())
    methods = [r["method"] for r in record["rows"]]
    assert methods == ["PaDiM", "PatchCore", "DiAD (run)", "VAE-only (run)"]
    padim, _, diad, vae = record["rows"]
    assert set(padim["class_i_auroc"]) == set(index.classes)
    assert padim["fit_s"] > 0 and set(padim["ms_per_image"]) == {"1", "8"}
    assert padim["i_auroc"] == pytest.approx(record["per_class"]["padim"][-1]["i_auroc"])
    assert (diad["i_auroc"], vae["i_auroc"], diad["aupro"]) == (0.65, 0.6, None)
    assert diad["class_i_auroc"][index.classes[1]] == pytest.approx(0.6)

    table = (out / "peers.md").read_text()
    assert table == capsys.readouterr().out.split("wrote ")[0]
    assert "| DiAD (run) | 0.650 | 0.900 | - |" in table and "RANDOM backbone" in table
    csv_lines = (out / "peers.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("Method,I-AUROC,P-AUROC,AU-PRO")
    assert math.isclose(float(csv_lines[3].split(",")[1]), 0.65)


def test_a_run_without_metrics_is_reported_not_fatal(tmp_path, synthetic_data):
    rows, notes = peers.run_rows(tmp_path, synthetic_data)
    assert rows == [] and "metrics.json: not found" in notes[0]


@pytest.mark.parametrize("extra, error, words", [
    (["--data", "{tmp}/missing"], DatasetLayoutError, "not found"),
    (["--data", "{data}", "--run", "{tmp}/no-run"], CheckpointError, "run folder not found"),
])
def test_bad_input_fails_before_any_fit(tmp_path, synthetic_data, monkeypatch, extra, error, words):
    monkeypatch.setattr(peers, "build_peer", lambda *a, **k: pytest.fail("fitted despite bad input"))
    argv = [a.format(tmp=tmp_path, data=synthetic_data) for a in extra] + ["--weights", RANDOM, "--quiet"]
    with pytest.raises(error, match=words):
        peers.main(argv)


def test_a_dataset_without_train_images_is_refused(tmp_path, synthetic_data, monkeypatch):
    monkeypatch.setattr(peers, "load_index", lambda path: load_index(synthetic_data).filter([]))
    monkeypatch.setattr(peers, "build_peer", lambda *a, **k: pytest.fail("fitted despite bad input"))
    with pytest.raises(DatasetLayoutError, match="no train images"):
        peers.main(["--data", str(tmp_path), "--weights", RANDOM, "--quiet"])


class FakeDetector:
    """Stands in for runtime.Detector: the manifest plan runs, steps=0 is refused as an old detector would."""

    image_size = 32
    summary = {"preset": "tiny", "steps": 2, "start_t": 24, "draws": 2}

    def __init__(self, model_dir, steps=None):
        if steps == 0:
            raise ModelFolderError(f"{model_dir}: cannot run DDIM steps=0")
        self.batches = []

    def preprocess(self, frames):
        return np.zeros((len(frames), 3, self.image_size, self.image_size), np.float32)

    def run(self, batch):
        self.batches.append(len(batch))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_detector_rows_time_the_plan_and_mark_a_refused_vae_plan_not_available(index, monkeypatch, tmp_path):
    monkeypatch.setattr(peers, "Detector", FakeDetector)
    rows, notes = peers.detector_rows(tmp_path, index.split("test")[:3], repeats=2)
    plan, vae = rows
    assert plan["method"] == "Detector (manifest plan): tiny 32 px, DDIM 2 steps from t=24, 2 draw(s)"
    assert set(plan["ms_per_image"]) == {"1", "8"} and all(v >= 0 for v in plan["ms_per_image"].values())
    assert vae["method"].endswith("not available") and "steps=0" in vae["note"] and "ms_per_image" not in vae
    assert len(notes) == 1 and "ModelFolderError" in notes[0]
