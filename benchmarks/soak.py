"""Soak test: the synthetic conveyor streamed through the Detector for many frames, watching memory and latency.

    python -m benchmarks.soak --model MODEL_DIR [--frames 10000] [--report-every 500] [--batch-size 8] [--backend ...]

Frames go through :func:`runtime.stream_run.stream` exactly as in ``python -m runtime.stream`` (no outputs but this
report). Every ``--report-every`` frames a Markdown row gives the process's resident memory and the p50 / p95
latency of that window; at the end, the RSS growth from the first window to the last and the latency drift
(last window's p50 against the first's). SIGINT / SIGTERM end the soak early with the report. The exit status
is non-zero only when frames failed.
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

import numpy as np

from benchmarks.memory import status_mib
from runtime.cli import add_backend_arguments, run_cli
from runtime.model_folder import open_detector
from runtime.sources import open_source
from runtime.stream import stop_on_signals
from runtime.stream_run import stream


class Monitor:
    """A record sink that prints one Markdown row per window of ``every`` frames (and one for a partial last)."""

    def __init__(self, every: int, out: TextIO = sys.stdout) -> None:
        self.every, self.out = every, out
        self.frames = self.errors = 0
        self.window: list[float] = []
        self.rows: list[dict] = []

    def write(self, record: dict) -> None:
        self.frames += 1
        if "error" in record:
            self.errors += 1
        else:
            self.window.append(record["latency_ms"]["capture_to_verdict"])
        if self.frames % self.every == 0:
            self._report()

    def close(self) -> None:
        """Report the frames since the last row."""
        if self.frames % self.every:
            self._report()

    def _report(self) -> None:
        p50, p95 = np.percentile(self.window, [50, 95]) if self.window else (float("nan"), float("nan"))
        row = {"frames": self.frames, "rss_mib": status_mib("VmRSS"), "p50_ms": float(p50), "p95_ms": float(p95),
               "errors": self.errors}
        if not self.rows:
            print("| frames | RSS MiB | p50 ms | p95 ms | errors |\n|---:|---:|---:|---:|---:|", file=self.out)
        cells = (row["frames"], f"{row['rss_mib']:.1f}", f"{row['p50_ms']:.1f}", f"{row['p95_ms']:.1f}", row["errors"])
        print(f"| {' | '.join(map(str, cells))} |", file=self.out, flush=True)
        self.rows.append(row)
        self.window = []


def drift_table(rows: list[dict], summary: dict) -> str:
    """The end-of-soak Markdown table: frames, errors, fps, RSS growth and latency drift, first to last window."""
    first, last = rows[0], rows[-1]
    drift = last["p50_ms"] - first["p50_ms"]
    lines = [
        "| measure | value |",
        "|:---|---:|",
        f"| frames | {summary['frames']} ({summary['stop_reason']}) |",
        f"| errors | {summary['errors']} |",
        f"| throughput | {summary['fps']:.2f} fps |",
        f"| RSS after the first window | {first['rss_mib']:.1f} MiB |",
        f"| RSS at the end | {last['rss_mib']:.1f} MiB |",
        f"| RSS growth | {last['rss_mib'] - first['rss_mib']:+.1f} MiB |",
        f"| p50 first / last window | {first['p50_ms']:.1f} / {last['p50_ms']:.1f} ms |",
        f"| latency drift (p50) | {drift:+.1f} ms ({drift / first['p50_ms']:+.1%}) |",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--frames", type=int, default=10000, help="frames to stream (default 10000)")
    parser.add_argument("--report-every", type=int, default=500, help="frames per report row (default 500)")
    add_backend_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="synthetic conveyor seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="frames per detector call, as the stream's (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.frames, args.report_every, args.batch_size) < 1:
        parser.error("--frames, --report-every and --batch-size must be at least 1")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    monitor = Monitor(args.report_every)
    with stop_on_signals(stop), open_detector(args.model, args.backend, args.device,
                                                                  provider=args.provider) as detector:
        print(f"soak: {args.frames} synthetic frames through {args.model} ({args.backend}, batch {args.batch_size}), "
              f"RSS {status_mib('VmRSS'):.1f} MiB before the first frame\n")
        summary = stream(detector, open_source("synthetic", seed=args.seed), [monitor], frames=args.frames,
                         stop_event=stop, batch=args.batch_size)
        monitor.close()  # while the detector's memory is still held
    if monitor.rows:
        print(f"\n{drift_table(monitor.rows, summary)}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    run_cli(main)
