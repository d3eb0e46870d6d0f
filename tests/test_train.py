"""Training commands on a small synthetic dataset: stages, logs, resume, DDP replicas, autoencoder."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.finetune_autoencoder import main as finetune_main
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


def test_resume_without_checkpoint_is_a_clear_error(dataset, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "training.train", *_args(dataset, tmp_path / "none", "--max-steps", "1", "--resume")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert out.returncode == 2 and "nothing to resume" in out.stderr and "Traceback" not in out.stderr


def test_autoencoder_training_feeds_the_run(dataset, tmp_path):
    run = tmp_path / "run"
    finetune_main(["--data", str(dataset), "--out", str(run), "--max-steps", "2", "--accumulate", "1", "--batch-size", "2"])
    assert len(_log(run, "autoencoder")) == 2
    vae_before = {k: v for k, v in load_state(run / "model.safetensors").model.items() if k.startswith("vae.")}
    train_main(_args(dataset, run, "--max-steps", "1", "--unet-fraction", "0"))
    after = load_state(run / "model.safetensors").model
    assert all(torch.equal(v, after[k]) for k, v in vae_before.items())  # training started from the trained VAE


def test_ddp_replicas_stay_identical(dataset, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         str(ROOT / "tests" / "helpers" / "ddp_train.py"),
         *_args(dataset, tmp_path / "ddp", "--max-steps", "3", "--unet-fraction", "0.3", "--batch-size", "1",
                "--device", "cpu")],
        cwd=ROOT, capture_output=True, text=True, env=env, check=False, timeout=600,
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("REPLICAS")]
    assert out.returncode == 0 and line, out.stderr[-3000:]
    fields = dict(kv.split("=") for kv in line[0].split()[1:])
    assert fields["world"] == "2" and float(fields["max_abs_difference"]) == 0.0
    assert [r["stage"] for r in _log(tmp_path / "ddp")] == ["unet", "sg", "sg"]
