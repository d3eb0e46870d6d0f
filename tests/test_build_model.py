"""training.build_model: every tensor of an SD-1.5 / diffusers / reference-DiAD checkpoint lands in the run folder.

Small SD-layout models are written as the real files would be (``tests/helpers/ldm_layout.py``), the command runs
in-process through ``run_cli``, and ``RunFolder.load_model()`` is compared tensor by tensor with the sources. The
text encoder is a small CLIP instead of CLIP-L (``clip_l_config`` is patched), with CLIP's vocabulary so that the
empty prompt's token ids exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from helpers.ldm_layout import diad_state, ldm_vae, randomized, sd_state
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from runtime.cli import run_cli
from training import build_model as command
from training.build_model import clip_l_config  # the real one: the module attribute gets patched
from training.checkpoints import diffusers_configs_from_ldm
from training.models.diad import CLIP_BOS, CLIP_EOS, DiAD, build_model, empty_prompt_context, random_context
from training.models.presets import ModelConfig, ScorerConfig, SGConfig, UNetConfig, VAEConfig, sd15
from training.models.unet import build_unet
from training.models.vae import build_autoencoder
from training.run_folder import RunFolder

# The SD-1.5 graph at small widths; levels 2 and 3 differ so that SFF branches of different targets differ in shape.
CONFIG = ModelConfig(
    name="small",
    image_size=64,
    vae=VAEConfig(block_out_channels=(32, 32, 32, 32)),
    unet=UNetConfig(block_out_channels=(32, 32, 64, 96), cross_attention_dim=32, sample_size=8),
    sg=SGConfig(hint_channels=(8, 8, 16, 16)),
    scorer=ScorerConfig(backbone="tf_efficientnet_lite0", weights_tag="in1k"),
)
CLIP = CLIPTextConfig(
    vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=CLIP_BOS, eos_token_id=CLIP_EOS,
)  # fmt: skip
ENCODER = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")
ZERO_INIT = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")
pytestmark = pytest.mark.filterwarnings("ignore:DiAD 'small'")  # RunFolder.load_model builds before loading


@pytest.fixture(autouse=True)
def small_clip(monkeypatch):
    monkeypatch.setattr(command, "clip_l_config", lambda: CLIP)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    unet = randomized(build_unet(CONFIG.unet), 1)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONFIG.sg.hint_channels)
    return {
        "unet": unet,
        "vae": randomized(build_autoencoder(CONFIG.vae), 2),
        "text_encoder": randomized(CLIPTextModel(CLIP), 3).eval(),
        "controlnet": randomized(controlnet, 4),
        "vae_ft": randomized(build_autoencoder(CONFIG.vae), 5),
    }


@pytest.fixture(scope="module")
def files(models, tmp_path_factory) -> dict[str, Path]:
    """The sources: SD-1.5 as .ckpt, .safetensors and diffusers folder, reference DiAD, a fine-tuned VAE, configs."""
    root = tmp_path_factory.mktemp("sources")
    sd = sd_state(models["unet"], models["vae"], models["text_encoder"])
    paths = {name: root / name for name in ("sd.ckpt", "sd.safetensors", "diffusers", "diad.ckpt", "vae_ft.ckpt")}
    torch.save({"state_dict": sd, "global_step": 840000}, paths["sd.ckpt"])
    save_file(sd, paths["sd.safetensors"])
    for name in ("unet", "vae", "text_encoder"):
        models[name].save_pretrained(paths["diffusers"] / name)
    torch.save(diad_state(sd, models["controlnet"], CONFIG.unet.block_out_channels), paths["diad.ckpt"])
    loss = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.randn(64, 3, 4, 4)}
    torch.save({"state_dict": {**ldm_vae(models["vae_ft"], prefix=""), **loss}}, paths["vae_ft.ckpt"])
    paths["config"] = root / "config.json"
    paths["config"].write_text(json.dumps(CONFIG.to_dict()))
    return paths


def run(*argv: str) -> int:
    """Exit status of the command, run in-process as ``python -m training.build_model`` runs it."""
    with pytest.raises(SystemExit) as exit_:
        run_cli(command.main, list(argv))
    return exit_.value.code


def build(out: Path, checkpoint: Path, config: Path, *extra: str) -> RunFolder:
    assert run("--checkpoint", str(checkpoint), "--out", str(out), "--config", str(config), *extra) == 0
    return RunFolder(out)


def fresh_model(config: ModelConfig) -> DiAD:
    """The model as built before any loading, with the command's default seed."""
    torch.manual_seed(0)
    return build_model(config, context=torch.zeros(77, config.unet.cross_attention_dim))


def assert_every_tensor(
    model: DiAD, models: dict, context: torch.Tensor, vae: str = "vae", sff: dict[str, torch.Tensor] | None = None
) -> None:
    """Each tensor of ``model`` equals its source: the UNet, ``models[vae]``, for SG the UNet encoder and the fresh
    init (SD checkpoints) or the checkpoint's ControlNet and ``sff`` (reference DiAD), and the context."""
    fresh = fresh_model(model.config).state_dict()
    unet, autoencoder = models["unet"].state_dict(), models[vae].state_dict()
    controlnet = models["controlnet"].state_dict()
    for key, got in model.state_dict().items():
        name = key.split(".", 2)[-1]
        if key.startswith("unet."):
            want = unet[key.removeprefix("unet.")]
        elif key.startswith("vae.autoencoder."):
            want = autoencoder[name]
        elif key.startswith("sg.controlnet."):
            want = controlnet[name] if sff is not None else unet[name] if name.startswith(ENCODER) else fresh[key]
        elif key.startswith("sg.sff."):
            want = sff[f"control_model.{name}"] if sff is not None else fresh[key]
        else:
            assert key == "context"
            want = context
        assert torch.equal(got, want), key


@pytest.mark.parametrize("source", ["sd.ckpt", "sd.safetensors", "diffusers"])
def test_sd_checkpoint(models, files, tmp_path, capsys, source):
    run_folder = build(tmp_path / "run", files[source], files["config"])

    model = run_folder.load_model()
    assert_every_tensor(model, models, empty_prompt_context(models["text_encoder"]))
    for key, tensor in model.sg.controlnet.state_dict().items():
        if key.startswith(ZERO_INIT):
            assert not tensor.any(), key
    assert model.sg.sff.convs()[0].weight.any()  # small_random, not zero

    config = run_folder.read_config()
    assert run_folder.model_config() == CONFIG and config["unet_pretrained"] is True
    parts = config["source"]["parts"]
    where = files[source] / "unet" if source == "diffusers" else files[source]
    assert parts["unet"].startswith(str(where)) and parts["context"].startswith('CLIP-L("") of ')
    assert (
        parts["controlnet"].startswith("encoder copied from the UNet") and parts["sff"] == "fresh (small_random init)"
    )
    (report,) = config["source"]["reports"]
    assert report["used"]["text_encoder"] == len(models["text_encoder"].state_dict())
    out = capsys.readouterr().out
    assert "| unet |" in out and "| sff |" in out
    if source != "diffusers":
        assert report["ignored"]["ignored (schedule buffers / EMA)"] == 15
        assert "ignored (schedule buffers / EMA): 15" in out


def test_reference_diad_checkpoint(models, files, tmp_path):
    run_folder = build(tmp_path / "run", files["diad.ckpt"], files["config"], "--injection", "all", "--trainable", "sg")

    model = run_folder.load_model()
    sff = {k: v for k, v in torch.load(files["diad.ckpt"]).items() if re.fullmatch(r"control_model\.down\d\d.*", k)}
    assert len(sff) == 9
    assert_every_tensor(model, models, empty_prompt_context(models["text_encoder"]), sff=sff)
    config = run_folder.read_config()
    assert (config["model"]["injection"], config["model"]["trainable"]) == ("all", "sg")
    parts = config["source"]["parts"]
    assert parts["controlnet"].startswith(str(files["diad.ckpt"])) and parts["sff"].startswith(str(files["diad.ckpt"]))
    assert config["source"]["reports"][0]["used"]["sff"] == 9


@pytest.mark.parametrize("source", ["sd.safetensors", "diffusers"])
def test_fine_tuned_vae_overrides(models, files, tmp_path, source):
    run_folder = build(tmp_path / "run", files[source], files["config"], "--vae", str(files["vae_ft.ckpt"]))

    assert_every_tensor(run_folder.load_model(), models, empty_prompt_context(models["text_encoder"]), vae="vae_ft")
    source_report = run_folder.read_config()["source"]
    assert source_report["vae"] == str(files["vae_ft.ckpt"])
    assert source_report["parts"]["vae"].startswith(str(files["vae_ft.ckpt"]))
    main_report, vae_report = source_report["reports"]
    assert "vae" not in main_report["used"] and vae_report["ignored"] == {"ignored (autoencoder training loss)": 2}


def test_no_text_encoder_keeps_the_stand_in_loudly(models, files, tmp_path):
    path = tmp_path / "no_clip.safetensors"
    save_file(sd_state(models["unet"], models["vae"], None), path)

    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))}: no text encoder"):
        run_folder = build(tmp_path / "run", path, files["config"])

    stand_in = random_context(77, CONFIG.unet.cross_attention_dim, seed=CONFIG.context_seed)
    assert_every_tensor(run_folder.load_model(), models, stand_in)
    assert run_folder.read_config()["source"]["parts"]["context"].startswith("stand-in")


@pytest.mark.parametrize(
    ("source", "section", "change", "component", "model_class"),
    [
        ("sd.safetensors", "unet", {"block_out_channels": [32, 32, 64, 64]}, "unet", "UNet2DConditionModel"),
        ("diffusers", "unet", {"block_out_channels": [32, 32, 64, 64]}, "unet", "UNet2DConditionModel"),
        ("sd.ckpt", "vae", {"block_out_channels": [32, 32, 32, 64]}, "vae", "AutoencoderKL"),
        ("diad.ckpt", "sg", {"hint_channels": [8, 8, 16, 32]}, "controlnet", "ControlNetModel"),
    ],
)
def test_mismatched_widths_exit_2_naming_file_and_component(
    files, tmp_path, capsys, source, section, change, component, model_class
):
    data = CONFIG.to_dict()
    data[section].update(change)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(data))

    status = run("--checkpoint", str(files[source]), "--out", str(tmp_path / "run"), "--config", str(config))

    err = capsys.readouterr().err
    where = files[source] / component if source == "diffusers" else files[source]
    assert status == 2 and "Traceback" not in err
    assert re.search(
        rf"^error: {re.escape(f'{where}: the {component} tensors do not fit the {model_class}')}", err, re.MULTILINE
    )
    assert "with the wrong shape" in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_unknown_key_fails_unless_allowed(models, files, tmp_path, capsys):
    path = tmp_path / "extra.safetensors"
    save_file(
        {**sd_state(models["unet"], models["vae"], models["text_encoder"]), "something_else": torch.ones(3)}, path
    )
    argv = ["--checkpoint", str(path), "--out", str(tmp_path / "run"), "--config", str(files["config"])]

    assert run(*argv) == 2
    assert re.search(
        rf"^error: {re.escape(str(path))}: 1 tensors .*something_else", capsys.readouterr().err, re.MULTILINE
    )

    assert run(*argv, "--allow-unexpected") == 0
    assert "UNEXPECTED, not used: 1: something_else" in capsys.readouterr().out
    assert RunFolder(tmp_path / "run").read_config()["source"]["reports"][0]["unexpected"] == ["something_else"]


def test_refuses_an_existing_run(files, tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    status = run("--checkpoint", str(files["sd.ckpt"]), "--out", str(tmp_path), "--config", str(files["config"]))
    assert status == 2 and "already holds a run" in capsys.readouterr().err


def test_sd15_preset_fits_sd15_checkpoints():
    """sd15's UNet and VAE have the tensor shapes of SD-1.5 (the reference yaml's numbers, via diffusers), and
    CLIP-L's text tower its 123.06 M parameters and the UNet's context width (meta device: nothing allocated)."""
    config = sd15()
    ldm_unet_config, ldm_vae_config = diffusers_configs_from_ldm()
    with torch.device("meta"):
        pairs = [
            (build_unet(config.unet), UNet2DConditionModel(**ldm_unet_config)),
            (build_autoencoder(config.vae), AutoencoderKL(**ldm_vae_config)),
        ]
        clip = CLIPTextModel(clip_l_config())
    for ours, reference in pairs:
        shapes = {k: v.shape for k, v in ours.state_dict().items()}
        assert shapes == {k: v.shape for k, v in reference.state_dict().items()}
    assert sum(p.numel() for p in clip.parameters()) == 123_060_480
    assert clip.config.hidden_size == config.unet.cross_attention_dim


def test_a_run_that_cannot_be_scored_fails_before_loading(files, tmp_path, capsys, monkeypatch):
    """sd15's resnet50 scorer without local weights: a clear error naming the download and the packaged
    alternative, before any checkpoint is read; --scorer picks the packaged ImageNet backbone instead."""
    from training.models import backbones

    monkeypatch.setattr(backbones, "cached_weights", lambda backbone, tag: None)
    resnet = ModelConfig.from_dict({**CONFIG.to_dict(), "scorer": ScorerConfig().__dict__ | {"layers": [1, 2, 3]}})
    config = tmp_path / "resnet.json"
    config.write_text(json.dumps(resnet.to_dict()))
    status = run("--checkpoint", str(tmp_path / "not-read.ckpt"), "--out", str(tmp_path / "a"), "--config", str(config))
    err = capsys.readouterr().err
    assert status == 2 and "resnet50.a1_in1k" in err and "--scorer tf_efficientnet_lite0" in err
    built = build(tmp_path / "b", files["sd.ckpt"], config, "--scorer", "tf_efficientnet_lite0")
    assert built.model_config().scorer == ScorerConfig(backbone="tf_efficientnet_lite0", weights_tag="in1k")
