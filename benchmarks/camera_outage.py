"""A network camera that goes away and comes back: ``python -m runtime.stream`` through a camera outage.

    python -m benchmarks.camera_outage --model MODEL_DIR [--outage 30] [--fps 20] [--before 10] [--after 15]

A camera on loopback (:class:`~benchmarks.live.MjpegCamera`: MJPEG over HTTP, read by the stream through OpenCV's
FFmpeg like any IP camera) sends ``--fps`` frames a second for ``--before`` seconds, stops (every connection
dropped, nothing listening) for ``--outage`` seconds, then sends again for ``--after`` seconds; the stream runs
with ``--dashboard`` and is stopped with SIGTERM. Printed: whether the stream lived through it (running when the
camera came back, exit status 0, no error record), the frames the camera did not send while down against those
the stream counts as missed (``/api/state``'s ``source.missed``: the gap times the rate measured before it), the
frames the camera sent against those the stream scored plus dropped (replaced by newer ones), the reconnect
attempts, and how long after the camera came back the first frame was scored, against the backoff's longest wait
(``runtime.sources.LiveCapture``: 0.5 s doubling up to 8 s).
"""
from __future__ import annotations

import argparse
import json
import time
import urllib.request
from collections.abc import Sequence

from benchmarks.live import MjpegCamera, StreamProcess, summary
from runtime.cli import run_cli

LONGEST_BACKOFF_S = 8.0  # runtime.sources.open_source's default backoff (0.5, 8.0)


def _state(url: str) -> dict:
    with urllib.request.urlopen(url + "api/state", timeout=10) as response:
        return json.loads(response.read())


def run(model: str, outage: float, fps: float, before: float, after: float) -> dict:
    """One outage; the figures printed by :func:`main`."""
    camera = MjpegCamera(fps)
    camera.start()
    stream = StreamProcess("--model", model, "--source", camera.url, "--dashboard", "127.0.0.1:0")
    try:
        url = stream.dashboard_url()
        stream.wait_for(lambda: stream.records, "the first frame scored", 120)
        time.sleep(before)
        camera.stop()
        sent_before, down_at = camera.sent, time.time()
        time.sleep(outage)
        during = _state(url)["source"]
        alive = stream.process.poll() is None
        camera.start()
        back_at = time.time()
        stream.wait_for(lambda: any(at > back_at for at, _ in stream.lines), "a frame scored after the outage", 60)
        resumed = min(at for at, _ in stream.lines if at > back_at) - back_at
        time.sleep(after)
        source = _state(url)["source"]
        camera.stop()
    finally:
        status, log = stream.stop()
        camera.stop()
    figures = summary(log)
    return {
        "alive_through_outage": alive, "exit_status": status, "reconnecting_during_outage": during["state"],
        "error_records": sum("error" in r for r in stream.records), "outage_s": back_at - down_at,
        "camera_frames_not_sent": round((back_at - down_at) * fps), "missed_counted": source["missed"],
        "camera_frames_sent": camera.sent, "sent_before_outage": sent_before, "scored": figures["frames"],
        "dropped": figures["dropped"], "reconnects": source["reconnects"], "attempts": during["attempts"],
        "resumed_after_s": resumed, "longest_backoff_s": LONGEST_BACKOFF_S, "stream_fps": figures["fps"],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.camera_outage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the camera is away (30)")
    parser.add_argument("--fps", type=float, default=20.0, help="the camera's frame rate (20)")
    parser.add_argument("--before", type=float, default=10.0, help="seconds of frames before the outage (10)")
    parser.add_argument("--after", type=float, default=15.0, help="seconds of frames after it (15)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    figures = run(args.model, args.outage, args.fps, args.before, args.after)
    for key, value in figures.items():
        print(f"{key:28s} {value:.2f}" if isinstance(value, float) else f"{key:28s} {value}")
    accounted = figures["scored"] + figures["dropped"]
    print(f"camera frames sent {figures['camera_frames_sent']}, scored + dropped {accounted}; "
          f"not sent while down {figures['camera_frames_not_sent']}, counted missed {figures['missed_counted']}; "
          f"scoring resumed {figures['resumed_after_s']:.1f} s after the camera came back "
          f"(longest backoff wait {LONGEST_BACKOFF_S:.0f} s)")
    survived = figures["alive_through_outage"] and figures["exit_status"] == 0 and not figures["error_records"]
    return 0 if survived else 1


if __name__ == "__main__":
    run_cli(main)
