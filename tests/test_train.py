"""Training commands on a small synthetic dataset: stages, logs, resume, DDP replicas, autoencoder."""
import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from runtime.cli import run_cli
from training.finetune_autoencoder import main as finetune_main
import training.loop
from training.loop import Budget, TrainingLoop, training_data
from training.run_folder import RunFolder, load_state
from training.synthetic import generate
from training.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "synthetic", seed=1, size=256, train=5, test_good=1, test_defect=1)


def _log(run: Path, name: str = "train") -> list[dict]:
    with (run / "logs" / f"{name}.csv").open() as f:
        return list(csv.DictReader(f))


def _args(data, out, *extra):
    return ["--preset", "tiny", "--data", str(data), "--out", str(out), "--batch-size", "2", "--val-every", "2", *extra]


def test_two_stages_then_resume(dataset, tmp_path):
    run = tmp_path / "run"
    train_main(_args(dataset, run, "--max-steps", "2", "--unet-fraction", "0.5"))
    rows = _log(run)
    assert [r["stage"] for r in rows] == ["unet", "sg"]
    assert rows[-1]["val_loss"] != ""  # validation on held-out normal images ran
    first = load_state(run / "model.safetensors").model
    config = RunFolder(run).read_config()
    assert config["trained"]["steps"] == 2 and config["unet_pretrained"] is True
    assert config["model"]["name"] == "tiny" and config["train"]["unet_fraction"] == 0.5

    train_main(_args(dataset, run, "--max-steps", "4", "--unet-fraction", "0.5", "--resume"))
    rows = _log(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and rows[-1]["stage"] == "sg"
    second = load_state(run / "model.safetensors").model
    sg_keys = [k for k in first if k.startswith("sg.") and first[k].is_floating_point()]
    assert any(not torch.equal(first[k], second[k]) for k in sg_keys)  # SG kept training
    vae_keys = [k for k in first if k.startswith("vae.")]
    assert all(torch.equal(first[k], second[k]) for k in vae_keys)  # the VAE is frozen


def test_resume_without_checkpoint_is_a_clear_error(dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(train_main, _args(dataset, tmp_path / "none", "--max-steps", "1", "--resume"))
    assert exit_.value.code == 2 and "nothing to resume" in capsys.readouterr().err


def test_autoencoder_training_feeds_the_run(dataset, tmp_path):
    run = tmp_path / "run"
    finetune_main(["--data", str(dataset), "--out", str(run), "--max-steps", "2", "--accumulate", "1", "--batch-size", "2"])
    assert len(_log(run, "autoencoder")) == 2
    vae_before = {k: v for k, v in load_state(run / "model.safetensors").model.items() if k.startswith("vae.")}
    train_main(_args(dataset, run, "--max-steps", "1", "--unet-fraction", "0"))
    after = load_state(run / "model.safetensors").model
    assert all(torch.equal(v, after[k]) for k, v in vae_before.items())  # training started from the trained VAE


def test_ddp_ranks_train_on_disjoint_shares_and_validate_alike(dataset):
    """The data side of a DDP run, in one process: each epoch the two ranks' training images are disjoint and
    together the whole training set; both validate on the same held-out images."""
    shares = [training_data(str(dataset), "fabric", 64, 0.25, 1, 0, rank, 2) for rank in (0, 1)]
    assert len(shares[0].train_set) == 4  # 5 fabric training images, one held out
    for epoch in (0, 1):
        orders = []
        for share in shares:
            share.sampler.set_epoch(epoch)
            orders.append(list(share.sampler))
        assert sorted(orders[0] + orders[1]) == [0, 1, 2, 3] and len(orders[0]) == 2
    held_out = [[image for image in share.val_loader] for share in shares]
    assert len(held_out[0]) == 1 and torch.equal(held_out[0][0], held_out[1][0])


@pytest.mark.slow
def test_ddp_replicas_stay_identical(dataset, tmp_path):
    """Two replicas under torchrun (three interpreters: about a minute of CPU) hold the same weights after
    training. The fast suite covers the data side of DDP in one process
    (``test_ddp_ranks_train_on_disjoint_shares_and_validate_alike``) and single-process training, stages and
    resume; the gradient all-reduce across replicas only here. ``--standalone`` puts the rendezvous on a free
    port (a fixed one collides with any other job on the machine)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "helpers" / "ddp_train.py"),
         *_args(dataset, tmp_path / "ddp", "--max-steps", "3", "--unet-fraction", "0.3", "--batch-size", "1",
                "--device", "cpu", "--classes", "fabric")],
        cwd=ROOT, capture_output=True, text=True, env=env, check=False, timeout=600,
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("REPLICAS")]
    assert out.returncode == 0 and line, out.stderr[-3000:]
    fields = dict(kv.split("=") for kv in line[0].split()[1:])
    assert fields["world"] == "2" and float(fields["max_abs_difference"]) == 0.0
    assert [r["stage"] for r in _log(tmp_path / "ddp")] == ["unet", "sg", "sg"]


def test_autoencoder_recipe_perceptual_term_and_crops(dataset, tmp_path):
    """The preset's recipe is the default (and recorded); the perceptual term compares the scorer's features."""
    from training.finetune_autoencoder import perceptual_distance
    from training.models.presets import get_recipe
    from training.models.scorer import FeatureScorer

    run = tmp_path / "run"
    finetune_main(["--data", str(dataset), "--out", str(run), "--max-steps", "1", "--batch-size", "2"])
    recorded = RunFolder(run).read_config()["autoencoder"]
    recipe = get_recipe("tiny").autoencoder
    assert recorded["lr"] == recipe.lr and recorded["crop"] == recipe.crop == 64
    assert recorded["perceptual_weight"] == recipe.perceptual_weight > 0 and recorded["schedule"] == "cosine"

    scorer = FeatureScorer("tf_efficientnet_lite0", image_size=64)
    image = torch.randn(2, 3, 64, 64)
    reconstruction = (image + 0.5 * torch.randn_like(image)).requires_grad_(True)
    distance = perceptual_distance(scorer, image, reconstruction)
    assert distance.shape == (2,) and (distance > 0.01).all()
    assert torch.allclose(perceptual_distance(scorer, image, image), torch.zeros(2), atol=1e-5)
    distance.sum().backward()
    assert reconstruction.grad.abs().sum() > 0  # the reconstruction is pulled toward the image's features


def test_crops_and_schedule():
    from training.loop import lr_factor, random_crops

    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    crops = random_crops(images, 4, torch.Generator().manual_seed(0))
    assert crops.shape == (2, 3, 4, 4)
    for image, crop in zip(images, crops):  # each crop is a window of its own image
        windows = image.unfold(1, 4, 1).unfold(2, 4, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 4, 4)
        assert any(torch.equal(crop, w) for w in windows)
    assert torch.equal(random_crops(images, None, torch.Generator()), images)
    assert lr_factor("cosine", 0.0) == 1.0 and abs(lr_factor("cosine", 1.0) - 0.05) < 1e-12
    assert lr_factor("constant", 0.7) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor("linear", 0.5)


def test_generated_data_trains_the_unet_stage(tmp_path):
    """`--data generic` (the base model's pretraining data): endless generated images, no validation split."""
    run = tmp_path / "base"
    finetune_main(["--data", "generic", "--out", str(run), "--init", "scratch", "--max-steps", "1", "--batch-size", "2"])
    train_main(["--preset", "tiny", "--data", "generic", "--out", str(run), "--max-steps", "2", "--batch-size", "2",
                "--unet-fraction", "1"])
    rows = _log(run)
    assert [r["stage"] for r in rows] == ["unet", "unet"] and all(r["val_loss"] == "" for r in rows)
    config = RunFolder(run).read_config()
    assert config["data"] == "generic" and config["unet_pretrained"] is True


class _SlowValidation(TrainingLoop):
    """One weight; each step is instant on the test's clock, each validation (log row) takes 10 s."""

    def __init__(self, run: RunFolder, clock: list[float], minutes: float, checkpoint_minutes: float = 60.0):
        data = SimpleNamespace(batches=lambda position: iter(lambda: torch.ones(1), None))
        super().__init__(run, data, Budget(minutes, 100), 1, "constant", checkpoint_minutes, torch.device("cpu"))
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.sgd = torch.optim.SGD([self.weight], lr=0.1)
        self.clock = clock

    def optimizer(self, progress):
        return self.sgd, 0.1

    def micro_loss(self, batch, last):
        return (self.weight * batch).sum()

    def weights(self):
        return {"weight": self.weight.detach()}

    def load_weights(self, weights):
        self.weight.data.copy_(weights["weight"])

    def log_row(self, row):
        self.clock[0] += 10.0
        return row


def test_the_minutes_budget_counts_validation_and_checkpoint_time(tmp_path, monkeypatch):
    """A 6-minute DiAD budget took 7 min 14 s in the demo: the validations and checkpoints were left out."""
    clock = [0.0]
    monkeypatch.setattr(training.loop.time, "monotonic", lambda: clock[0])
    loop = _SlowValidation(RunFolder(tmp_path / "run").create(), clock, minutes=1.0)
    loop.train("test", None)
    assert loop.step == 6 and loop.elapsed == 60.0


def test_a_checkpoint_records_the_time_of_its_own_iteration(tmp_path, monkeypatch):
    """A run resumed from a mid-run checkpoint must not get that iteration's time (step, validation) again."""
    clock, saved = [0.0], []
    monkeypatch.setattr(training.loop.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(training.loop, "save_state", lambda path, state: saved.append(dict(state.meta)))
    loop = _SlowValidation(RunFolder(tmp_path / "run").create(), clock, minutes=1.0, checkpoint_minutes=0.25)
    loop.train("test", None)
    assert [(m["step"], m["elapsed"]) for m in saved][:2] == [(2, 20.0), (4, 40.0)]
    assert (saved[-1]["step"], saved[-1]["elapsed"]) == (6, 60.0)
