"""Golden numbers of the official DiAD code on seeded small weights, for ``tests/test_golden_reference.py``.

    PYTHONPATH=REFDEPS python -W ignore -m benchmarks.golden_reference --reference DIAD_CHECKOUT [--out GOLDEN]

``DIAD_CHECKOUT``: github.com/lewandofskee/DiAD at :data:`REFERENCE_COMMIT` (a checkout or ``git archive``; the
script checks the Git blob hash of every file the numbers come from). ``REFDEPS``: the reference's extra packages,
which this project does not install; the golden file was made with ``pip install --target REFDEPS --no-deps
pytorch-lightning==1.9.5 lightning-utilities==0.11.9 torchmetrics==0.11.4 omegaconf==2.3.0
antlr4-python3-runtime==4.9.3 einops open_clip_torch ftfy wcwidth pandas tabulate "setuptools<70"`` on top of the
project venv. The test needs none of them: it reads only the golden file.

The reference model is ``models/diad.yaml`` at small widths, same graph: image 128, kl-f8 VAE with ``ch=32,
ch_mult=[1,1,1,1]``, latent 4x16x16, UNet and SG network with ``model_channels=32, channel_mult=[1,1,1,1]``,
8 heads, context 77x32, the hint encoder as coded (16-32-96-256). Every parameter, the zero-initialised ones
included, is drawn from ``numpy.random.RandomState`` (:func:`seeded_tensors`: the file stores the spec, not
the 2.5 M weights). Runs, on two seeded ImageNet-normalised-like images, one at a time as ``test.py`` does
(batch size 1; the modified ``ddim_sampling`` calls ``min()`` on the timestep tensor, so it takes no larger
batch), with ``only_mid_control=True`` as ``test.py`` sets it:

* ``released``: ``DiAD.log_images_test`` as released (posterior *sample*, q_sample to t=999, 10 DDIM steps
  901..1, classifier-free guidance 9 whose unconditional branch has the same context and hint; global RNG
  seeded with ``SEED + i`` for image ``i``), then ``test.py``'s scoring (``cal_anomaly_map(..., amap_mode='a')``,
  ``gaussian_filter(sigma=5)``, and ``EvalImageMax.encode_pred``'s 8x avg-pool max as the image score);
* ``mean``: the same with the posterior *mean* (``get_first_stage_encoding`` given ``posterior.mode()``): the one
  deliberate difference of ours, so ours must reproduce this run;
* ``nocfg``: the ``mean`` run's noised latent through the reference sampler with guidance scale 1 (no
  unconditional branch): the dropped guidance;
* ``eps.t<T>``: ``DiAD.apply_model`` (SG + UNet) on the ``mean`` run's noised latent at t = 901 and 501.

Patches needed to run the reference on a CPU at small width (applied at run time; no reference file is edited):

1. ``DDIMSampler.register_buffer`` moves every tensor to CUDA: replaced by one that keeps it where it is.
2. ``Tensor.cuda`` / ``Module.cuda`` (``test.py``'s backbone and images, ``EvalImageMax.encode_pred``) are the
   identity while the reference runs.
3. The cond stage ``FrozenCLIPEmbedder`` (downloads CLIP-L) is :class:`FixedContext`: it returns one constant
   77x32 context for every prompt (the prompt is always ""), ``training.models.diad.random_context(77, 32, 0)``,
   the stand-in our model builds for ``context="random"``.
4. The SFF branches ``down{a}{b}`` hard-code SD widths (640/1280 -> 1280): rebuilt with the same layers (3x3
   stride-2 conv without bias, InstanceNorm2d, SiLU) at the small widths, before the weights are drawn.
5. ``test.py``'s scorer backbone ``timm.create_model("resnet50", pretrained=True, features_only=True)`` is
   ``regnetx_002`` (same call, ``pretrained=False``, seeded weights): ResNet-50 weights would not fit a small
   file. ``features[1:4]`` as in ``test.py``.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import platform
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runtime.cli import run_cli
from runtime.errors import DiadError
from training.models.diad import random_context
from training.models.presets import (
    InferenceConfig,
    ModelConfig,
    ScorerConfig,
    SGConfig,
    UNetConfig,
    VAEConfig,
)

REFERENCE_COMMIT = "d2813006d298b365a32548f849f9469cb581fe0b"
# Git blob ids at REFERENCE_COMMIT of the files whose code computes the golden numbers.
REFERENCE_BLOBS = {
    "sgn/sgn.py": "694495b4224ac40b81f800dae14e56c2af30d583",
    "ldm/models/diffusion/ddpm.py": "77096809c34bf13fdac2ffc611d023016f3778fe",
    "ldm/models/diffusion/ddim.py": "d4ad4e0e10f4cd2a7afec8c727fc224fdea11f24",
    "ldm/modules/diffusionmodules/openaimodel.py": "0d1402f605ce59f104e704eb85daea36a217f555",
    "ldm/modules/diffusionmodules/util.py": "637363dfe34799e70cfdbcd11445212df9d9ca1f",
    "ldm/modules/diffusionmodules/model.py": "b089eebbe1676d8249005bb9def002ff5180715b",
    "ldm/modules/attention.py": "509cd873768f0dd75a75ab3fcdd652822b12b59f",
    "ldm/modules/distributions/distributions.py": "f2b8ef901130efc171aa69742ca0244d94d3f2e9",
    "ldm/models/autoencoder.py": "f9549fc37d45258069a07297ee975ebb2a01ea30",
    "utils/util.py": "1bd5626642bb37516ea40e7497c651d097ed66b1",
    "utils/eval_helper.py": "cf26e058d0261dd60fd3fda91e4b93de9d8f8b93",
    "models/diad.yaml": "f7e643ac4bc593345e075ef872bc6a17e978d138",
}
GOLDEN = Path("tests/data/golden_reference.safetensors")
SEED = 0
BATCH = 2
EPS_TIMESTEPS = (901, 501)
WIDTH = 32
BACKBONE = "regnetx_002"
DIFFUSION_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "control_model.")
SFF_CHANNELS = WIDTH  # every level has WIDTH channels at channel_mult [1, 1, 1, 1]


def golden_config() -> ModelConfig:
    """Our config of the reference model the golden file was made with (the reference's inference settings)."""
    return ModelConfig(
        name="golden",
        image_size=128,
        injection="mid+sff",
        sff_init="zero",
        trainable="sg+decoder",
        context="random",
        context_seed=0,
        vae=VAEConfig(block_out_channels=(WIDTH,) * 4, layers_per_block=2, latent_channels=4, norm_num_groups=32),
        unet=UNetConfig(
            block_out_channels=(WIDTH,) * 4,
            layers_per_block=2,
            attention_head_dim=8,
            cross_attention_dim=32,
            norm_num_groups=32,
            sample_size=16,
            context_length=77,
        ),
        sg=SGConfig(hint_channels=(16, 32, 96, 256)),
        scorer=ScorerConfig(backbone=BACKBONE, layers=(1, 2, 3), weights_tag="seeded"),
        inference=InferenceConfig(start_t=999, steps=10, noise_seed=0),
    )


def init_spec(name: str, shape: Sequence[int]) -> tuple[float, float]:
    """``(mean, std)`` a tensor is drawn with: weights N(0, 1/fan_in), norm gains N(1, 0.1^2), biases and
    running means N(0, 0.1^2), running variances N(1, 0.1^2). Nothing is zero, so every path is exercised."""
    if len(shape) >= 2:
        return 0.0, float(1.0 / np.sqrt(np.prod(shape[1:])))
    if name.endswith(("weight", "running_var")):
        return 1.0, 0.1
    return 0.0, 0.1


def weight_spec(tensors: Iterator[tuple[str, torch.Tensor]]) -> list[list[Any]]:
    """``[name, shape, mean, std]`` of each floating-point tensor, in order."""
    return [[name, list(t.shape), *init_spec(name, t.shape)] for name, t in tensors if t.is_floating_point()]


def seeded_tensors(spec: Sequence[Sequence[Any]], seed: int) -> dict[str, torch.Tensor]:
    """The float32 tensors of ``spec``, drawn in order from ``numpy.random.RandomState(seed)`` (whose stream
    NumPy keeps fixed across versions)."""
    rng = np.random.RandomState(seed)
    return {
        name: torch.from_numpy((mean + std * rng.standard_normal(shape)).astype(np.float32))
        for name, shape, mean, std in spec
    }


def golden_images(seed: int = SEED) -> torch.Tensor:
    """A batch of ImageNet-normalised-like images: smooth colour fields plus fine texture."""
    rng = np.random.RandomState(seed)
    coarse = torch.from_numpy(rng.standard_normal((BATCH, 3, 8, 8)).astype(np.float32))
    fine = torch.from_numpy(rng.standard_normal((BATCH, 3, 128, 128)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=128, mode="bilinear", align_corners=False)
    return (smooth + 0.3 * fine).contiguous()


class FixedContext(nn.Module):
    """Patch 3: the cond stage, one constant context for every prompt (no parameters, nothing to load)."""

    def __init__(self, length: int, dim: int, seed: int):
        super().__init__()
        self.context = random_context(length, dim, seed)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.context.expand(len(prompts), -1, -1).clone()


def git_blob(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_reference(root: Path) -> None:
    """The checkout must hold :data:`REFERENCE_COMMIT`'s code."""
    wrong = [
        name for name, blob in REFERENCE_BLOBS.items() if not (root / name).is_file() or git_blob(root / name) != blob
    ]
    if wrong:
        raise DiadError(
            f"{root}: not lewandofskee/DiAD at {REFERENCE_COMMIT[:7]} (differs or missing: {', '.join(wrong)})"
        )


@contextmanager
def reference_on_cpu(root: Path) -> Iterator[None]:
    """The reference importable from ``root``, with patches 1 and 2 in force."""
    sys.path.insert(0, str(root))
    tensor_cuda, module_cuda = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    ddim = importlib.import_module("ldm.models.diffusion.ddim")
    ddim.DDIMSampler.register_buffer = lambda self, name, attr: setattr(self, name, attr)
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = tensor_cuda, module_cuda
        sys.path.remove(str(root))


def reference_model(root: Path) -> nn.Module:
    """``models/diad.yaml`` at the small widths, with patches 3 and 4; weights not drawn yet."""
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    config = OmegaConf.load(root / "models/diad.yaml")
    params = config.model.params
    for net in (params.unet_config.params, params.control_stage_config.params):
        net.model_channels, net.channel_mult, net.context_dim = WIDTH, [1, 1, 1, 1], 32
    params.first_stage_config.params.ddconfig.update(ch=WIDTH, ch_mult=[1, 1, 1, 1], resolution=128)
    params.cond_stage_config = OmegaConf.create(
        {"target": f"{__name__}.FixedContext", "params": {"length": 77, "dim": 32, "seed": 0}}
    )
    model = instantiate_from_config(config.model)
    sg = model.control_model
    for a in (1, 2, 3):
        for b in (1, 2, 3):
            conv = nn.Conv2d(SFF_CHANNELS, SFF_CHANNELS, kernel_size=3, stride=2, padding=1, bias=False)
            setattr(sg, f"down{a}{b}", nn.Sequential(conv, nn.InstanceNorm2d(SFF_CHANNELS), nn.SiLU()))
    model.only_mid_control = True  # test.py
    return model.eval()


def reference_scorer() -> nn.Module:
    """Patch 5: ``test.py``'s feature extractor, the small backbone."""
    import timm

    return timm.create_model(BACKBONE, pretrained=False, features_only=True).eval()


def reference_scores(
    scorer: nn.Module, images: torch.Tensor, samples: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``test.py``'s scoring, one image at a time (its batch size is 1): maps (B, S, S) and scores (B,)."""
    from scipy.ndimage import gaussian_filter

    from utils.eval_helper import EvalImageMax
    from utils.util import cal_anomaly_map

    maps, scores = [], []
    for image, sample in zip(images, samples):
        input_features = scorer(image[None])[1:4]
        output_features = scorer(sample[None])[1:4]
        anomaly_map, _ = cal_anomaly_map(input_features, output_features, image.shape[-1], amap_mode="a")
        anomaly_map = gaussian_filter(anomaly_map, sigma=5)
        maps.append(torch.from_numpy(anomaly_map))
        scores.append(float(EvalImageMax.encode_pred(anomaly_map[None])[0]))
    return torch.stack(maps), torch.tensor(scores, dtype=torch.float64)


def run_log_images_test(model: nn.Module, image: torch.Tensor, seed: int, use_mean: bool) -> dict[str, torch.Tensor]:
    """``log_images_test`` as released on one image (``use_mean``: posterior mean instead of a sample), the
    global RNG seeded with ``seed``; records the latents on the way."""
    seen: dict[str, Any] = {"decoded": []}
    get_encoding, q_sample, decode = model.get_first_stage_encoding, model.q_sample, model.decode_first_stage

    def encoding(posterior):
        seen["latent_mean"] = model.scale_factor * posterior.mean
        if use_mean:
            posterior.sample = posterior.mode
        return get_encoding(posterior)

    def noised(x_start, t, noise=None):
        out = q_sample(x_start=x_start, t=t, noise=noise)
        seen.update(latent=x_start, t=t, noise=noise, noised_latent=out)
        return out

    def decoded(z, *args, **kwargs):
        seen["decoded"].append(z)
        return decode(z, *args, **kwargs)

    model.get_first_stage_encoding, model.q_sample, model.decode_first_stage = encoding, noised, decoded
    try:
        torch.manual_seed(seed)
        log = model.log_images_test({"jpg": image[None], "hint": image[None], "txt": [""]})
    finally:
        for name in ("get_first_stage_encoding", "q_sample", "decode_first_stage"):
            delattr(model, name)
    assert int(seen["t"][0]) == 999 and len(seen["decoded"]) == 2
    return {
        "latent_mean": seen["latent_mean"],
        "latent": seen["latent"],
        "noise": seen["noise"],
        "noised_latent": seen["noised_latent"],
        "sample_latent": seen["decoded"][1],
        "vae_reconstruction": log["reconstruction"],
        "reconstruction": log["samples"],
    }


def run_images(model: nn.Module, images: torch.Tensor, use_mean: bool) -> dict[str, torch.Tensor]:
    """:func:`run_log_images_test` per image (batch size 1), image ``i`` with seed ``SEED + i``; concatenated."""
    runs = [run_log_images_test(model, image, SEED + i, use_mean) for i, image in enumerate(images)]
    return {key: torch.cat([run[key] for run in runs]) for key in runs[0]}


def make_golden(root: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Run the reference; returns the golden tensors and the metadata."""
    model = reference_model(root)
    spec = weight_spec((n, p) for n, p in model.named_parameters())
    assert all(name.startswith(DIFFUSION_PREFIXES) for name, *_ in spec), "unexpected parameter groups"
    missing, unexpected = model.load_state_dict(seeded_tensors(spec, SEED), strict=False)
    assert not unexpected and all(not k.startswith(DIFFUSION_PREFIXES) for k in missing), (missing, unexpected)
    scorer = reference_scorer()
    scorer_spec = weight_spec(scorer.state_dict().items())
    scorer.load_state_dict(seeded_tensors(scorer_spec, SEED + 1), strict=False)

    images = golden_images()
    context = model.cond_stage_model.context
    out: dict[str, torch.Tensor] = {"image": images, "context": context}
    with torch.no_grad():
        released = run_images(model, images, use_mean=False)
        mean = run_images(model, images, use_mean=True)
        assert torch.equal(released["latent_mean"], mean["latent_mean"])
        out["vae.latent_mean"] = mean["latent"]
        out["vae.latent_sample"] = released["latent"]
        out["vae.reconstruction"] = mean["vae_reconstruction"]
        for name, run in (("released", released), ("mean", mean)):
            for key in ("noise", "noised_latent", "sample_latent", "reconstruction"):
                out[f"{name}.{key}"] = run[key]
            out[f"{name}.anomaly_map"], out[f"{name}.score"] = reference_scores(scorer, images, run["reconstruction"])

        cond = {"c_concat": [images], "c_crossattn": [model.get_learned_conditioning([""] * BATCH)]}
        samples = torch.cat([
            model.sample_log_test(
                {"c_concat": [image[None]], "c_crossattn": [cond["c_crossattn"][0][:1]]}, 1, True, 10,
                x_T=noised[None], timesteps=torch.tensor([999]), eta=0.0, unconditional_guidance_scale=1.0,
            )[0]
            for image, noised in zip(images, mean["noised_latent"])
        ])
        out["nocfg.sample_latent"], out["nocfg.reconstruction"] = samples, model.decode_first_stage(samples)
        for step in EPS_TIMESTEPS:
            ts = torch.full((BATCH,), step, dtype=torch.long)
            out[f"eps.t{step}"] = model.apply_model(mean["noised_latent"], ts, cond)

    import timm

    meta = {
        "reference_commit": REFERENCE_COMMIT,
        "config": json.dumps(golden_config().to_dict()),
        "weights": json.dumps({"seed": SEED, "spec": spec}),
        "scorer_weights": json.dumps({"seed": SEED + 1, "spec": scorer_spec}),
        "eps_timesteps": json.dumps(list(EPS_TIMESTEPS)),
        "made_with": json.dumps(
            {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
             "numpy": np.__version__, "command": "python -m benchmarks.golden_reference"}
        ),
    }
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}
    return tensors, meta


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.golden_reference", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--reference", required=True, help=f"lewandofskee/DiAD checkout at {REFERENCE_COMMIT[:7]}")
    parser.add_argument("--out", default=str(GOLDEN), help=f"golden file (default {GOLDEN})")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    root = Path(args.reference).resolve()
    check_reference(root)
    torch.set_num_threads(1)
    with reference_on_cpu(root):
        tensors, meta = make_golden(root)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, args.out, metadata=meta)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB, {len(tensors)} tensors)")
    for key in ("sample_latent", "reconstruction"):
        cfg, plain = tensors[f"mean.{key}"], tensors[f"nocfg.{key}"]
        print(f"{key}: guidance 9 (same context) vs none in the reference, max |difference| / max |value| = "
              f"{float((cfg - plain).abs().max() / plain.abs().max()):.3g}")
    return 0


if __name__ == "__main__":
    run_cli(main)
