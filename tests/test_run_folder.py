"""Run folders: safetensors checkpoints with optimiser state survive a round trip; bad files are named."""
import pytest
import torch

from runtime.errors import CheckpointError
from training.run_folder import RunFolder, TrainingState, load_state, save_state
from training.models.presets import get_preset


def _trained_model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_resume_reproduces_the_next_step(tmp_path):
    model, opt = _trained_model_and_optimizer()
    run = RunFolder(tmp_path / "run").create()
    path = run.checkpoints / "last.safetensors"
    save_state(path, TrainingState(model.state_dict(), opt.state_dict(), {"step": 3}))
    assert run.last_checkpoint() == path and not list(run.checkpoints.glob("*.tmp"))

    state = load_state(path)
    clone = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))
    clone.load_state_dict(state.model)
    clone_opt = torch.optim.AdamW(clone.parameters(), lr=1e-2, weight_decay=0.01)
    clone_opt.load_state_dict(state.optimizer)
    assert state.meta == {"step": 3}

    batch = torch.randn(5, 4)
    for m, o in ((model, opt), (clone, clone_opt)):
        o.zero_grad()
        m(batch).pow(2).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


def test_bad_checkpoints_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.safetensors"):
        load_state(tmp_path / "nothing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        load_state(corrupt)
    with pytest.raises(CheckpointError, match="config.json"):
        RunFolder(tmp_path).read_config()


def test_config_and_logs(tmp_path):
    run = RunFolder(tmp_path).create()
    run.write_config({"preset": "tiny", "steps": 10})
    assert run.read_config() == {"preset": "tiny", "steps": 10}
    run.append_log("train", {"step": 1, "loss": 0.5})
    run.append_log("train", {"step": 2, "loss": 0.25})
    assert (tmp_path / "logs" / "train.csv").read_text().splitlines() == ["step,loss", "1,0.5", "2,0.25"]


def test_a_new_run_takes_the_image_size_and_an_existing_run_keeps_its_own(tmp_path):
    run = RunFolder(tmp_path / "run").create()
    model, _ = run.config_or_preset("tiny", 256)
    assert (model.image_size, model.unet.sample_size) == (256, 32)
    assert run.config_or_preset("tiny")[0].image_size == get_preset("tiny").image_size
    for size in (100, 64):
        with pytest.raises(CheckpointError, match=f"image size {size}: expected a multiple of 64 from 128"):
            run.config_or_preset("tiny", size)
    run.write_config({"model": model.to_dict()})
    assert run.config_or_preset("tiny")[0].image_size == 256
    with pytest.raises(CheckpointError, match="this run is at 256 px, not --image-size 128"):
        run.config_or_preset("tiny", 128)
