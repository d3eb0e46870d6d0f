"""Image dimensions from the file header, read before any pixel is decoded (OpenCV has no header-only API).

:func:`read_header` knows the formats that ``runtime.preprocess.read_image`` lets OpenCV decode: PNG, JPEG, BMP,
TIFF (and BigTIFF), WebP and GIF (its logical screen: OpenCV decodes the first frame at that size). Anything else
is refused, so OpenCV never decodes a format whose size was not checked.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from runtime.errors import ImageReadError

FORMATS = "PNG, JPEG, BMP, TIFF, WebP or GIF"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C4 = DHT, C8 = JPG, CC = DAC are not frames); libjpeg decodes 1, 3 or 4 components
JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_COMPONENTS = (1, 3, 4)
BMP_INFO_SIZES = (16, 40, 52, 56, 64, 108, 124)  # Windows and OS/2 2.x headers: 32-bit width and height
TIFF_TAGS = {256: "width", 257: "height", 258: "bits", 277: "samples", 278: "rows_per_strip", 322: "tile_width",
             323: "tile_height"}
TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # SHORT, LONG, LONG8
# walking a header is bounded work: far more pieces than any real file has, far fewer than a hostile one can
MAX_PNG_CHUNKS = 1 << 17
MAX_JPEG_SEGMENTS = 1 << 12  # before the frame header
MAX_TIFF_ENTRIES = 1 << 16


@dataclass(frozen=True)
class Header:
    """``format``, ``width`` and ``height`` as decoded (before any EXIF rotation); ``buffer_bytes``: the largest
    buffer decoding fills besides the picture (a TIFF strip or tile in its own sample format), 0 when none."""

    format: str
    width: int
    height: int
    buffer_bytes: int = 0


class _Cut(Exception):
    """The header ends early or holds an impossible value; the text says what."""


def read_header(encoded: bytes | memoryview | np.ndarray, what: str) -> Header:
    """The :class:`Header` of an encoded image; :class:`ImageReadError` naming ``what`` for any other content or
    a cut or invalid header."""
    data = memoryview(encoded).cast("B")  # no copy; a TIFF directory may lie at the end of the file
    for name, matches, parse in _PARSERS:
        if matches(data):
            try:
                header = parse(data)
            except (_Cut, struct.error, IndexError) as exc:
                reason = str(exc) if isinstance(exc, _Cut) else "cut short"
                raise ImageReadError(f"{what}: not a valid {name} file ({reason})") from None
            if header.width < 1 or header.height < 1:
                raise ImageReadError(f"{what}: {name} header gives {header.width} x {header.height} pixels")
            return header
    raise ImageReadError(f"{what}: not a {FORMATS} image (starts with {bytes(data[:8])!r})")


def _png(data: memoryview) -> Header:
    """IHDR, and every chunk up to IEND within the file: OpenCV allocates what a chunk's length claims."""
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    if kind != b"IHDR" or length != 13:
        raise _Cut("the first chunk is not IHDR")
    pos = 8
    for _ in range(MAX_PNG_CHUNKS):
        if pos + 8 > len(data):
            break
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if length > len(data) - pos - 12:
            raise _Cut(f"chunk {bytes(kind)!r} at byte {pos} claims {length} bytes, {len(data) - pos - 12} are left")
        if kind == b"IEND":
            break
        pos += 12 + length
    else:
        raise _Cut(f"more than {MAX_PNG_CHUNKS} chunks")
    return Header("PNG", width, height)


def _jpeg(data: memoryview) -> Header:
    pos = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        if data[pos] != 0xFF:
            raise _Cut(f"no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a segment
            pos += 2
        elif marker in (0xD9, 0xDA):
            raise _Cut("no frame header before the image data")
        else:
            (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
            if length < 2:
                raise _Cut(f"segment length {length} at byte {pos}")
            if marker in JPEG_FRAMES:
                height, width, components = struct.unpack(">HHB", data[pos + 5 : pos + 10])
                if components not in JPEG_COMPONENTS:
                    raise _Cut(f"{components} colour components, expected one of {JPEG_COMPONENTS}")
                return Header("JPEG", width, height)
            pos += 2 + length
    raise _Cut(f"no frame header in the first {MAX_JPEG_SEGMENTS} segments")


def _bmp(data: memoryview) -> Header:
    (size,) = struct.unpack("<I", data[14:18])
    if size == 12:  # OS/2 1.x core header: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    elif size in BMP_INFO_SIZES:
        width, height = struct.unpack("<ii", data[18:26])
        height = abs(height)  # negative: stored top-down
    else:
        raise _Cut(f"info header of {size} bytes")
    return Header("BMP", width, height)


def _tiff(data: memoryview) -> Header:
    """The first image file directory (the page OpenCV decodes); strips and tiles count as decode buffers."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    count_fmt, entry_size, field = ("Q", 20, 8) if big else ("H", 12, 4)
    offset = struct.unpack(order + ("Q" if big else "I"), data[8:16] if big else data[4:8])[0]
    (entries,) = struct.unpack(order + count_fmt, data[offset : offset + struct.calcsize(count_fmt)])
    start = offset + struct.calcsize(count_fmt)
    if entries > MAX_TIFF_ENTRIES:
        raise _Cut(f"{entries} directory entries")
    if start + entries * entry_size > len(data):
        raise _Cut(f"{entries} directory entries do not fit in the file")
    values: dict[str, int] = {}
    for k in range(entries):
        entry = data[start + k * entry_size : start + (k + 1) * entry_size]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag not in TIFF_TAGS or kind not in TIFF_TYPES:
            continue
        fmt, size = TIFF_TYPES[kind]
        count = struct.unpack(order + ("Q" if big else "I"), entry[4 : 4 + field])[0]
        value = entry[4 + field :]
        if count * size > field:  # stored elsewhere: read the first value there
            where = struct.unpack(order + ("Q" if big else "I"), value)[0]
            value = data[where : where + size]
        values[TIFF_TAGS[tag]] = struct.unpack(order + fmt, value[:size])[0]
    if "width" not in values or "height" not in values:
        raise _Cut("no image width or height")
    width, height = values["width"], values["height"]
    if "tile_width" in values or "tile_height" in values:
        buffer = (values.get("tile_width", width), values.get("tile_height", height))
    else:
        buffer = (width, min(values.get("rows_per_strip", height) or height, height))
    sample_bytes = max(1, -(-values.get("bits", 8) // 8)) * max(1, values.get("samples", 1))
    return Header("TIFF", width, height, buffer[0] * buffer[1] * sample_bytes)


def _webp(data: memoryview) -> Header:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _Cut("no VP8 start code")
        width, height = struct.unpack("<HH", data[26:30])
        return Header("WebP", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise _Cut("no VP8L signature")
        (bits,) = struct.unpack("<I", data[21:25])
        return Header("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        if len(data) < 30:
            raise _Cut("cut short")
        return Header("WebP", int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
    raise _Cut(f"unknown chunk {bytes(chunk)!r}")


def _gif(data: memoryview) -> Header:
    width, height = struct.unpack("<HH", data[6:10])
    return Header("GIF", width, height)


_PARSERS = (
    ("PNG", lambda d: d[:8] == PNG_SIGNATURE, _png),
    ("JPEG", lambda d: d[:3] == b"\xff\xd8\xff", _jpeg),
    ("BMP", lambda d: d[:2] == b"BM", _bmp),
    ("TIFF", lambda d: d[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"), _tiff),
    ("WebP", lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP", _webp),
    ("GIF", lambda d: d[:6] in (b"GIF87a", b"GIF89a"), _gif),
)
