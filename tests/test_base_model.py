"""training.base_model and training.generic_images: the shipped tiny base model and its pretraining data."""
import numpy as np
import pytest
import torch

from runtime.errors import CheckpointError
from training import base_model, generic_images
from training.base_model import BASE_MODELS, initialise, load_base, read_base, write_base
from training.models.diad import build_model
from training.models.presets import get_preset
from training.run_folder import RunFolder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _tiny(seed: int):
    torch.manual_seed(seed)
    return build_model(get_preset("tiny"))


def test_generated_images_are_reproducible_and_varied():
    first = [generic_images.render(np.random.default_rng([3, i]), 64) for i in range(12)]
    again = [generic_images.render(np.random.default_rng([3, i]), 64) for i in range(12)]
    assert all(a.shape == (64, 64, 3) and a.dtype == np.uint8 for a in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    means = np.array([a.reshape(-1, 3).mean(0) for a in first])
    assert means.std(0).min() > 10  # colours differ from scene to scene
    assert np.median([a.std() for a in first]) > 5  # scenes have structure, not flat fields
    stream = generic_images.stream(3, 64)
    assert np.array_equal(next(stream), first[0]) and np.array_equal(next(stream), first[1])


def test_base_model_round_trip_in_fp16(tmp_path):
    source, target = _tiny(1), _tiny(2)
    with torch.no_grad():
        source.context.normal_()
    path = write_base(source, tmp_path / "base.safetensors", {"trained": {"steps": 7}})
    tensors, info = read_base(path)
    assert {t.dtype for k, t in tensors.items() if k != "context"} == {torch.float16}
    assert info["record"] == {"trained": {"steps": 7}}
    assert load_base(target, path) == {"trained": {"steps": 7}}
    for name, module in (("vae", lambda m: m.vae.autoencoder), ("unet", lambda m: m.unet)):
        for (key, a), b in zip(module(source).state_dict().items(), module(target).state_dict().values()):
            assert torch.equal(a.half().float(), b), f"{name}.{key}"
    assert torch.equal(source.context, target.context)
    # the SG encoder starts as a copy of the (base) UNet encoder, as build_model does from SD-1.5
    assert torch.equal(target.sg.controlnet.conv_in.weight, target.unet.conv_in.weight)


def test_base_model_loads_at_another_image_size(tmp_path):
    path = write_base(_tiny(1), tmp_path / "base.safetensors", {})
    config = get_preset("tiny")
    config.image_size, config.unet.sample_size = 256, 32
    target = build_model(config)
    load_base(target, path)
    assert torch.equal(target.unet.conv_in.weight, _tiny(1).unet.conv_in.weight.half().float())


def test_base_model_of_another_graph_or_file_is_refused(tmp_path):
    path = write_base(_tiny(1), tmp_path / "base.safetensors", {})
    config = get_preset("tiny")
    config.vae.latent_channels = 4
    with pytest.raises(CheckpointError, match="made for another model"):
        load_base(build_model(config), path)
    with pytest.raises(CheckpointError, match="base model not found.*--init scratch"):
        read_base(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="bad.safetensors: not a readable base model"):
        read_base(tmp_path / "bad.safetensors")


def test_a_new_run_starts_from_the_base_or_from_scratch(tmp_path, monkeypatch):
    path = write_base(_tiny(1), tmp_path / "base.safetensors", {"trained": {"steps": 7}})
    monkeypatch.setitem(BASE_MODELS, "tiny", path)
    model, config = _tiny(2), {}
    assert "base model" in initialise(model, RunFolder(tmp_path / "new"), config, "base")
    assert config["unet_pretrained"] is True and config["base"]["record"] == {"trained": {"steps": 7}}
    scratch, config = _tiny(3), {}
    before = scratch.unet.conv_in.weight.clone()
    assert "random weights" in initialise(scratch, RunFolder(tmp_path / "other"), config, "scratch")
    assert config["unet_pretrained"] is False and torch.equal(before, scratch.unet.conv_in.weight)

    run = RunFolder(tmp_path / "existing").create()
    run.save_model(scratch)
    again = _tiny(4)
    assert "continuing from" in initialise(again, run, {}, "base")  # a run's own weights win over the base
    assert torch.equal(again.unet.conv_in.weight, scratch.unet.conv_in.weight)


def test_sd15_has_no_base_model():
    assert base_model.default_init("sd15") == "scratch" and base_model.default_init("tiny") == "base"


def test_the_shipped_base_model_fits_the_tiny_preset():
    path = BASE_MODELS["tiny"]
    assert path.stat().st_size <= 16 * 2**20, "the shipped base model must stay within 16 MB"
    record = load_base(_tiny(0), path)
    assert record["data"] == "generic"
