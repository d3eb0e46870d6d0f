"""--resume after a real kill: a training command killed with SIGKILL after a checkpoint, then run again with the
same arguments and ``--resume``, ends as an uninterrupted run of those arguments, bit for bit (weights, optimiser
state, random generators, data position, log). Both trainers, the tiny preset's recipe as shipped (cosine
schedules; nothing of the recipe is overridden), with a step budget: the schedule follows the steps, not the clock.
"""
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from training.finetune_autoencoder import main as finetune_main
from training.loop import TrainingLoop
from training.run_folder import RunFolder, TrainingState, load_state
from training.synthetic import generate
from training.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
# Checkpoints every 0.3 s, every 2-3 steps here: the log usually runs past the checkpoint a kill leaves.
CHECKPOINT_MINUTES = "0.005"
MARGIN = 4  # the kill comes at the latest once step STEPS - MARGIN is checkpointed
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# trainer: (module, its main, checkpoint file, log name)
TRAINERS: dict[str, tuple[str, Callable[[list[str]], int], str, str]] = {
    "autoencoder": ("training.finetune_autoencoder", finetune_main, "vae_last.safetensors", "autoencoder"),
    "diad": ("training.train", train_main, "last.safetensors", "train"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """3 normal training images a class; the runs train on one class (``--classes fabric``): the autoencoder
    on all 3, DiAD on 2 (one held out), each a batch of the recipe's size, in a new order each epoch (step)."""
    return generate(tmp_path_factory.mktemp("data") / "synthetic", seed=1, size=64, train=3, test_good=0,
                    test_defect=0)


def _checkpoint_step(path: Path) -> int:
    """The step a checkpoint records (0: none yet). Written atomically (temporary file + rename), so complete."""
    if not path.is_file():
        return 0
    with safe_open(str(path), "pt") as f:
        return int(json.loads(f.metadata()["diad_edge"])["step"])


def _logged_steps(path: Path) -> list[int]:
    """The steps of a log's complete rows (the trainer may be half-way through writing one)."""
    if not path.is_file():
        return []
    text = path.read_text()
    rows = csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1]))
    return [int(row["step"]) for row in rows]


def _kill_after_a_checkpoint(module: str, argv: list[str], run: Path, checkpoint: str, log: str) -> None:
    """Run ``python -m module argv`` and SIGKILL it once it has checkpointed step >= 1 and logged a step past
    that checkpoint (or has checkpointed step ``STEPS - MARGIN``)."""
    output = run.parent / f"{run.name}.out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with output.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and time.monotonic() < deadline:
            saved = _checkpoint_step(run / "checkpoints" / checkpoint)
            if saved >= 1 and (_logged_steps(run / "logs" / f"{log}.csv")[-1] > saved or saved >= STEPS - MARGIN):
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        process.kill()  # a no-op after the kill; stops a run that outlived the deadline
        process.wait()
    text = output.read_text()[-3000:]
    assert process.returncode == -signal.SIGKILL, f"not killed mid-run (exit {process.returncode}):\n{text}"


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors that differ between ``a`` and ``b`` (which hold the same names)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _log_without_times(run: Path, log: str) -> list[dict[str, str]]:
    with (run / "logs" / f"{log}.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(f)]


def _assert_same_end(straight: Path, resumed: Path, left: TrainingState, checkpoint: str, log: str,
                     steps: int = STEPS) -> None:
    """``resumed`` (resumed from ``left``) ends as ``straight``: weights, final checkpoint, log."""
    assert not _differing(*(load_state(run / "model.safetensors").model for run in (straight, resumed)))
    # The final checkpoints: weights and generator states ("rng.*"), optimiser moments, step and data position.
    end = [load_state(run / "checkpoints" / checkpoint) for run in (straight, resumed)]
    assert not _differing(end[0].model, end[1].model)
    assert _differing(left.model, end[1].model)  # it trained on after --resume
    moments = [{f"{p}.{k}": torch.as_tensor(v) for p, s in e.optimizer["state"].items() for k, v in s.items()}
               for e in end]
    assert not _differing(*moments)
    for e in end:
        e.meta.pop("elapsed")
    assert end[0].meta == end[1].meta and end[1].meta["step"] == end[1].meta["position"] == steps
    # The log reads as the uninterrupted run's: the steps logged after the checkpoint, before the end, not twice.
    rows = _log_without_times(resumed, log)
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1)) and rows == _log_without_times(straight, log)


def _argv(data: Path, out: Path, *extra: str, steps: int = STEPS, checkpoint_minutes: str = CHECKPOINT_MINUTES,
          ) -> list[str]:
    return ["--preset", "tiny", "--data", str(data), "--out", str(out), "--max-steps", str(steps),
            "--checkpoint-minutes", checkpoint_minutes, "--classes", "fabric", "--device", "cpu", *extra]


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_a_killed_run_resumed_with_the_same_arguments_ends_as_an_uninterrupted_one(dataset, tmp_path, trainer):
    """Uninterrupted run; the same command as a process, SIGKILLed after a checkpoint; the same command again with
    --resume. The runs in this process and the killed one compute alike: one thread each."""
    module, main, checkpoint, log = TRAINERS[trainer]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(_argv(dataset, straight)) == 0
    _kill_after_a_checkpoint(module, _argv(dataset, killed), killed, checkpoint, log)
    left = load_state(killed / "checkpoints" / checkpoint)
    assert 1 <= left.meta["step"] < STEPS and not (killed / "model.safetensors").exists()
    assert main([*_argv(dataset, killed), "--resume"]) == 0
    _assert_same_end(straight, killed, left, checkpoint, log)


class _Stopped(BaseException):
    """A run stopped mid-way (nothing catches it, as nothing catches SIGKILL)."""


def test_the_defect_generator_resumes_too(dataset, tmp_path, monkeypatch):
    """DiAD with synthetic defects and masked patches (not the tiny recipe's): their generator is part of the
    checkpoint. 4 steps, a checkpoint each, stopped in this process just before the step-3 one: step 3 is logged,
    step 2 saved."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"

    def argv(out: Path) -> list[str]:
        return _argv(dataset, out, "--synthesis", "0.5", "--masking", "0.5", steps=4, checkpoint_minutes="0")

    assert train_main(argv(straight)) == 0
    save = TrainingLoop.save_checkpoint

    def stop_at_step_3(loop: TrainingLoop, *args: Any) -> None:
        if loop.step == 3:
            raise _Stopped
        save(loop, *args)

    with monkeypatch.context() as patch, pytest.raises(_Stopped):
        patch.setattr(TrainingLoop, "save_checkpoint", stop_at_step_3)
        train_main(argv(stopped))
    left = load_state(stopped / "checkpoints" / "last.safetensors")
    assert left.meta["step"] == 2 and "rng.defects" in left.model
    assert _logged_steps(stopped / "logs" / "train.csv") == [1, 2, 3]
    assert train_main([*argv(stopped), "--resume"]) == 0
    _assert_same_end(straight, stopped, left, "last.safetensors", "train", steps=4)


def test_resume_drops_the_log_rows_after_the_checkpoint(tmp_path):
    """Rows after the checkpoint's step go, and a row a kill cut short; the rest stays byte for byte."""
    run = RunFolder(tmp_path).create()
    for step in range(1, 6):
        run.append_log("train", {"step": step, "loss": 1.0 / step, "stage": "sg"})
    log = tmp_path / "logs" / "train.csv"
    before = log.read_bytes()
    with log.open("a") as f:
        f.write("6,0.1")  # killed while writing step 6
    run.truncate_log("train", 5)
    assert log.read_bytes() == before
    run.truncate_log("train", 3)
    assert _logged_steps(log) == [1, 2, 3] and before.startswith(log.read_bytes())
    run.append_log("train", {"step": 4, "loss": 0.5, "stage": "sg"})
    assert _logged_steps(log) == [1, 2, 3, 4]
