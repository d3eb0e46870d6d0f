"""The model configuration: a JSON-serialisable dataclass tree and the two presets, ``sd15`` and ``tiny``.

``sd15`` has the reference sizes (SD-1.5 UNet, kl-f8 VAE, ControlNet hint encoder 16-32-96-256, CLIP-L context
77x768). ``tiny`` has the same graph (block types, number of skips, SFF layout, 77-token context) at small widths,
so it trains on a laptop CPU. Every width is a field, so sizes can be tuned by measurement.

``python -m training.models.parameters --preset sd15`` prints the parameter counts (built on the meta device, so
nothing is allocated) next to the reference numbers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

INJECTIONS = ("mid+sff", "all")
SFF_INITS = ("small_random", "zero")
TRAINABLE_SETS = ("sg", "sg+decoder")
CONTEXTS = ("clip", "random")

# Parameter counts of the reference classes, in millions (diad-method.md §3, §4, §5, §7, §13).
REFERENCE_PARAMETERS_M = {
    "unet": 859.52,
    "unet_encoder": 348.71,  # input_blocks 249.62 + middle 97.04 + time 2.05
    "unet_decoder": 510.81,  # output_blocks 510.80 + out 0.012
    "sg": 471.87,
    "sg_encoder_copy": 348.71,
    "hint_encoder": 1.09,
    "zero_convs": 11.48,  # 12 skip convs 9.84 + middle 1.64
    "sff": 110.59,
    "vae": 83.65,
    "vae_encoder": 34.16,
    "vae_decoder": 49.49,
    "unet+sg": 1331.39,
    "trainable": 982.68,
}


@dataclass
class VAEConfig:
    """diffusers ``AutoencoderKL`` (kl-f8: four levels, so the latent is 1/8 of the image)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215


@dataclass
class UNetConfig:
    """diffusers ``UNet2DConditionModel`` in the SD-1.5 layout (3 cross-attention down blocks + 1 plain)."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    # diffusers' (legacy) name: for SD-1.x this is the number of heads, 8, i.e. head widths 40, 80, 160.
    attention_head_dim: int = 8
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    sample_size: int = 32  # latent side for 256x256 images
    context_length: int = 77  # CLIP tokens


@dataclass
class SGConfig:
    """The Semantic-Guided network: ControlNet hint encoder widths and the SFF initialisation gain."""

    hint_channels: tuple[int, ...] = (16, 32, 96, 256)
    sff_init_gain: float = 1e-2  # kaiming-normal x gain when ModelConfig.sff_init == "small_random"


@dataclass
class ScorerConfig:
    """timm backbone whose feature maps are compared (``1 - cos``) between image and reconstruction."""

    backbone: str = "resnet50"
    layers: tuple[int, ...] = (1, 2, 3)
    weights_tag: str = "a1_in1k"  # timm's default resnet50 weights in the reference's timm version
    weights: str | None = None  # local .safetensors / timm checkpoint; None: look in the local HF cache
    # "none": the reference's 1 - cos; "residual" / "joint": the distance from normal statistics of the feature
    # residual (and of the image's features), fitted on the training images (training.models.normal_statistics)
    statistics: str = "none"
    statistics_scope: str = "position"  # one Gaussian per position, or "shared": one covariance for all positions
    statistics_channels: int = 64  # channels kept per layer and stream


@dataclass
class InferenceConfig:
    """Noise the latent to ``start_t``, then ``steps`` DDIM steps (eta 0) with the fixed noise of ``noise_seed``.

    ``draws``: noise draws per image (antithetic pairs, :func:`runtime.schedule.noise_draws`), each denoised, their
    latents averaged before decoding; 1 is the reference's single draw.
    """

    start_t: int = 999
    steps: int = 10
    noise_seed: int = 0
    draws: int = 1

    def __post_init__(self) -> None:
        if self.draws < 1:
            raise ValueError(f"inference.draws must be at least 1, got {self.draws}")


@dataclass
class AutoencoderRecipe:
    """How ``training.finetune_autoencoder`` trains: its defaults, per preset.

    Loss: the reference's ``(|x - x'| + perceptual_weight * P) / exp(logvar) + logvar`` summed per image, plus
    ``kl_weight`` KL, where ``P`` is the scorer backbone's mean ``1 - cos`` (the reference uses LPIPS, weight 1).
    ``crop``: side of the random square crops trained on (None: whole images). Adam(0.5, 0.9).
    """

    lr: float
    batch_size: int
    accumulate: int
    perceptual_weight: float = 1.0
    crop: int | None = None
    schedule: str = "constant"  # or "cosine": from lr down to lr / 20 over the budget
    kl_weight: float = 1e-6


@dataclass
class DiADRecipe:
    """How ``training.train`` trains: its defaults, per preset (AdamW; reference: lr 1e-5, weight decay 0.01)."""

    lr: float
    batch_size: int
    accumulate: int = 1
    schedule: str = "constant"
    unet_lr: float | None = None  # the unet stage's, when the UNet is trained from scratch (default: lr)
    weight_decay: float = 0.01
    max_timestep: int = 1000  # the sg stage trains at t ~ U{0..max_timestep-1}; the reference: all 1000
    synthesis: float = 0.0  # share of each batch given a synthetic defect to remove (training.anomaly_synthesis)


@dataclass
class Recipe:
    autoencoder: AutoencoderRecipe
    diad: DiADRecipe


@dataclass
class ModelConfig:
    """Everything that fixes the model graph and its inference; ``to_dict``/``from_dict`` round-trip via JSON.

    ``injection``: "mid+sff" is the reference scripts' ``only_mid_control=True`` (only the middle residual and
    the three SFF outputs reach the UNet); "all" is vanilla ControlNet (12 skips + mid, SFF replacing 9..11).
    ``sff_init``: "small_random" lets SFF learn; "zero" is the reference (dead gradient, diad-method.md §6.3).
    ``trainable``: "sg" (the paper) or "sg+decoder" (the reference code: SG + UNet up blocks + output layers).
    ``context``: "clip" means the cross-attention context must be CLIP-L(""); "random" accepts a seeded
    N(0, 1) stand-in (for models trained from scratch, e.g. ``tiny``).
    """

    name: str = "sd15"
    image_size: int = 256
    injection: str = "mid+sff"
    sff_init: str = "small_random"
    trainable: str = "sg+decoder"
    context: str = "clip"
    context_seed: int = 0
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    sg: SGConfig = field(default_factory=SGConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        for name, allowed in [
            ("injection", INJECTIONS),
            ("sff_init", SFF_INITS),
            ("trainable", TRAINABLE_SETS),
            ("context", CONTEXTS),
        ]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"config {name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.unet.sample_size * 2 ** (len(self.vae.block_out_channels) - 1) != self.image_size:
            raise ValueError(
                f"unet.sample_size {self.unet.sample_size} does not match image_size {self.image_size} "
                f"through a VAE with {len(self.vae.block_out_channels)} levels"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def at_image_size(self, size: int) -> ModelConfig:
        """This config for ``size`` px images (the networks are fully convolutional: the same layers, the latent
        side ``size`` / the VAE's downsampling)."""
        factor = 2 ** (len(self.vae.block_out_channels) - 1)
        unit = factor * 2 ** (len(self.unet.block_out_channels) - 1)
        if size < 2 * unit or size % unit:
            raise ValueError(f"image size {size}: expected a multiple of {unit} from {2 * unit} (the VAE's and the "
                             "UNet's downsampling must leave at least 2 x 2 latent cells)")
        return dataclasses.replace(self, image_size=size, unet=dataclasses.replace(self.unet, sample_size=size // factor))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not fall back to a default)."""
        return _from_dict(cls, data)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}; expected some of {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[key] = _from_dict(type(default), value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def sd15() -> ModelConfig:
    """The reference sizes (SD-1.5 + kl-f8 + CLIP-L context)."""
    return ModelConfig()


def tiny() -> ModelConfig:
    """The same graph at small widths, with a seeded random context; starts from the shipped base model.

    128 px images; 8 latent channels with a VAE scaling factor of 0.33, which gives the latents unit variance as
    SD's 0.18215 does for SD's VAE; ``all`` SG injection; the ImageNet EfficientNet-Lite0 scorer (layers 1-3)
    measuring the image's features and the reconstruction's feature residual against their normal statistics
    (``joint``, one covariance shared by the positions); inference from t = 24 with two DDIM steps (tau = 13, 1)
    on an antithetic pair of noise draws (ε, −ε) whose sample latents are averaged before decoding. The
    measurements behind each choice: docs/accuracy.md and docs/peers.md.
    """
    return ModelConfig(
        name="tiny",
        image_size=128,
        injection="all",
        context="random",
        vae=VAEConfig(
            block_out_channels=(16, 32, 64, 64), latent_channels=8, norm_num_groups=8, scaling_factor=0.33
        ),
        unet=UNetConfig(
            block_out_channels=(32, 64, 96, 96),
            attention_head_dim=4,
            cross_attention_dim=32,
            norm_num_groups=8,
            sample_size=16,
        ),
        sg=SGConfig(hint_channels=(8, 16, 32, 32)),
        scorer=ScorerConfig(
            backbone="tf_efficientnet_lite0", weights_tag="in1k", statistics="joint", statistics_scope="shared"
        ),
        inference=InferenceConfig(start_t=24, steps=2, draws=2),
    )


PRESETS = {"sd15": sd15, "tiny": tiny}
SCHEDULES = ("constant", "cosine")
RECIPES = {
    # The reference: lr 4.5e-5 x batch size (4 per GPU, 8 micro-batches), LPIPS weight 1; DiAD lr 1e-5.
    "sd15": Recipe(AutoencoderRecipe(lr=1.8e-4, batch_size=4, accumulate=8), DiADRecipe(lr=1e-5, batch_size=4)),
    # The tiny recipe: cosine schedules, 64 px autoencoder crops, DiAD trained on t < 200 (docs/accuracy.md).
    "tiny": Recipe(
        AutoencoderRecipe(lr=1e-3, batch_size=16, accumulate=1, crop=64, schedule="cosine"),
        DiADRecipe(lr=1e-3, batch_size=4, schedule="cosine", max_timestep=200),
    ),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name]()


def get_recipe(name: str) -> Recipe:
    """The training defaults of a preset (a run's config names its preset)."""
    if name not in RECIPES:
        raise ValueError(f"no training recipe for model {name!r}: expected one of {sorted(RECIPES)}")
    return RECIPES[name]


def format_parameter_table(counts: dict[str, int], reference_m: dict[str, float] | None = None) -> str:
    """A Markdown table of parameter counts in millions, with a reference column when given."""
    lines = ["| component | parameters (M) |" + (" reference (M) |" if reference_m else "")]
    lines.append("|---|---:|" + ("---:|" if reference_m else ""))
    for name, n in counts.items():
        ref = f" {reference_m[name]:.2f} |" if reference_m and name in reference_m else (" |" if reference_m else "")
        lines.append(f"| {name} | {n / 1e6:.2f} |{ref}")
    return "\n".join(lines)
