"""``python -m training.synthetic OUT_DIR [--kind demo|parts]``: write a synthetic MVTec-AD-layout dataset.

``--kind demo`` (the default) draws from :mod:`runtime.synthetic`, ``--kind parts`` from
:mod:`training.synthetic_parts`, a second set of other products and defects for checking that a recipe
generalises, and ``--kind photos`` from :mod:`training.photo_textures`: real photographs with drawn-in defects,
whose training images come from another region of each photograph than the test images.

Every class gets ``train/good``, ``test/good``, ``test/<defect>`` for each defect type and
``ground_truth/<defect>/<stem>_mask.png`` (0/255), plus the DiAD reference's ``train.json`` / ``test.json``, a
``contact_sheet.png`` and, written last, the ``synthetic.json`` marker with the parameters. With ``--layout folder``
the same images form a plain folder instead (:mod:`runtime.datasets.folder`): ``<class>/good/train``,
``<class>/good/test`` (the same split), ``<class>/<defect>`` and ``<class>/ground_truth/<defect>``, with neither meta
files nor contact sheet. Each image has its
own generator, seeded by (seed, class, group, number), so the same parameters give byte-identical files.

The dataset is built in a hidden sibling folder and moved into place when complete, so ``OUT_DIR`` is never
half written. ``OUT_DIR`` may be new, empty or a previous synthetic dataset (which is replaced); anything else is
refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

from runtime import synthetic
from runtime.cli import run_cli
from runtime.errors import DatasetLayoutError
from runtime.visualize import draw_contour, grid, label, write_rgb
from training import photo_textures, synthetic_parts

MARKER = "synthetic.json"
GENERATOR = "diad-edge runtime.synthetic"
CONTACT_SHEET = "contact_sheet.png"
SHEET_GOOD = 3  # normal images per contact-sheet row, before one image of each defect type
SHEET_TILE = 256
CONTOUR = (0, 255, 0)
KINDS: dict[str, ModuleType] = {  # --kind: the image generator
    "demo": synthetic, "parts": synthetic_parts, "photos": photo_textures,
}


def groups(kind: str = "demo") -> tuple[str, ...]:
    """The image groups of a class, each with its own numbering."""
    return ("train", "test_good", *KINDS[kind].DEFECTS)


def sample_rng(seed: int, class_name: str, group: str, number: int, kind: str = "demo") -> np.random.Generator:
    """The generator of one image, independent of every other image's."""
    return np.random.default_rng([seed, KINDS[kind].CLASSES.index(class_name), groups(kind).index(group), number])


def check_target(out_dir: Path) -> None:
    """Refuse to replace anything but nothing, an empty folder or a previous synthetic dataset."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DatasetLayoutError(f"{out_dir}: exists and is not a folder; choose a new or empty folder")
    if not any(out_dir.iterdir()):
        return
    try:
        generator = json.loads((out_dir / MARKER).read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        generator = None
    if generator != GENERATOR:
        raise DatasetLayoutError(
            f"{out_dir}: not empty and not a synthetic dataset (no valid {MARKER}); refusing to overwrite it, "
            "choose a new or empty folder"
        )


def _ready(path: Path) -> str:
    """``path`` as a string, once its folder exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def _write_mask(path: Path, mask: np.ndarray) -> None:
    if not cv2.imwrite(_ready(path), mask * np.uint8(255)):
        raise OSError(f"{path}: could not write mask")


LAYOUTS = ("mvtec", "folder")


def _folder(layout: str, group: str, label_name: str) -> str:
    """The folder of an image group inside its class folder, in ``layout``."""
    if layout == "folder":
        return f"{label_name}/train" if group == "train" else f"{label_name}/test" if group == "test_good" else group
    return "train/good" if group == "train" else f"test/{label_name}"


def _write_class(root: Path, name: str, seed: int, size: int, counts: dict[str, int], kind: str,
                 layout: str = "mvtec") -> tuple[list, list]:
    """Write one class's images and masks in ``layout``; return its ``train.json`` and ``test.json`` records."""
    generator, train, test = KINDS[kind], [], []
    for group in groups(kind):
        defect = group if group in generator.DEFECTS else None
        for i in range(counts[group]):
            rng = sample_rng(seed, name, group, i, kind)
            if group == "train" and hasattr(generator, "render_train"):  # training images from their own region
                rgb, mask = generator.render_train(name, rng, size)
            else:
                rgb, mask = generator.render(name, rng, defect, size)
            folder = _folder(layout, group, defect or generator.GOOD)
            record = {"filename": f"{name}/{folder}/{i:03d}.png", "label": int(defect is not None)}
            record["label_name"] = defect or generator.GOOD
            write_rgb(_ready(root / record["filename"]), rgb)
            if defect:
                record["maskname"] = f"{name}/ground_truth/{defect}/{i:03d}_mask.png"
                _write_mask(root / record["maskname"], mask)
            record["clsname"] = name
            (train if group == "train" else test).append(record)
    return train, test


def contact_sheet(seed: int, size: int, kind: str = "demo") -> np.ndarray:
    """One row per class: normal test images, then the first image of each defect type with its mask outlined."""
    generator, tiles = KINDS[kind], []
    for name in generator.CLASSES:
        for i in range(SHEET_GOOD):
            rgb, _ = generator.render(name, sample_rng(seed, name, "test_good", i, kind), None, size)
            tiles.append(label(_tile(rgb), f"{name} / good"))
        for defect in generator.DEFECTS:
            rgb, mask = generator.render(name, sample_rng(seed, name, defect, 0, kind), defect, size)
            tiles.append(label(draw_contour(_tile(rgb), mask, CONTOUR), f"{name} / {defect}"))
    return grid(tiles, columns=SHEET_GOOD + len(generator.DEFECTS))


def _tile(rgb: np.ndarray) -> np.ndarray:
    if rgb.shape[0] == SHEET_TILE:
        return rgb
    return cv2.resize(rgb, (SHEET_TILE, SHEET_TILE), interpolation=cv2.INTER_AREA)


def _write_lines(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def generate(
    out_dir: str | Path,
    seed: int = 0,
    size: int = 256,
    train: int = 60,
    test_good: int = 20,
    test_defect: int = 10,
    kind: str = "demo",
    layout: str = "mvtec",
) -> Path:
    """Write the dataset of generator ``kind`` (see :data:`KINDS`) in ``layout`` (:data:`LAYOUTS`) to ``out_dir``
    and return its path."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    out = Path(out_dir).resolve()
    check_target(out)
    parameters = {"seed": seed, "size": size, "train": train, "test_good": test_good, "test_defect": test_defect}
    if seed < 0 or size < 64 or train < 1 or test_good < 0 or test_defect < 0:
        raise ValueError(f"need seed >= 0, size >= 64, train >= 1 and test counts >= 0; got {parameters}")
    generator = KINDS[kind]
    counts = {"train": train, "test_good": test_good, **dict.fromkeys(generator.DEFECTS, test_defect)}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial, previous = out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.previous")
    for leftover in (partial, previous):  # our own scratch folders, left by an interrupted run
        shutil.rmtree(leftover, ignore_errors=True)
    partial.mkdir()
    try:
        train_records, test_records = [], []
        for name in generator.CLASSES:
            train_part, test_part = _write_class(partial, name, seed, size, counts, kind, layout)
            train_records += train_part
            test_records += test_part
        if layout == "mvtec":
            _write_lines(partial / "train.json", train_records)
            _write_lines(partial / "test.json", test_records)
            write_rgb(str(partial / CONTACT_SHEET), contact_sheet(seed, size, kind))
        names = {"classes": generator.CLASSES, "defects": generator.DEFECTS}
        marker = {"generator": GENERATOR, "kind": kind, "layout": layout, **parameters, **names}
        (partial / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out.exists():
            out.rename(previous)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.synthetic",
        description="Write a synthetic MVTec-AD-layout dataset with exact defect masks and a contact sheet.",
    )
    parser.add_argument("out_dir", help="where to write the dataset (new, empty, or a previous synthetic dataset)")
    parser.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--train", type=int, default=60, help="training images per class (default 60)")
    parser.add_argument("--test-good", type=int, default=20, help="normal test images per class (default 20)")
    parser.add_argument("--test-defect", type=int, default=10, help="test images per class and defect (default 10)")
    parser.add_argument("--kind", choices=KINDS, default="demo",
                        help="demo: fabric, wood, nut, capsule (default); parts: tile, carpet, gear, pill; photos: "
                             "brick, grass, gravel, tissue (real photographs, drawn-in defects)")
    parser.add_argument("--layout", choices=LAYOUTS, default="mvtec",
                        help="mvtec: MVTec AD folders and the DiAD meta files (default); folder: the same images as a "
                             "plain folder (<class>/good/train, good/test, <class>/<defect>, ground_truth/<defect>)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = generate(args.out_dir, args.seed, args.size, args.train, args.test_good, args.test_defect, args.kind,
                       args.layout)
    except ValueError as exc:
        parser.error(str(exc))
    generator = KINDS[args.kind]
    per_class = args.train + args.test_good + args.test_defect * len(generator.DEFECTS)
    print(
        f"wrote {per_class * len(generator.CLASSES)} images ({', '.join(generator.CLASSES)}; defects "
        f"{', '.join(generator.DEFECTS)}) to {out} ({args.layout} layout) in {time.perf_counter() - start:.1f} s"
    )
    if args.layout == "mvtec":
        print(f"contact sheet: {out / CONTACT_SHEET}")
    return 0


if __name__ == "__main__":
    run_cli(main)
