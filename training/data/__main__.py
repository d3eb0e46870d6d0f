"""``python -m training.data PATH [--json] [--classes a,b] [--calibration-fraction F]``: what a dataset holds and
what is wrong with it, before anything trains; exit status 2 when it has errors."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from runtime.cli import run_cli
from runtime.errors import DatasetLayoutError
from training.data.check import check


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="dataset folder (MVTec AD, VisA or plain folder layout) or a run's split.json")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--classes", help="comma-separated class names to keep (default: all)")
    parser.add_argument("--calibration-fraction", type=float,
                        help="show the split python -m training.fit makes: this share of each class's normal "
                             "training images held out for calibration")
    args = parser.parse_args(argv)
    if args.calibration_fraction is not None and not 0 < args.calibration_fraction < 1:
        parser.error(f"--calibration-fraction must be in (0, 1), got {args.calibration_fraction}")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    report = check(args.path, classes, args.calibration_fraction)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.text())
    if report.errors:
        raise DatasetLayoutError(f"{args.path}: {len(report.errors)} error(s), listed above; fix them before training")
    return 0


if __name__ == "__main__":
    run_cli(main)
