"""Frames per second of ``runtime.stream``'s pipeline against the same pieces run one after another.

    python -m benchmarks.stream_pipeline --model MODEL_DIR [--frames 96] [--batch-sizes 1,8] [--repeats 2]
        [--spinning on,off] [--out runs/stream_pipeline]

Both modes score the same synthetic conveyor frames (seed 0) with the same :class:`~runtime.detector.Detector`,
write a JSON line per frame and an annotated video. ``pipelined`` is :func:`runtime.stream_run.stream` (capture and
pre-processing, the model, and the outputs in three threads); ``serial`` takes a batch, pre-processes it, scores
it and writes it before taking the next (what the stream did before it was pipelined). ``--spinning`` runs each
with ONNX Runtime's intra-op threads spin-waiting between operators (ONNX Runtime's own default) and without (the
detector's default): spinning threads hold the cores that the next session, the reader and the writer need. Each
row is the best of ``--repeats`` runs after a warm-up batch.

Writes ``stream_pipeline.csv`` and ``stream_pipeline.md`` to ``--out``, with the last run's records and video of
each mode.
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.annotation import frame_picture
from runtime.backends.onnxruntime import OnnxRuntimeBackend, SessionSettings
from runtime.cli import run_cli
from runtime.detector import Detector
from runtime.records import error_record, prediction_record
from runtime.sinks import JsonlSink, open_frame_sink
from runtime.sources import open_source
from runtime.stream_pipeline import prepare_frame
from runtime.stream_run import stream

FIELDS = ("mode", "batch_size", "spinning", "frames", "seconds", "fps")


def serial(detector: Detector, frames: int, batch_size: int, out: Path) -> int:
    """Take, pre-process, score and write ``frames`` synthetic frames one batch at a time; returns the frames."""
    source = open_source("synthetic", seed=0)
    written = 0
    with JsonlSink(str(out / "serial.jsonl")) as records, open_frame_sink(str(out / "serial.mp4"), 10.0) as video:
        while written < frames:
            items = [prepare_frame(detector, next(source), True) for _ in range(min(batch_size, frames - written))]
            ready = [item for item in items if item.tensor is not None]
            if ready:
                detector.submit(np.stack([item.tensor for item in ready]))
                for item, prediction in zip(ready, detector.predictions(detector.collect()), strict=True):
                    item.prediction = prediction
            for item in items:
                video.write(frame_picture(item.frame, item.prediction))
                records.write(error_record(item.frame) if item.prediction is None
                              else prediction_record(item.frame, item.prediction, {}, {}, "iso"))
            written += len(items)
    source.close()
    return written


def pipelined(detector: Detector, frames: int, batch_size: int, out: Path) -> int:
    """:func:`runtime.stream_run.stream` over ``frames`` synthetic frames; returns the frames written."""
    with JsonlSink(str(out / "pipelined.jsonl")) as records, open_frame_sink(str(out / "pipelined.mp4"), 10.0) as video:
        summary = stream(detector, open_source("synthetic", seed=0), [records], [video], frames=frames,
                         batch=batch_size)
    return summary["frames"]


MODES = {"serial": serial, "pipelined": pipelined}


def measure(detector: Detector, mode: str, frames: int, batch_size: int, repeats: int, spinning: bool,
            out: Path) -> dict:
    """Best of ``repeats`` timed runs of ``mode`` (after one warm-up batch); the last run's outputs stay in
    ``out`` (``<mode>.jsonl``, ``<mode>.mp4``)."""
    run = MODES[mode]
    best = float("inf")
    run(detector, batch_size, batch_size, out)
    for _ in range(repeats):
        start = time.perf_counter()
        written = run(detector, frames, batch_size, out)
        best = min(best, time.perf_counter() - start)
    return {"mode": mode, "batch_size": batch_size, "spinning": "on" if spinning else "off", "frames": written,
            "seconds": round(best, 2), "fps": round(written / best, 2)}


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(str(row[key]) for key in FIELDS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stream_pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (make demo: models/tiny)")
    parser.add_argument("--frames", type=int, default=96, help="frames per timed run (96)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated (1,8)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per row; the best counts (2)")
    parser.add_argument("--spinning", default="on,off", help="ONNX Runtime intra-op spinning: on, off or both")
    parser.add_argument("--out", default="runs/stream_pipeline", help="results folder (runs/stream_pipeline)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with Detector(args.model) as detector:
        for spinning in (value == "on" for value in args.spinning.split(",")):
            settings = SessionSettings(spinning=spinning)
            detector.backend = OnnxRuntimeBackend(detector.manifest, "cpu", settings=settings)
            for batch_size in (int(value) for value in args.batch_sizes.split(",")):
                for mode in MODES:
                    rows.append(measure(detector, mode, args.frames, batch_size, args.repeats, spinning, out))
                    print(rows[-1], flush=True)
    with (out / "stream_pipeline.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    title = f"{args.model}, ONNX Runtime CPU, {os.cpu_count()} CPUs, {args.frames} frames, best of {args.repeats}"
    (out / "stream_pipeline.md").write_text(markdown(rows, title))
    print(markdown(rows, title))
    return 0


if __name__ == "__main__":
    run_cli(main)
