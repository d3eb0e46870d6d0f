"""What a dataset holds and what is wrong with it, read before anything trains (``python -m training.data``).

:func:`inspect` decodes every image and mask the way training reads them and adds to the layout's problems: files
that cannot be read (errors), masks whose size differs from their image's (errors), masks that mark no pixel,
images that training converts (grayscale, an alpha channel, 16-bit) and images of several sizes (warnings, each
said once for the whole dataset).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runtime.datasets.index import CALIBRATION, TEST, TRAIN, DatasetIndex, Problem, Sample
from runtime.errors import ImageReadError, LimitError
from runtime.limits import Limits
from runtime.preprocess import read_image, read_mask, read_stored

CONVERSIONS = {
    "grayscale": "are grayscale: read as RGB with three equal channels",
    "alpha": "have an alpha channel: read as RGB, the alpha dropped",
    "16-bit": "are 16-bit: read as 8-bit (scaled)",
}
SHOWN_SIZES = 4


@dataclass(frozen=True)
class Probe:
    """What reading one sample found: the image's ``size`` (width, height), the ``conversions`` training applies to
    it, and the ``problems`` of the image and its mask."""

    size: tuple[int, int] | None
    conversions: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class Report:
    """A dataset's index with every problem found, and per class the image sizes."""

    index: DatasetIndex
    sizes: dict[str, Counter]

    @property
    def errors(self) -> list[Problem]:
        return self.index.errors

    @property
    def warnings(self) -> list[Problem]:
        return self.index.warnings

    def to_dict(self) -> dict[str, Any]:
        summary = self.index.summary()
        for name, counter in self.sizes.items():
            summary[name]["sizes"] = {f"{w}x{h}": n for (w, h), n in counter.most_common()}
        return {"layout": self.index.layout, "root": str(self.index.root), "classes": summary,
                "errors": [str(p) for p in self.errors], "warnings": [str(p) for p in self.warnings]}

    def text(self) -> str:
        """The per-class table, then the errors and the warnings, one line each."""
        lines = [table(self.index, self.sizes)]
        for kind, problems in (("error", self.errors), ("warning", self.warnings)):
            if problems:
                lines += ["", f"{len(problems)} {kind}(s):"] + [f"  {kind}: {p}" for p in problems]
        if not self.index.problems:
            lines += ["", "no problems found"]
        return "\n".join(lines)


def probe(sample: Sample, limits: Limits | None = None) -> Probe:
    """Read one sample's image (and mask) as training does."""
    try:
        stored = read_stored(sample.image, limits)
        size = (stored.shape[1], stored.shape[0])
    except (ImageReadError, LimitError) as exc:
        return Probe(None, (), (Problem(sample.image, f"{_reason(exc, sample.image)}; fix or remove the file"),))
    conversions = []
    if stored.ndim == 2:
        conversions.append("grayscale")
    elif stored.shape[2] == 4:
        conversions.append("alpha")
    if stored.dtype.itemsize > 1:
        conversions.append("16-bit")
    return Probe(size, tuple(conversions), tuple(_mask_problems(sample, limits)))


def _mask_problems(sample: Sample, limits: Limits | None) -> list[Problem]:
    if sample.mask is None or not sample.mask.is_file():
        return []
    try:
        mask = read_mask(sample.mask, limits)
        height, width = read_image(sample.image, limits).shape[:2]
    except (ImageReadError, LimitError) as exc:
        return [Problem(sample.mask, f"{_reason(exc, sample.mask)}; fix or remove the mask")]
    if mask.shape != (height, width):
        return [Problem(sample.mask, f"mask is {mask.shape[1]}x{mask.shape[0]} pixels, its image {sample.image} is "
                                     f"{width}x{height}; expected a mask of its image's size")]
    if not mask.any():
        return [Problem(sample.mask, f"the mask marks no defect pixel (all zero) for the defect image {sample.image}",
                        error=False)]
    return []


def _reason(exc: Exception, path: Path) -> str:
    """The error's text without the path it starts with."""
    text = str(exc)
    return text[len(str(path)) + 2:] if text.startswith(f"{path}: ") else text


def inspect(index: DatasetIndex, limits: Limits | None = None, progress: Callable[[int], None] | None = None,
            workers: int | None = None) -> Report:
    """Read every image and mask of ``index`` (in ``workers`` threads; ``progress(n)`` after each ``n``) and
    return the :class:`Report` of the index with the problems found added."""
    samples = [s for s in index.samples if s.image.is_file()]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        probes = []
        for found in pool.map(lambda s: probe(s, limits), samples):
            probes.append(found)
            if progress is not None:
                progress(1)
    problems = [p for found in probes for p in found.problems]
    sizes: dict[str, Counter] = defaultdict(Counter)
    converted: dict[str, list[Path]] = defaultdict(list)
    for sample, found in zip(samples, probes, strict=True):
        if found.size is not None:
            sizes[sample.class_name][found.size] += 1
        for kind in found.conversions:
            converted[kind].append(sample.image)
    problems += [Problem(paths[0], f"{len(paths)} image(s) {CONVERSIONS[kind]} (this is the first)", error=False)
                 for kind, paths in converted.items()]
    problems += _mixed_sizes(index, samples, probes)
    return Report(replace(index, problems=index.problems + tuple(problems)), dict(sizes))


def _mixed_sizes(index: DatasetIndex, samples: list[Sample], probes: list[Probe]) -> list[Problem]:
    """One warning when the images come in several sizes."""
    first: dict[tuple[int, int], Path] = {}
    counts: Counter = Counter()
    for sample, found in zip(samples, probes, strict=True):
        if found.size is not None:
            counts[found.size] += 1
            first.setdefault(found.size, sample.image)
    if len(counts) < 2:
        return []
    shown = [f"{w}x{h} ({n}, first {first[(w, h)]})" for (w, h), n in counts.most_common(SHOWN_SIZES)]
    more = f" and {len(counts) - SHOWN_SIZES} more" if len(counts) > SHOWN_SIZES else ""
    return [Problem(index.root, f"images come in {len(counts)} sizes: {', '.join(shown)}{more}; each is resized to "
                                "the model's square input (other aspect ratios are stretched)", error=False)]


def _size_text(counter: Counter) -> str:
    if not counter:
        return "-"
    if len(counter) == 1:
        (w, h), = counter
        return f"{w}x{h}"
    return f"{len(counter)} sizes"


def table(index: DatasetIndex, sizes: dict[str, Counter] | None = None) -> str:
    """The per-class counts as a plain-text table with a total row."""
    summary = index.summary()
    held = any(c["calibration"] for c in summary.values())
    columns = [TRAIN, *([CALIBRATION] if held else []), "test_good", "test_defect"]
    header = ["class", *(c.replace("_", " ") for c in columns), "masks", "sizes", "defect types"]
    rows = [header]
    for name, counts in summary.items():
        types = ", ".join(f"{d} {n}" for d, n in counts["defects"].items()) or "-"
        masks = f"{counts['masks']}/{counts['test_defect']}" if counts["test_defect"] else "-"
        rows.append([name, *(str(counts[c]) for c in columns), masks, _size_text((sizes or {}).get(name, Counter())),
                     types])
    rows.append(["total", *(str(sum(c[col] for c in summary.values())) for col in columns), "", "", ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = range(1, len(columns) + 2)
    lines = [f"{index.root}: {_layout_name(index.layout)} layout, {len(summary)} class(es)"]
    if held:
        lines.append(f"({CALIBRATION}: normal training images held out for calibration, never trained on; "
                     f"{TEST}: evaluation images)")
    for row in rows:
        cells = [row[i].rjust(widths[i]) if i in numeric else row[i].ljust(widths[i]) for i in range(len(row))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _layout_name(layout: str) -> str:
    return {"mvtec": "MVTec AD", "mvtec-json": "MVTec AD (DiAD meta files)", "visa": "VisA",
            "folder": "plain folder"}.get(layout, layout)
