"""``python -m training.data PATH [--json] [--classes a,b]``: what a dataset folder holds, or what is wrong."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from runtime.cli import run_cli
from training.data.detect import load_index
from training.data.index import DatasetIndex

COLUMNS = ("train", "test_good", "test_defect", "masks")


def table(index: DatasetIndex) -> str:
    """The per-class counts as a plain-text table with a total row."""
    summary = index.summary()
    rows = [["class", "train", "test good", "test defect", "masks", "defect types"]]
    for name, counts in summary.items():
        types = ", ".join(f"{d} {n}" for d, n in counts["defects"].items()) or "-"
        rows.append([name, *(str(counts[c]) for c in COLUMNS), types])
    rows.append(["total", *(str(sum(c[col] for c in summary.values())) for col in COLUMNS), ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"layout {index.layout}, {len(summary)} classes, root {index.root}"]
    for row in rows:
        cells = [row[0].ljust(widths[0]), *(row[i].rjust(widths[i]) for i in range(1, 5)), row[5]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def report(index: DatasetIndex) -> dict[str, Any]:
    return {"layout": index.layout, "root": str(index.root), "classes": index.summary()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data", description="Report what a dataset folder holds.")
    parser.add_argument("path", help="dataset folder (MVTec-AD, VisA or generic folder layout)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--classes", help="comma-separated class names to keep (default: all)")
    args = parser.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    index = load_index(args.path, classes)
    print(json.dumps(report(index), indent=2) if args.json else table(index))
    return 0


if __name__ == "__main__":
    run_cli(main)
