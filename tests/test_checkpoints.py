"""training.checkpoints: every tensor of an LDM / DiAD / diffusers checkpoint lands where it belongs, or we fail.

Tiny diffusers models with the SD-1.5 block layout are written in the original LDM key layout by an inverse
mapping written independently of diffusers (``tests/helpers/ldm_layout.py``), then read back through
training.checkpoints.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from helpers import ldm_layout
from helpers.ldm_layout import POSITION_IDS, SCHEDULE, ldm_vae, randomized, sff_tensors
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from runtime.errors import CheckpointError
from training.checkpoints import (
    IGNORED_AE_LOSS,
    IGNORED_FOLDERS,
    IGNORED_POSITION_IDS,
    IGNORED_SCHEDULE,
    IGNORED_VAE_REPLACED,
    SD15_LDM_CONFIG,
    diffusers_configs_from_ldm,
    load_diffusers_folder,
    load_original_checkpoint,
    load_vae_checkpoint,
    read_state_dict,
    sff_key,
    strict_load,
)

StateDict = dict[str, torch.Tensor]

TINY = copy.deepcopy(SD15_LDM_CONFIG)
TINY["model"]["params"]["unet_config"]["params"].update(model_channels=32, channel_mult=[1, 2, 2, 2], context_dim=32)
TINY["model"]["params"]["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2])
UNET_CONFIG, VAE_CONFIG = diffusers_configs_from_ldm(TINY, image_size=64)
CLIP_CONFIG = CLIPTextConfig(
    hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=99,
    max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)  # fmt: skip


# ---- tiny models with distinct random values in every tensor (so a swap of equal shapes shows) ----------------


def new_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def new_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def new_clip() -> CLIPTextModel:
    return CLIPTextModel(CLIP_CONFIG)


def new_controlnet() -> ControlNetModel:
    return ControlNetModel.from_unet(new_unet())


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {
        "unet": randomized(new_unet(), 1),
        "vae": randomized(new_vae(), 2),
        "text_encoder": randomized(new_clip(), 3),
        "controlnet": randomized(new_controlnet(), 4),
        "vae_ft": randomized(new_vae(), 5),
    }


@pytest.fixture(scope="module")
def sd_state(models) -> StateDict:
    """An SD-1.5 original checkpoint's tensors (copy before changing it)."""
    return ldm_layout.sd_state(models["unet"], models["vae"], models["text_encoder"])


@pytest.fixture(scope="module")
def diad_state(models, sd_state) -> StateDict:
    """A reference-DiAD checkpoint's tensors: SD-1.5 plus control_model.* with the nine SFF convs."""
    return ldm_layout.diad_state(sd_state, models["controlnet"], UNET_CONFIG["block_out_channels"])


def assert_lands(model: torch.nn.Module, state: StateDict, source: Path, expected: torch.nn.Module) -> None:
    """Strict-load ``state`` into ``model`` and check it is bitwise the ``expected`` model."""
    strict_load(model, state, type(model).__name__, source)
    want = expected.state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


# ---- tests ---------------------------------------------------------------------------------------------------


def test_sd15_configs_match_reference_numbers():
    unet, vae = diffusers_configs_from_ldm()
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert (unet["cross_attention_dim"], unet["attention_head_dim"], unet["layers_per_block"]) == (768, 8, 2)
    assert unet["sample_size"] == 32 and not unet["use_linear_projection"]
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["scaling_factor"] == 0.18215


def test_tiny_models_reproduce_sd15_ldm_key_names(diad_state):
    """The test's inverse mapping yields names that exist in the real v1-5-pruned.ckpt and a DiAD ckpt."""
    keys = diad_state.keys()
    for key in [
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
        "model.diffusion_model.input_blocks.11.0.out_layers.3.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.middle_block.2.emb_layers.1.bias",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight",
        "model.diffusion_model.time_embed.2.bias",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
        "first_stage_model.decoder.mid.block_2.norm2.bias",
        "first_stage_model.post_quant_conv.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
        "control_model.input_hint_block.14.weight",
        "control_model.zero_convs.11.0.weight",
        "control_model.middle_block_out.0.bias",
        "control_model.down23.0.weight",
    ]:
        assert key in keys, key
    for blocks in ("input_blocks", "output_blocks"):
        indices = {int(k.split(".")[3]) for k in keys if k.startswith(f"model.diffusion_model.{blocks}.")}
        assert indices == set(range(12)), blocks


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_original_sd_checkpoint(models, sd_state, tmp_path, suffix):
    path = tmp_path / f"v1-5-pruned{suffix}"
    state = sd_state
    if suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 840000}, path)
    else:
        save_file(state, path)

    ck = load_original_checkpoint(path, UNET_CONFIG, VAE_CONFIG)

    assert ck.controlnet is None and ck.sff is None and ck.tokenizer is None
    assert_lands(new_unet(), ck.unet, ck.sources["unet"], models["unet"])
    assert_lands(new_vae(), ck.vae, ck.sources["vae"], models["vae"])
    assert_lands(new_clip(), ck.text_encoder, ck.sources["text_encoder"], models["text_encoder"])
    (report,) = ck.reports
    assert report.consumed == {
        "unet": len(models["unet"].state_dict()),
        "vae": len(models["vae"].state_dict()),
        "text_encoder": len(models["text_encoder"].state_dict()),
    }
    assert sorted(report.ignored[IGNORED_SCHEDULE]) == sorted(SCHEDULE)
    assert report.ignored[IGNORED_POSITION_IDS] == [POSITION_IDS]
    assert report.unexpected == []
    assert sum(report.consumed.values()) + sum(map(len, report.ignored.values())) == len(state)
    assert "ignored (schedule buffers / EMA): 15" in report.summary()


def test_diffusers_folder(models, tmp_path):
    models["unet"].save_pretrained(tmp_path / "unet")
    models["vae"].save_pretrained(tmp_path / "vae")
    models["text_encoder"].save_pretrained(tmp_path / "text_encoder")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "scheduler").mkdir()

    ck = load_diffusers_folder(tmp_path)

    assert_lands(new_unet(), ck.unet, ck.sources["unet"], models["unet"])
    assert_lands(new_vae(), ck.vae, ck.sources["vae"], models["vae"])
    assert_lands(new_clip(), ck.text_encoder, ck.sources["text_encoder"], models["text_encoder"])
    assert ck.tokenizer == tmp_path / "tokenizer"
    assert ck.reports[0].ignored == {IGNORED_FOLDERS: ["scheduler/"]}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("vae/diffusion_pytorch_model.safetensors", r"vae: the weights do not fit AutoencoderKL: 1 missing keys: decoder"),
        ("text_encoder/model.safetensors", r"text_encoder: the weights do not fit CLIPTextModel: 1 missing keys: "),
        ("unet/diffusion_pytorch_model.safetensors", r"unet: cannot load UNet2DConditionModel"),
    ],
)
def test_damaged_diffusers_folder_fails(models, tmp_path, damage, message):
    for name in ("unet", "vae", "text_encoder"):
        models[name].save_pretrained(tmp_path / name)
    weights = tmp_path / damage
    if damage.startswith("unet"):
        _truncate(weights)
    else:
        state = load_file(weights)
        del state[min(state)]
        save_file(state, weights)
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path)) + "/" + message):
        load_diffusers_folder(tmp_path)


def test_fine_tuned_vae_overrides(models, sd_state, tmp_path):
    sd_path = tmp_path / "v1-5-pruned.safetensors"
    save_file(sd_state, sd_path)
    ft_path = tmp_path / "mvtecad_fs.ckpt"
    ae = ldm_vae(models["vae_ft"], prefix="")
    loss = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.randn(64, 3, 4, 4)}
    torch.save({"state_dict": {**ae, **loss}, "epoch": 3, "global_step": 25000}, ft_path)

    ck = load_original_checkpoint(sd_path, UNET_CONFIG, VAE_CONFIG, vae_path=ft_path)

    assert ck.sources["vae"] == ft_path and ck.sources["unet"] == sd_path
    assert_lands(new_vae(), ck.vae, ck.sources["vae"], models["vae_ft"])
    assert_lands(new_unet(), ck.unet, ck.sources["unet"], models["unet"])
    sd_report, vae_report = ck.reports
    replaced = sd_report.ignored[IGNORED_VAE_REPLACED.format(name=ft_path)]
    assert len(replaced) == len(models["vae"].state_dict()) and "vae" not in sd_report.consumed
    assert sorted(vae_report.ignored[IGNORED_AE_LOSS]) == sorted(loss)
    assert vae_report.consumed == {"vae": len(ae)}

    prefixed = tmp_path / "ae.safetensors"  # the same autoencoder under first_stage_model.
    save_file(ldm_vae(models["vae_ft"]), prefixed)
    vae, report = load_vae_checkpoint(prefixed, VAE_CONFIG)
    assert_lands(new_vae(), vae, prefixed, models["vae_ft"])
    assert report.unexpected == [] and report.ignored == {}


def test_reference_diad_checkpoint(models, diad_state, tmp_path):
    path = tmp_path / "diad.ckpt"
    state = {**diad_state, "lvlb_weights": torch.rand(1000)}
    torch.save(state, path)  # build_model.py saves the bare model.state_dict()

    ck = load_original_checkpoint(path, UNET_CONFIG, VAE_CONFIG)

    assert_lands(new_controlnet(), ck.controlnet, ck.sources["controlnet"], models["controlnet"])
    assert_lands(new_unet(), ck.unet, ck.sources["unet"], models["unet"])
    assert_lands(new_vae(), ck.vae, ck.sources["vae"], models["vae"])
    sff = sff_tensors(UNET_CONFIG["block_out_channels"])
    assert set(ck.sff) == {sff_key(s, t) for s in (6, 7, 8) for t in (9, 10, 11)}
    for i, source in enumerate((6, 7, 8), start=1):
        for j, target in enumerate((9, 10, 11), start=1):
            assert torch.equal(ck.sff[sff_key(source, target)], sff[f"control_model.down{i}{j}.0.weight"])
    (report,) = ck.reports
    assert report.consumed["controlnet"] == len(models["controlnet"].state_dict())
    assert report.consumed["sff"] == 9
    assert report.unexpected == []
    assert sum(report.consumed.values()) + sum(map(len, report.ignored.values())) == len(state)


@pytest.mark.parametrize(
    "extra",
    [
        "model.diffusion_model.input_blocks.1.2.weight",  # inside the UNet prefix: diffusers' converter skips it
        "first_stage_model.encoder.extra.weight",
        "control_model.down11.0.bias",  # the SFF convs have no bias
        "control_model.label_emb.0.0.weight",
        "cond_stage_model.model.ln_final.weight",  # an OpenCLIP (SD-2) text encoder
        "something_else",
    ],
)
def test_unknown_key_is_raised_or_reported(models, diad_state, tmp_path, extra):
    path = tmp_path / "extra.safetensors"
    save_file({**diad_state, extra: torch.ones(3)}, path)

    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}: 1 tensors .*{re.escape(extra)}"):
        load_original_checkpoint(path, UNET_CONFIG, VAE_CONFIG)

    ck = load_original_checkpoint(path, UNET_CONFIG, VAE_CONFIG, allow_unexpected=True)
    assert ck.reports[0].unexpected == [extra]
    assert "UNEXPECTED, not used: 1" in ck.reports[0].summary()
    assert_lands(new_unet(), ck.unet, path, models["unet"])
    assert_lands(new_controlnet(), ck.controlnet, path, models["controlnet"])


def test_incomplete_sff_block_fails(diad_state, tmp_path):
    path = tmp_path / "diad.safetensors"
    state = dict(diad_state)
    del state["control_model.down32.0.weight"]
    save_file(state, path)
    with pytest.raises(CheckpointError, match=r"incomplete SFF block, missing control_model\.down32\.0\.weight"):
        load_original_checkpoint(path, UNET_CONFIG, VAE_CONFIG)


def test_missing_or_misshaped_tensor_gives_readable_error(sd_state, tmp_path):
    path = tmp_path / "broken.safetensors"
    state = dict(sd_state)
    del state["model.diffusion_model.input_blocks.4.0.skip_connection.weight"]
    state["model.diffusion_model.out.2.weight"] = torch.zeros(4, 16, 3, 3)
    save_file(state, path)
    ck = load_original_checkpoint(path, UNET_CONFIG, VAE_CONFIG)
    with pytest.raises(CheckpointError) as err:
        strict_load(new_unet(), ck.unet, "unet", ck.sources["unet"])
    message = str(err.value)
    assert message.startswith(f"{path}: the unet tensors do not fit the UNet2DConditionModel")
    assert "1 missing: down_blocks.1.resnets.0.conv_shortcut.weight" in message
    assert "1 with the wrong shape: conv_out.weight (checkpoint 4x16x3x3, model 4x32x3x3)" in message


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("name", ["truncated.ckpt", "truncated.safetensors", "garbage.ckpt", "empty.ckpt", "none.ckpt"])
def test_corrupt_or_missing_file_names_the_file(tmp_path, name):
    path = tmp_path / name
    tensors = {"a": torch.randn(64, 64), "b": torch.randn(8)}
    if name == "truncated.ckpt":
        torch.save({"state_dict": tensors}, path)
        _truncate(path)
    elif name == "truncated.safetensors":
        save_file(tensors, path)
        _truncate(path)
    elif name == "garbage.ckpt":
        path.write_bytes(b"not a checkpoint " * 64)
    elif name == "empty.ckpt":
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_original_checkpoint(path, UNET_CONFIG, VAE_CONFIG)


class TrainerConfig:
    """A non-tensor object inside a pickle: loading it would need full unpickling."""

    lr = 1e-5


def test_pickle_with_custom_object_is_refused(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"a": torch.ones(2)}, "hyper_parameters": TrainerConfig()}, path)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}: refused: .*TrainerConfig"):
        read_state_dict(path)


def test_non_tensor_entries_are_rejected(tmp_path):
    path = tmp_path / "mixed.ckpt"
    torch.save({"a": torch.ones(2), "note": "hello"}, path)
    with pytest.raises(CheckpointError, match=r"1 entries are not named tensors: 'note'"):
        read_state_dict(path)
