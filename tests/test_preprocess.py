"""runtime.preprocess against the reference pipeline: PIL bilinear resize + torchvision ToTensor/Normalize."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from runtime.errors import ImageReadError
from runtime.preprocess import denormalize, normalize, preprocess, preprocess_mask, read_image, read_mask, resize


def _pil_resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


@pytest.mark.parametrize("channels", [None, 3])
def test_resize_matches_pil_bit_for_bit_per_axis(channels):
    rng = np.random.default_rng(0)
    for _ in range(40):
        n, m = (int(v) for v in rng.integers(2, 600, size=2))
        extra = (channels,) if channels else ()
        wide = rng.integers(0, 256, size=(7, n) + extra, dtype=np.uint8)
        tall = np.ascontiguousarray(np.swapaxes(wide, 0, 1))
        assert np.array_equal(resize(wide, (7, m)), _pil_resize(wide, 7, m)), (n, m)
        assert np.array_equal(resize(tall, (m, 7)), _pil_resize(tall, m, 7)), (n, m)


def test_resize_2d_is_pil_horizontal_then_vertical():
    # Pillow's C resampler runs the horizontal pass first (the order of the Pillow the reference used);
    # recent Pillow releases sometimes pick the other order, so compare against the explicit two-pass form.
    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w, oh, ow = (int(v) for v in rng.integers(3, 500, size=4))
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        expected = _pil_resize(_pil_resize(img, h, ow), oh, ow)
        assert np.array_equal(resize(img, (oh, ow)), expected)
        assert np.abs(resize(img, (oh, ow)).astype(int) - _pil_resize(img, oh, ow)).max() <= 1


def test_preprocess_matches_torchvision_pipeline():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(300, 280, 3), dtype=np.uint8)
    reference = transforms.Compose(
        [
            transforms.Resize((256, 256)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    # Same pixels after the resize: ToTensor + Normalize must then agree bit for bit.
    resized = resize(img, 256)
    assert np.array_equal(normalize(resized), reference.transforms[2](reference.transforms[1](resized)).numpy())
    ours, theirs = preprocess(img, 256), reference(Image.fromarray(img)).numpy()
    assert ours.shape == (3, 256, 256) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1.0 / 255 / 0.224 + 1e-6


def test_denormalize_inverts_normalize():
    img = np.random.default_rng(3).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(denormalize(normalize(img)), img)
    assert torch.from_numpy(normalize(img)).shape == (2, 3, 16, 16)


def test_mask_binarised_with_greater_than_zero():
    mask = np.zeros((512, 512), np.uint8)
    mask[100:140, 200:260] = 1  # VisA masks use small labels, not 255
    out = preprocess_mask(mask, 256)
    assert set(np.unique(out)) == {0, 1}
    # bilinear edges count as defect, so the binarised region is at least the scaled box
    assert out[50:70, 100:130].all() and out.sum() >= 20 * 30


def test_read_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="missing.png"):
        read_mask(tmp_path / "missing.png")


def test_read_image_returns_rgb(tmp_path):
    import cv2

    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    rgb = read_image(tmp_path / "blue.png")
    assert rgb[0, 0].tolist() == [0, 0, 255]
