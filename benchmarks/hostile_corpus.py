"""A folder of broken, hostile and odd image files streamed through ``python -m runtime.stream``.

    python -m benchmarks.hostile_corpus --model MODEL_DIR [--out runs/hostile] [--batch-size 8] [--keep]

Writes the corpus (:func:`write_corpus`: valid and odd-but-valid images, empty, cut, mutated and mislabelled files,
header bombs, oversized and sparse files, odd names, links to system files, a pipe), streams the folder with the
default limits and checks the per-frame contract: every listed file gives exactly one verdict or error line, files
that must decode get verdicts, hostile ones errors, and the summary counts match the lines. Prints a Markdown table
per category, the stream's peak RSS and wall time; exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from runtime.cli import run_cli
from runtime.files import IMAGE_EXTENSIONS, image_files

VERDICT, ERROR, EITHER = "verdict", "error", "either"
SUMMARY = re.compile(r"summary: (\d+) frames \((\d+) errors, (\d+) dropped\)")
PEAK_RSS_TARGET_MIB = 1536
# runs the stream command and writes its own peak RSS at exit (the kernel's count for a child also holds the
# parent's pages from before exec, so getrusage(RUSAGE_CHILDREN) would report the caller's size)
LAUNCH = (
    "import atexit, runpy, sys\n"
    "from benchmarks.memory import status_mib\n"
    "peak = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(peak, 'w').write(str(status_mib('VmHWM'))))\n"
    "sys.argv[0] = 'runtime.stream'\n"
    "runpy.run_module('runtime.stream', run_name='__main__', alter_sys=True)\n"
)


@dataclass(frozen=True)
class Entry:
    """One corpus file: its ``category`` and what the stream must make of it (``verdict``, ``error``, ``either``)."""

    category: str
    expect: str


# --------------------------------------------------------------------------------------------- encoders


def _picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture with some texture (compresses, decodes to something model-like)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return np.clip(base + rng.integers(-20, 20, (height, width, 3)), 0, 255).astype(np.uint8)


def _pil(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _cv2(ext: str, image: np.ndarray, params: Sequence[int] = ()) -> bytes:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok, ext
    return data.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def black_png(width: int, height: int, *, body: bool = True) -> bytes:
    """A valid all-black 8-bit RGB PNG of any size in about ``width * height / 1000`` bytes (one row block
    compressed once and repeated: full flushes make deflate blocks independent), or only its header."""
    header = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if not body:
        return header + _png_chunk(b"IEND", b"")
    row = bytes(1 + 3 * width)
    rows_per_block = max(1, min(height, (8 << 20) // len(row)))
    blocks, last = divmod(height, rows_per_block)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(row * rows_per_block) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.compress(row * last) + compressor.flush()
    checksum = 1
    for _ in range(blocks):
        checksum = zlib.adler32(row * rows_per_block, checksum)
    checksum = zlib.adler32(row * last, checksum)
    stream = b"\x78\xda" + block * blocks + tail + struct.pack(">I", checksum)
    return header + _png_chunk(b"IDAT", stream) + _png_chunk(b"IEND", b"")


def tiff(width: int, height: int, *, rows_per_strip: int | None = None, tile: tuple[int, int] | None = None,
         bits: int = 8, samples: int = 3, data: bytes = b"") -> bytes:
    """A little-endian baseline TIFF with one uncompressed strip (or tile) of ``data``; the tags say what they
    are told to, so headers can claim what the data does not hold."""
    tags = {256: (4, width), 257: (4, height), 258: (3, bits), 259: (3, 1), 262: (3, 2 if samples >= 3 else 1),
            277: (3, samples), 284: (3, 1)}
    if tile:
        tags |= {322: (4, tile[0]), 323: (4, tile[1]), 324: (4, 0), 325: (4, len(data))}
    else:
        tags |= {273: (4, 0), 278: (4, rows_per_strip or height), 279: (4, len(data))}
    offset_tag = 324 if tile else 273
    ifd_offset = 8 + len(data)
    tags[offset_tag] = (4, 8)
    entries = b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, (kind, value) in sorted(tags.items()))
    return b"II*\0" + struct.pack("<I", ifd_offset) + data + struct.pack("<H", len(tags)) + entries + b"\0\0\0\0"


def _patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _jpeg_sof(data: bytes) -> int:
    """The offset of the first start-of-frame segment's height field."""
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return pos + 5


def _exif_jpeg(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _pil(image, "JPEG", exif=exif.tobytes())


def _mutations(data: bytes, seed: int, count: int) -> list[bytes]:
    """``count`` copies of ``data`` with a few random bytes flipped, overwritten, inserted or deleted each."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            pos = int(rng.integers(0, len(buf)))
            op = rng.integers(0, 4)
            if op == 0:
                buf[pos] ^= 1 << int(rng.integers(0, 8))
            elif op == 1:
                buf[pos] = int(rng.integers(0, 256))
            elif op == 2:
                buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
            else:
                del buf[pos : pos + int(rng.integers(1, 16))]
        out.append(bytes(buf))
    return out


# ----------------------------------------------------------------------------------------------- corpus


def _valid_and_odd(picture: np.ndarray) -> dict[str, tuple[str, bytes]]:
    """name -> (category, bytes) of files that must decode."""
    rgb = Image.fromarray(picture)
    bgr = picture[..., ::-1]
    sixteen = (picture.astype(np.uint16) * 257)[..., ::-1]
    files = {
        "valid.png": _cv2(".png", bgr), "valid.jpg": _cv2(".jpg", bgr), "valid.bmp": _cv2(".bmp", bgr),
        "valid.tif": _cv2(".tif", bgr), "valid_lossy.webp.png": _cv2(".webp", bgr),
        "valid_1x1.png": _cv2(".png", bgr[:1, :1]), "valid_line_16384x1.png": black_png(16384, 1),
        "valid_at_limit_5000x5000.png": black_png(5000, 5000),
        "valid_side_limit_16384x1500.png": black_png(16384, 1500),
    }
    odd = {
        "png16.png": _cv2(".png", sixteen), "tiff16.tif": _cv2(".tif", sixteen),
        "gray.png": _pil(rgb.convert("L"), "PNG"), "gray.jpg": _pil(rgb.convert("L"), "JPEG"),
        "gray_alpha.png": _pil(rgb.convert("LA"), "PNG"), "rgba.png": _pil(rgb.convert("RGBA"), "PNG"),
        "rgba.tif": _pil(rgb.convert("RGBA"), "TIFF"), "rgba.webp.png": _pil(rgb.convert("RGBA"), "WEBP"),
        "palette.png": _pil(rgb.convert("P"), "PNG"),
        "palette_transparent.png": _pil(rgb.convert("P"), "PNG", transparency=0),
        "palette.bmp": _pil(rgb.convert("P"), "BMP"), "bilevel.png": _pil(rgb.convert("1"), "PNG"),
        "bilevel.tif": _pil(rgb.convert("1"), "TIFF"), "cmyk.jpg": _pil(rgb.convert("CMYK"), "JPEG"),
        "cmyk.tif": _pil(rgb.convert("CMYK"), "TIFF"), "progressive.jpg": _pil(rgb, "JPEG", progressive=True),
        "interlaced.png": _png_interlaced(picture), "lossless.webp.png": _pil(rgb, "WEBP", lossless=True),
        "lzw.tif": _pil(rgb, "TIFF", compression="tiff_lzw"),
        "deflate.tif": _pil(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "jpeg_in.tif": _pil(rgb, "TIFF", compression="jpeg"), "packbits.tif": _pil(rgb, "TIFF", compression="packbits"),
        "bgra32.bmp": _cv2(".bmp", cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)),
        "subsampled_420.jpg": _pil(rgb, "JPEG", subsampling=2), "quality1.jpg": _pil(rgb, "JPEG", quality=1),
        "icc_profile.png": _pil(rgb, "PNG", icc_profile=b"\0" * 128),
        "multipage.tif": _pil(rgb, "TIFF", save_all=True, append_images=[rgb.rotate(90, expand=True)]),
        "gif.gif": _pil(rgb, "GIF"), "gif_named.png": _pil(rgb, "GIF"),
        "wrong_extension_is_jpeg.png": _pil(rgb, "JPEG"), "wrong_extension_is_png.jpg": _cv2(".png", bgr),
    }
    odd |= {f"exif_orientation_{k}.jpg": _exif_jpeg(rgb, k) for k in range(1, 9)}
    names = {
        "with space.png", "ünïcödé.png", "日本語.jpg", "new\nline.png", "-leading-dash.png", "quote'\"s.png",
        "percent%s%n.png", "emoji😀.png", "UPPER.PNG", "Mixed.JpEg", "semi;colon.bmp", "back\\slash.png",
        "tab\tname.png", "a" * 240 + ".png", "dollar$(echo x).png", os.fsdecode(b"not_utf8_\xff\xfe.png"),
    }
    by_ext = {".png": files["valid.png"], ".jpg": files["valid.jpg"], ".jpeg": files["valid.jpg"],
              ".bmp": files["valid.bmp"]}
    out = {name: ("valid", data) for name, data in files.items()}
    out |= {name: ("odd but valid", data) for name, data in odd.items()}
    out |= {name: ("odd name", by_ext[Path(name).suffix.lower()]) for name in names}
    return out


def _png_interlaced(picture: np.ndarray) -> bytes:
    """An Adam7-interlaced PNG (neither OpenCV nor Pillow's default writes one): pass images of filter-0 rows."""
    height, width = picture.shape[:2]
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b"".join(b"\0" + row.tobytes() for x0, y0, dx, dy in passes
                   for row in picture[y0::dy, x0::dx] if picture[y0::dy, x0::dx].size)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw))
            + _png_chunk(b"IEND", b""))


def _broken(valid: dict[str, bytes], seed: int) -> dict[str, tuple[str, bytes, str]]:
    """name -> (category, bytes, expectation) of empty, cut, mutated and mislabelled files."""
    out: dict[str, tuple[str, bytes, str]] = {}
    for ext in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        out[f"empty{ext}"] = ("empty", b"", ERROR)
    for fmt, data in valid.items():
        for k, cut in enumerate((1, 4, 8, 12, 20, 33, len(data) // 4, len(data) // 2, len(data) - 10)):
            out[f"cut_{fmt}_{k}.{fmt}"] = ("cut", data[:cut], ERROR if cut <= 12 else EITHER)
        for k, mutated in enumerate(_mutations(data, seed + len(out), 12)):
            out[f"mutated_{fmt}_{k}.{fmt}"] = ("mutated", mutated, EITHER)
    ppm = b"P6\n8 8\n255\n" + bytes(192)
    zip_bytes = io.BytesIO()
    with zipfile.ZipFile(zip_bytes, "w") as archive:
        archive.writestr("x.txt", "hello")
    wrong = {
        "text.png": b"this is not an image\n", "html.jpg": b"<!doctype html><html><body>x</body></html>",
        "json.bmp": b'{"image": true}', "svg.png": b'<svg xmlns="http://www.w3.org/2000/svg"/>',
        "ppm_named.png": ppm, "zip_named.jpg": zip_bytes.getvalue(),
        "pdf_named.png": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "elf_named.png": Path(sys.executable).read_bytes()[:4096],
        "jpeg2000_named.jpg": b"\0\0\0\x0cjP  \r\n\x87\n" + bytes(64),
        "random.png": np.random.default_rng(seed).bytes(4096),
        "random.jpg": b"\xff\xd8\xff" + np.random.default_rng(seed + 1).bytes(4096),
        "only_signature.png": b"\x89PNG\r\n\x1a\n", "riff_not_webp.png": b"RIFF\x10\0\0\0WAVEfmt " + bytes(16),
        "utf16_bom.png": "not an image".encode("utf-16"), "nul_bytes.tif": bytes(1024),
    }
    out |= {name: ("not an image", data, ERROR) for name, data in wrong.items()}
    return out


def _bombs(valid: dict[str, bytes]) -> dict[str, bytes]:
    """name -> bytes of files whose header claims more than the default limits allow."""
    jpeg, bmp = valid["jpg"], valid["bmp"]
    webp_canvas = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (16383).to_bytes(3, "little") * 2
    return {
        "bomb_20000x20000_black.png": black_png(20000, 20000),
        "bomb_100000x100000_header_only.png": black_png(100000, 100000, body=False),
        "bomb_max_u31.png": black_png(2**31 - 1, 2**31 - 1, body=False),
        "bomb_just_over_pixels_5001x5000.png": black_png(5001, 5000, body=False),
        "bomb_just_over_side_16385x1.png": black_png(16385, 1),
        "bomb_sof_65500x65500.jpg": _patched(jpeg, _jpeg_sof(jpeg), ">HH", 65500, 65500),
        "bomb_bmp_1000000x8.bmp": _patched(bmp, 18, "<ii", 1_000_000, 8),
        "bomb_bmp_top_down_huge.bmp": _patched(bmp, 18, "<ii", 30000, -30000),
        "bomb_tiff_1000000x1000000.tif": tiff(1_000_000, 1_000_000, data=bytes(64)),
        "bomb_tiff_tile_65536x65536.tif": tiff(64, 64, tile=(65536, 65536), data=bytes(64)),
        "bomb_tiff_strip_64bit.tif": tiff(5000, 5000, bits=64, samples=4, data=bytes(64)),
        "bomb_webp_canvas_16384x16384.png": b"RIFF" + struct.pack("<I", 4 + len(webp_canvas)) + b"WEBP" + webp_canvas,
    }


def _special(folder: Path) -> dict[str, str]:
    """Links, a pipe and a folder with image names; name -> expectation (``skip``: not listed at all)."""
    made = {}
    for name, target in (("link_to_passwd.png", "/etc/passwd"), ("link_to_dev_zero.png", "/dev/zero"),
                         ("dangling_link.png", str(folder / "does_not_exist.png")),
                         ("link_loop.png", str(folder / "link_loop.png"))):
        os.symlink(target, folder / name)
        made[name] = ERROR
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "named_pipe.png")
        made["named_pipe.png"] = ERROR
    (folder / "folder_named.png").mkdir()
    made["folder_named.png"] = "skip"
    return made


def write_corpus(folder: str | Path, seed: int = 0) -> dict[str, Entry]:
    """Write the corpus into ``folder`` (created; it must not exist) and return file name -> :class:`Entry`."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    picture = _picture(96, 128, seed)
    bgr = picture[..., ::-1]
    valid = {"png": _cv2(".png", bgr), "jpg": _cv2(".jpg", bgr), "bmp": _cv2(".bmp", bgr),
             "tif": _cv2(".tif", bgr), "webp": _cv2(".webp", bgr)}
    corpus: dict[str, Entry] = {}

    def add(name: str, entry: Entry, data: bytes) -> None:
        if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
            name += ".png"  # WebP content under an extension the stream lists
        (folder / name).write_bytes(data)
        corpus[name] = entry

    for name, (category, data) in _valid_and_odd(picture).items():
        add(name, Entry(category, VERDICT), data)
    for name, (category, data, expect) in _broken(valid, seed).items():
        add(name, Entry(category, expect), data)
    for name, data in _bombs(valid).items():
        add(name, Entry("header bomb", ERROR), data)
    for name, size in (("sparse_3GiB.png", 3 << 30), ("sparse_just_over_limit.jpg", (256 << 20) + 1)):
        with open(folder / name, "wb") as f:
            f.write(valid["png"][:64])
            f.truncate(size)  # sparse: no disk used
        corpus[name] = Entry("oversized file", ERROR)
    for name, expect in _special(folder).items():
        corpus[name] = Entry("special file", expect)
    return corpus


# -------------------------------------------------------------------------------------------------- run


@dataclass
class Result:
    """What one stream over the corpus gave."""

    records: list[dict]
    summary: tuple[int, int, int] | None
    returncode: int
    peak_rss_mib: float
    seconds: float
    stderr: str


def stream_folder(model: str | Path, folder: Path, out: Path, batch: int = 8, extra: Sequence[str] = ()) -> Result:
    """Run ``python -m runtime.stream`` over ``folder`` in a child process; its records, summary and peak RSS."""
    jsonl, peak_file = out / "records.jsonl", out / "peak_rss_mib"
    command = [sys.executable, "-c", LAUNCH, str(peak_file), "--model", str(model), "--source", str(folder),
               "--batch-size", str(batch), "--jsonl", str(jsonl), *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False,
                          cwd=Path(__file__).resolve().parents[1])
    seconds = time.perf_counter() - start
    peak = float(peak_file.read_text()) if peak_file.exists() else float("nan")
    records = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()] if jsonl.exists() else []
    match = SUMMARY.search(done.stderr)
    summary = tuple(int(g) for g in match.groups()) if match else None
    return Result(records, summary, done.returncode, peak, seconds, done.stderr)


def check(corpus: dict[str, Entry], result: Result, folder: Path) -> tuple[list[str], dict[str, Counter]]:
    """The contract's failures (empty: all met) and per category counts of verdicts, errors and missing lines."""
    listed = {path.name for path in image_files(folder)}
    expected = {name for name, entry in corpus.items() if entry.expect != "skip"}
    problems = []
    if listed != expected:
        problems.append(f"listed files differ from the corpus: {sorted(listed ^ expected)[:5]}")
    lines = Counter(record.get("name") for record in result.records)
    counts: dict[str, Counter] = {}
    for name, entry in corpus.items():
        if entry.expect == "skip":
            continue
        got = [r for r in result.records if r.get("name") == _as_recorded(name)]
        kind = "missing" if not got else "error" if "error" in got[0] else "verdict"
        counts.setdefault(entry.category, Counter())[kind] += 1
        if len(got) != 1:
            problems.append(f"{name!r}: {len(got)} lines")
        elif entry.expect != EITHER and kind != entry.expect:
            problems.append(f"{name!r}: expected a {entry.expect}, got {got[0].get('error') or 'a verdict'}")
    errors = sum("error" in r for r in result.records)
    if result.summary != (len(result.records), errors, 0):
        problems.append(f"summary {result.summary} does not match the {len(result.records)} lines ({errors} errors)")
    if sum(lines.values()) != len(expected):
        problems.append(f"{sum(lines.values())} lines for {len(expected)} files")
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}: {result.stderr[-500:]}")
    return problems, counts


def _as_recorded(name: str) -> str:
    """A file name as the JSON lines hold it (undecodable bytes escaped)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def report(corpus: dict[str, Entry], result: Result, counts: dict[str, Counter], problems: list[str]) -> str:
    listed = sum(entry.expect != "skip" for entry in corpus.values())
    lines = ["| category | files | verdicts | error lines | missing |", "|:---|---:|---:|---:|---:|"]
    for category, c in counts.items():
        lines.append(f"| {category} | {sum(c.values())} | {c['verdict']} | {c['error']} | {c['missing']} |")
    lines += [
        "",
        (f"corpus: {len(corpus)} entries, {listed} listed by the stream; lines: {len(result.records)}; "
         f"summary (frames, errors, dropped): {result.summary}; exit status {result.returncode}"),
        (f"stream: {result.seconds:.1f} s wall, peak RSS {result.peak_rss_mib:.0f} MiB "
         f"(target < {PEAK_RSS_TARGET_MIB} MiB)"),
        "contract: " + ("met" if not problems else f"{len(problems)} failure(s)"),
        *[f"  - {p}" for p in problems[:20]],
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile_corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--out", default="runs/hostile", help="work folder (replaced; default runs/hostile)")
    parser.add_argument("--batch-size", type=int, default=8, help="stream batch size (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the corpus files afterwards")
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    folder = out / "corpus"
    corpus = write_corpus(folder)
    result = stream_folder(args.model, folder, out, args.batch_size)
    problems, counts = check(corpus, result, folder)
    if result.peak_rss_mib >= PEAK_RSS_TARGET_MIB:
        problems.append(f"peak RSS {result.peak_rss_mib:.0f} MiB")
    print(report(corpus, result, counts, problems))
    if not args.keep:
        shutil.rmtree(folder)
    return 1 if problems else 0


if __name__ == "__main__":
    run_cli(main)
