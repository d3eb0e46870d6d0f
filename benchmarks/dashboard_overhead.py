"""What the live page costs the stream: frames/s and CPU of ``python -m runtime.stream`` without and with
``--dashboard`` open in a browser, and the dashboard's own work per frame.

    python -m benchmarks.dashboard_overhead --model MODEL_DIR [--frames 120] [--batch-size 8] [--repeats 4]

First, in this process, on the model's verdicts for synthetic frames: the time :meth:`Dashboard.observe` takes in
the stream's writer thread per record, and the time the dashboard's encoder takes to draw and JPEG-encode a live
frame (at most :data:`runtime.dashboard.live.MAX_FPS` a second, only while a browser watches). Then each repeat
runs the synthetic feed (seed 0, ``--frames`` frames, ``--batch-size``) twice, in turn: plain, then with
``--dashboard 127.0.0.1:0`` and Debian's headless Chromium (:func:`benchmarks.live.chromium`) showing the page from
before the first frame to the end. Per run: frames/s (the summary's frames over its seconds, capture of the first
frame to the last verdict) and the stream process's CPU seconds (user + system, start-up included) per frame. The
browser runs on the same machine, so its own work competes with the stream too. Prints each run, and the median
over the repeats of each pair's ratio (a pair's two runs see much the same load from other processes).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Sequence
from itertools import islice

import numpy as np

from benchmarks.live import StreamProcess, chromium, summary
from runtime.annotation import frame_picture
from runtime.cli import run_cli
from runtime.dashboard import Dashboard, dashboard_address, model_info
from runtime.dashboard.live import jpeg
from runtime.detector import Detector
from runtime.records import prediction_record
from runtime.sources import open_source
from runtime.stream_pipeline import prepare_frame


def dashboard_costs(model: str, frames: int = 24, records: int = 2000) -> dict:
    """Median seconds of :meth:`Dashboard.observe` per record, and of drawing and encoding a live frame."""
    source = open_source("synthetic", seed=0)
    with Detector(model) as detector:
        items = [prepare_frame(detector, frame, True) for frame in islice(source, frames)]
        predictions = detector.predict([item.frame.image for item in items])
        info = model_info(detector, "onnxruntime")
        board = Dashboard(dashboard_address("127.0.0.1:0"), thresholds=detector.thresholds, model=info,
                          source=source, render=frame_picture)
    times = {"capture_to_verdict": 0.1, "prepare": 0.0, "batch_wait": 0.0, "model": 0.1, "output": 0.0}
    written = [(prediction_record(item.frame, prediction, times, {}), item.frame, prediction)
               for item, prediction in zip(items, predictions, strict=True)]
    observe, encode = [], []
    try:
        for k in range(records):
            record, frame, prediction = written[k % frames]
            record = {**record, "frame": k}
            start = time.perf_counter()
            board.observe(record, frame, prediction, None)
            observe.append(time.perf_counter() - start)
        for _, frame, prediction in written:
            start = time.perf_counter()
            jpeg(frame_picture(frame, prediction))
            encode.append(time.perf_counter() - start)
    finally:
        board.close()
    return {"observe_s": float(np.median(observe)), "observe_max_s": float(np.max(observe)),
            "encode_s": float(np.median(encode))}


def run(model: str, frames: int, batch_size: int, browser=None) -> dict:
    """One stream; with ``browser``, the dashboard open in it. The summary figures and the frames the page got."""
    args = ["--model", model, "--source", "synthetic", "--frames", str(frames), "--batch-size", str(batch_size)]
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = used.ru_utime + used.ru_stime
    if browser is None:
        stream = StreamProcess(*args)
    else:
        stream = StreamProcess(*args, "--dashboard", "127.0.0.1:0")
        browser.get(stream.dashboard_url())
    status, log = stream.finish()
    if status != 0:
        raise RuntimeError(f"the stream failed (exit status {status}):\n{log}")
    figures = summary(log)
    figures["fps"] = figures["frames"] / figures["seconds"]
    used = resource.getrusage(resource.RUSAGE_CHILDREN)  # the stream is the only child waited for meanwhile
    figures["cpu_s"] = used.ru_utime + used.ru_stime - cpu_before
    figures["page_frames"] = len(browser.execute_script("return window.diadShown;")) if browser else None
    return figures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dashboard_overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (the demo's: models/tiny)")
    parser.add_argument("--frames", type=int, default=160, help="frames per run (160)")
    parser.add_argument("--batch-size", type=int, default=8, help="the stream's --batch-size (8, as make demo)")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (3)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    costs = dashboard_costs(args.model)
    print(f"writer thread: observe {costs['observe_s'] * 1e6:.1f} us per record (median; max "
          f"{costs['observe_max_s'] * 1e3:.2f} ms); encoder thread: draw + JPEG {costs['encode_s'] * 1e3:.1f} ms "
          "per live frame", flush=True)
    browser = chromium()
    runs: dict[str, list[dict]] = {"plain": [], "dashboard": []}
    try:
        for repeat in range(args.repeats):
            for mode, done in runs.items():
                figures = run(args.model, args.frames, args.batch_size, browser if mode == "dashboard" else None)
                done.append(figures)
                shown = "" if figures["page_frames"] is None else f", {figures['page_frames']} frames shown"
                print(f"repeat {repeat + 1} {mode:9s} {figures['frames']} frames in {figures['seconds']:.1f} s, "
                      f"{figures['fps']:.2f} fps, {figures['cpu_s'] / figures['frames']:.3f} CPU s/frame{shown}",
                      flush=True)
    finally:
        browser.quit()
    pairs = list(zip(runs["plain"], runs["dashboard"], strict=True))
    fps = statistics.median(board["fps"] / plain["fps"] for plain, board in pairs)
    cpu = statistics.median(board["cpu_s"] / plain["cpu_s"] for plain, board in pairs)
    print(f"median frames/s: plain {statistics.median(r['fps'] for r in runs['plain']):.2f}, with the dashboard "
          f"open {statistics.median(r['fps'] for r in runs['dashboard']):.2f}; median of the pairs' ratios: "
          f"frames/s {100 * fps:.1f} %, CPU {100 * cpu:.1f} %")
    return 0


if __name__ == "__main__":
    run_cli(main)
