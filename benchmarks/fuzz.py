"""Fuzzing the two doors hostile input comes through: the image decoder + pre-processing, and the manifest loader.

    python -m benchmarks.fuzz [--minutes 10] [--out runs/fuzz]

The property of both targets: a clear project error (:class:`~runtime.errors.DiadError`) or a valid result, never
another exception, in bounded memory. Inputs are random bytes and mutated valid files (Hypothesis strategies
:func:`image_inputs` and :func:`manifest_inputs`); ``tests/test_fuzz.py`` runs a fixed, derandomized number of
them in the suite, this command runs each target for ``--minutes`` with fresh random inputs and prints the inputs
tried, the outcomes, any unexpected exception (its input saved under ``--out``) and the peak RSS.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmarks.memory import reset_peak, status_mib
from runtime.cli import run_cli
from runtime.errors import DiadError, ModelFolderError
from runtime.limits import Limits
from runtime.component_io import COMPONENTS, expected_tensors
from runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST, Manifest, Thresholds, file_entry
from runtime.preprocess import check_rgb, decode_image, preprocess
from runtime.schedule import ddim_plan

LIMITS = Limits(max_pixels=1 << 20, max_side=4096, max_file_bytes=1 << 20)  # small: many inputs per second
SIZE = 64  # model resolution of the pre-processing target
Target = Callable[[bytes], str]


# ------------------------------------------------------------------------------------------ the targets


def decode_once(data: bytes, limits: Limits = LIMITS) -> str:
    """Decode and pre-process ``data``: ``"image"`` (checked valid) or ``"refused"`` (a project error)."""
    try:
        image = decode_image(np.frombuffer(data, np.uint8), "fuzz input", limits)
    except DiadError:
        return "refused"
    height, width = image.shape[:2]
    assert image.dtype == np.uint8 and image.shape == (height, width, 3) and height * width <= limits.max_pixels
    x = preprocess(check_rgb(image, "fuzz input", limits), SIZE)
    assert x.shape == (3, SIZE, SIZE) and x.dtype == np.float32 and np.isfinite(x).all()
    return "image"


def load_once(folder: Path, text: bytes) -> str:
    """Load ``text`` as ``folder``'s manifest: ``"loaded"`` (and every accessor works) or ``"refused"``."""
    (folder / MANIFEST).write_bytes(text)
    try:
        manifest = Manifest.load(folder)
    except ModelFolderError:
        return "refused"
    plan = manifest.plan()
    assert len(plan.timesteps) == manifest.steps and 1 <= manifest.max_batch <= 1024
    noise = manifest.noise()
    assert noise.shape == (manifest.draws, *manifest.latent_shape)
    assert all(manifest.path(name).is_file() for name in COMPONENTS)
    assert isinstance(manifest.thresholds, Thresholds)
    return "loaded"


# ------------------------------------------------------------------------------------------- the inputs


def seed_images() -> list[bytes]:
    """Small valid files of every decoded format and their common variants (bit depths, modes, compressions)."""
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (12, 16, 3), np.uint8)
    rgb = Image.fromarray(bgr[..., ::-1])

    def pil(image: Image.Image, fmt: str, **options: Any) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    encoded = [cv2.imencode(ext, bgr)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".tif", ".webp")]
    return encoded + [
        cv2.imencode(".png", bgr.astype(np.uint16) * 257)[1].tobytes(),
        pil(rgb.convert("L"), "PNG"), pil(rgb.convert("RGBA"), "PNG"), pil(rgb.convert("P"), "PNG"),
        pil(rgb.convert("1"), "PNG"), pil(rgb, "JPEG", progressive=True), pil(rgb.convert("CMYK"), "JPEG"),
        pil(rgb.convert("L"), "JPEG"), pil(rgb.convert("P"), "BMP"), pil(rgb, "TIFF", compression="tiff_lzw"),
        pil(rgb.convert("RGBA"), "TIFF", compression="tiff_adobe_deflate"), pil(rgb.convert("1"), "TIFF"),
        pil(rgb, "WEBP", lossless=True), pil(rgb.convert("RGBA"), "WEBP"),
    ]


_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 7)),
    st.tuples(st.just("set"), st.one_of(st.integers(0, 63), st.integers(0, 1 << 16)), st.integers(0, 255)),
    st.tuples(st.just("int"), st.integers(0, 63), st.sampled_from([0, 1, 255, 65535, 65536, 2**24, 2**31 - 1,
                                                                   2**32 - 1])),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16), st.just(0)),
)


def mutate(data: bytes, mutations: Sequence[tuple]) -> bytes:
    """``data`` with ``mutations`` applied in order (positions taken modulo the current length)."""
    buf = bytearray(data)
    for op, position, value in mutations:
        if not buf:
            break
        pos = position % len(buf)
        if op == "flip":
            buf[pos] ^= 1 << value
        elif op == "set":
            buf[pos] = value
        elif op == "int":  # a 32-bit size where header fields sit, either byte order
            order = "big" if position % 2 else "little"
            buf[pos : pos + 4] = value.to_bytes(4, order)
        elif op == "insert":
            buf[pos:pos] = value
        elif op == "delete":
            del buf[pos : pos + value]
        else:
            del buf[pos:]
    return bytes(buf)


def image_inputs() -> st.SearchStrategy[bytes]:
    """Random bytes (some behind a real signature) and mutated valid images."""
    signatures = st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\0", b"MM\0*", b"II+\0",
                                  b"RIFF\0\0\0\0WEBPVP8 ", b"RIFF\0\0\0\0WEBPVP8L", b"RIFF\0\0\0\0WEBPVP8X"])
    random = st.tuples(signatures, st.binary(max_size=2048)).map(lambda parts: parts[0] + parts[1])
    mutated = st.tuples(st.sampled_from(seed_images()), st.lists(_MUTATION, min_size=1, max_size=8))
    return st.one_of(random, mutated.map(lambda parts: mutate(*parts)))


def write_seed_folder(folder: Path) -> dict[str, Any]:
    """A model folder with small stand-in component files and a manifest holding every key ``export`` writes (and
    an engine and thresholds); returns the manifest's data. The loader never opens a graph, so bytes suffice."""
    folder.mkdir(parents=True, exist_ok=True)
    image_size, latent, hint = 64, [4, 8, 8], [8, 8, 8]
    tensors = expected_tensors(image_size, latent, hint)
    components = {}
    for name in COMPONENTS:
        (folder / f"{name}.onnx").write_bytes(hashlib.sha256(name.encode()).digest() * 8)
        components[name] = {**file_entry(folder, f"{name}.onnx"), "external_data": [], **tensors[name]}
    (folder / "scorer.onnx.data").write_bytes(b"\0" * 64)
    components["scorer"]["external_data"] = [file_entry(folder, "scorer.onnx.data")]
    (folder / "scorer.engine").write_bytes(b"engine")
    plan = ddim_plan(4, 399)
    data = {
        "format": FORMAT, "version": FORMAT_VERSION, "created": "2026-01-01T00:00:00+00:00", "source": "runs/x",
        "preset": "tiny", "image_size": image_size, "latent_shape": latent, "hint_shape": hint, "injection": "all",
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                          "resize": "pil-bilinear-antialias"},
        "precision": "fp32", "opset": 17, "max_batch": 8,
        "schedule": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                     "num_train_timesteps": 1000, "eta": 0.0, **plan.to_dict()},
        "noise": {"policy": "fixed", "seed": 0, "generator": "numpy", "shape": latent},
        "scorer": {"backbone": "resnet50", "layers": [1, 2, 3], "weights": None},
        "components": components,
        "engines": {"scorer": [{**file_entry(folder, "scorer.engine"), "tensorrt": "10.3.0",
                                "compute_capability": "8.7", "optimization_level": 3,
                                "profile": {"image": {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64],
                                                      "max": [8, 3, 64, 64]}}}]},
        "thresholds": {"image": 1.0, "pixel": 0.5, "image_min": 0.5, "image_max": 2.0, "pixel_min": 0.0,
                       "pixel_max": 1.0, "method": "fpr", "details": {"warnings": []}},
        "versions": {"diad-edge": "0.1.0"},
    }
    Manifest(folder, data).save()
    return data


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON document (the root excluded)."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [path for key, child in children for path in [(*prefix, key), *_paths(child, (*prefix, key))]]


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(10**30), 10**30), st.floats(),
              st.text(max_size=12), st.sampled_from(["/etc/passwd", "../../outside.onnx", "B", "", "fixed", "fp32"])),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


def _edit(document: dict, edits: Sequence[tuple]) -> dict:
    """``document`` with each ``(path, action, value)`` applied: replace or delete the value there, or add a key."""
    out = copy.deepcopy(document)
    for path, action, value in edits:
        *parents, key = path
        node = out
        try:
            for part in parents:
                node = node[part]
            if action == "delete":
                del node[key]
            elif action == "add" and isinstance(node, dict):
                node[f"{key}_extra"] = value
            else:
                node[key] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed the path
    return out


def manifest_inputs(seed: dict) -> st.SearchStrategy[bytes]:
    """Random bytes, JSON values, and the seed manifest with values replaced, deleted or added, or its text
    mutated byte by byte."""
    paths = st.sampled_from(_paths(seed))
    edits = st.lists(st.tuples(paths, st.sampled_from(["replace", "delete", "add"]), _JSON), min_size=1, max_size=3)
    text = json.dumps(seed).encode()
    return st.one_of(
        st.binary(max_size=512),
        _JSON.map(lambda v: json.dumps(v).encode()),
        edits.map(lambda e: json.dumps(_edit(seed, e)).encode()),
        st.lists(_MUTATION, min_size=1, max_size=6).map(lambda m: mutate(text, m)),
        st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
    )


# ---------------------------------------------------------------------------------------------- the run


def fuzz(target: Target, inputs: st.SearchStrategy[bytes], seconds: float, crashes: Path, name: str) -> dict:
    """Feed ``target`` random ``inputs`` for ``seconds``: outcome counts, unexpected exceptions (inputs saved
    under ``crashes``) and the inputs tried."""
    outcomes: Counter = Counter()
    unexpected: list[str] = []

    @settings(max_examples=500, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(inputs)
    def probe(data: bytes) -> None:
        try:
            outcomes[target(data)] += 1
        except Exception as exc:  # noqa: BLE001 (what this benchmark counts)
            outcomes["unexpected"] += 1
            digest = hashlib.sha256(data).hexdigest()[:16]
            crashes.mkdir(parents=True, exist_ok=True)
            (crashes / f"{name}-{digest}.bin").write_bytes(data)
            unexpected.append(f"{type(exc).__name__}: {str(exc)[:200]} ({name}-{digest}.bin)")

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        probe()
    return {"target": name, "inputs": sum(outcomes.values()), "outcomes": dict(outcomes), "unexpected": unexpected}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="per target (default 10)")
    parser.add_argument("--out", default="runs/fuzz", help="where unexpected inputs are saved (default runs/fuzz)")
    args = parser.parse_args(argv)
    reset_peak()
    results = [fuzz(decode_once, image_inputs(), args.minutes * 60, Path(args.out), "decoder")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        seed = write_seed_folder(folder)
        results.append(fuzz(lambda text: load_once(folder, text), manifest_inputs(seed), args.minutes * 60,
                            Path(args.out), "manifest"))
    print("| target | inputs tried | outcomes | unexpected exceptions |\n|:---|---:|:---|---:|")
    for r in results:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        print(f"| {r['target']} | {r['inputs']} | {outcomes} | {len(r['unexpected'])} |")
    for r in results:
        for line in r["unexpected"][:10]:
            print(f"{r['target']}: {line}")
    print(f"peak RSS {status_mib('VmHWM'):.0f} MiB, limits {LIMITS}")
    (Path(args.out)).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "fuzz.json").write_text(json.dumps(results, indent=2))
    return 1 if any(r["unexpected"] for r in results) else 0


if __name__ == "__main__":
    run_cli(main)
