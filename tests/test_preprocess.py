"""runtime.preprocess against the reference pipeline: PIL bilinear resize + torchvision ToTensor/Normalize; reading
files within the limits: header checks before decoding, odd and hostile files."""
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from runtime.errors import ImageReadError, LimitError
from runtime.image_header import Header, read_header
from runtime.limits import Limits
from runtime.preprocess import (
    decode_image,
    denormalize,
    imagenet_normalize,
    preprocess,
    preprocess_mask,
    read_image,
    read_mask,
    resize,
)


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


@pytest.mark.torch
def test_preprocess_matches_torchvision_pipeline():
    from torchvision import transforms

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
    torchvision_normalized = reference.transforms[2](reference.transforms[1](resized)).numpy()
    assert np.array_equal(imagenet_normalize(resized), torchvision_normalized)
    ours, theirs = preprocess(img, 256), reference(Image.fromarray(img)).numpy()
    assert ours.shape == (3, 256, 256) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1.0 / 255 / 0.224 + 1e-6


def test_denormalize_inverts_imagenet_normalize():
    img = np.random.default_rng(3).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(denormalize(imagenet_normalize(img)), img)
    assert imagenet_normalize(img).shape == (2, 3, 16, 16)


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


# ------------------------------------------------------------------------------- hostile and odd files (issue 11)


def _pil_bytes(image, fmt: str, **options) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def picture():
    return np.random.default_rng(4).integers(0, 256, (12, 16, 3), np.uint8)


def _odd_files(picture):
    """name -> (bytes, expected decoded (height, width)) of valid files in every mode a plant may send."""
    import cv2

    rgb = Image.fromarray(picture)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    return {
        "png16": (cv2.imencode(".png", picture.astype(np.uint16) * 257)[1].tobytes(), (12, 16)),
        "tiff16": (cv2.imencode(".tif", picture.astype(np.uint16) * 257)[1].tobytes(), (12, 16)),
        "gray": (_pil_bytes(rgb.convert("L"), "PNG"), (12, 16)),
        "rgba": (_pil_bytes(rgb.convert("RGBA"), "PNG"), (12, 16)),
        "palette": (_pil_bytes(rgb.convert("P"), "PNG"), (12, 16)),
        "cmyk": (_pil_bytes(rgb.convert("CMYK"), "JPEG"), (12, 16)),
        "exif_rotated": (_pil_bytes(rgb, "JPEG", exif=exif.tobytes()), (16, 12)),
        "bmp": (cv2.imencode(".bmp", picture)[1].tobytes(), (12, 16)),
        "webp": (_pil_bytes(rgb, "WEBP", lossless=True), (12, 16)),
    }


def test_odd_but_valid_files_decode_to_rgb(picture, tmp_path):
    for name, (data, shape) in _odd_files(picture).items():
        path = tmp_path / f"{name}.png"  # the content decides, not the extension
        path.write_bytes(data)
        image = read_image(path)
        assert image.dtype == np.uint8 and image.shape == (*shape, 3), name
    lossless = read_image(tmp_path / "webp.png")
    assert np.array_equal(lossless, picture)  # RGB order kept


def test_header_sizes_are_checked_before_any_pixel_is_decoded(picture, monkeypatch):
    import cv2

    from runtime import preprocess as module

    def must_not_decode(*args):
        raise AssertionError("decoded a file whose header is over the limits")

    monkeypatch.setattr(module.cv2, "imdecode", must_not_decode)
    limits = Limits(max_pixels=100, max_side=10)
    for name, (data, shape) in _odd_files(picture).items():
        assert read_header(data, name) == Header(read_header(data, name).format, 16, 12,
                                                 read_header(data, name).buffer_bytes), name
        with pytest.raises(LimitError, match=rf"{name}: 16 x 12 = 192 pixels, over the limit of 100.*--max-pixels"):
            decode_image(np.frombuffer(data, np.uint8), name, limits)
    bomb = bytearray(cv2.imencode(".png", picture)[1].tobytes())
    bomb[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR: 20000 x 20000
    with pytest.raises(LimitError, match="20000 x 20000 = 400,000,000 pixels"):
        decode_image(np.frombuffer(bytes(bomb), np.uint8), "bomb.png")
    with pytest.raises(LimitError, match="a side over the limit of 10 pixels .*--max-side"):
        decode_image(np.frombuffer(_odd_files(picture)["png16"][0], np.uint8), "wide", Limits(max_side=10))


def test_opencv_errors_become_image_read_errors(picture):
    """Issue 11.1: a small PNG whose header claims a huge size made OpenCV raise cv2.error out of the stream."""
    import cv2

    bomb = bytearray(cv2.imencode(".png", picture)[1].tobytes())
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2
    bomb[29:33] = zlib.crc32(bomb[12:29]).to_bytes(4, "big")  # a valid IHDR
    unlimited = Limits(max_pixels=10**12, max_side=10**6)  # past our limits: OpenCV itself refuses
    with pytest.raises(ImageReadError, match="bomb.png: corrupt PNG data"):
        decode_image(np.frombuffer(bytes(bomb), np.uint8), "bomb.png", unlimited)


def test_files_are_size_checked_before_reading_and_must_be_regular(tmp_path):
    big = tmp_path / "huge.png"
    with open(big, "wb") as f:
        f.truncate(5 << 30)  # sparse: 5 GiB without disk
    with pytest.raises(LimitError, match=r"huge.png: 5,368,709,120 bytes, over the file size limit .*--max-file-mb"):
        read_image(big)
    (tmp_path / "link.png").symlink_to("/dev/zero")
    with pytest.raises(ImageReadError, match="link.png: not a regular file"):
        read_image(tmp_path / "link.png")
    os.mkfifo(tmp_path / "pipe.png")  # opening a pipe for reading would wait for a writer
    with pytest.raises(ImageReadError, match="pipe.png: not a regular file"):
        read_image(tmp_path / "pipe.png")
    (tmp_path / "gif.png").write_bytes(b"GIF89a" + bytes(64))
    with pytest.raises(ImageReadError, match="gif.png: GIF header gives 0 x 0 pixels"):
        read_image(tmp_path / "gif.png")
    (tmp_path / "ico.png").write_bytes(b"\0\0\1\0" + bytes(64))
    with pytest.raises(ImageReadError, match="ico.png: not a PNG, JPEG, BMP, TIFF, WebP or GIF image"):
        read_image(tmp_path / "ico.png")


def test_png_chunks_must_fit_in_the_file(picture):
    """Fuzzing found it: OpenCV allocates what a chunk's length field claims (4 GiB for 787 bytes)."""
    import cv2

    data = bytearray(cv2.imencode(".png", picture)[1].tobytes())
    data[33:37] = (2**32 - 28).to_bytes(4, "big")  # the IDAT after the 33-byte signature + IHDR
    with pytest.raises(ImageReadError, match=r"chunk b'IDAT' at byte 33 claims 4294967268 bytes"):
        decode_image(np.frombuffer(bytes(data), np.uint8), "chunk.png")


def test_tiff_strips_count_as_decode_memory():
    header = bytearray(b"II*\0\x08\0\0\0\x04\0")  # one directory of 4 entries at byte 8
    for tag, value in ((256, 5000), (257, 5000), (258, 64), (277, 4)):  # 5000 x 5000, 4 x 64-bit samples
        header += struct.pack("<HHII", tag, 4 if tag < 258 else 3, 1, value)
    found = read_header(bytes(header) + bytes(4), "deep.tif")
    assert (found.width, found.height, found.buffer_bytes) == (5000, 5000, 5000 * 5000 * 32)
    with pytest.raises(LimitError, match="deep.tif: a TIFF strip or tile needs 800 MB to decode"):
        decode_image(np.frombuffer(bytes(header) + bytes(4), np.uint8), "deep.tif")


def test_walking_a_header_is_bounded_work():
    import time

    many_segments = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 1_000_000  # a million empty comments, no frame
    many_chunks = bytearray(b"\x89PNG\r\n\x1a\n" + b"\0\0\0\x0dIHDR" + bytes(17))
    many_chunks += b"\0\0\0\0tEXt\0\0\0\0" * 1_000_000
    for data in (many_segments, bytes(many_chunks)):
        start = time.perf_counter()
        with pytest.raises(ImageReadError, match="no frame header in the first 4096 segments|more than 131072 chunks"):
            decode_image(np.frombuffer(data, np.uint8), "many")
        assert time.perf_counter() - start < 2.0
