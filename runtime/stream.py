"""``python -m runtime.stream``: score a camera, network stream, video, image folder or the synthetic conveyor.

    python -m runtime.stream [--source synthetic|0|rtsp://...|clip.mp4|folder|'*.png'] [--model models/tiny]
        [--frames N] [--jsonl PATH] [--save out.mp4|folder] [--show] [--server grpc://HOST:PORT]
        [--dashboard 127.0.0.1:8080 [--dashboard-token TOKEN]]

One JSON object per frame goes to standard output (or ``--jsonl``); logs and the summary go to standard error.
Live sources (cameras, URLs) are read in a background thread that keeps only the newest frame, so a slow model
drops stale frames (counted) instead of falling behind, and a lost stream reconnects with backoff. Files, folders
and the synthetic feed are scored frame by frame (or ``--batch-size`` at a time). The stream is a pipeline of three
threads: while the model scores batch N, the next batch is captured, decoded and pre-processed and the one before
is annotated and written (ONNX Runtime releases the GIL; TensorRT computes on its own streams, two batches in
flight). Every frame gives one record, in order: a verdict, or an error when it cannot be read or decoded, is over
a limit (``--max-pixels``, ``--max-side``, ``--max-file-mb``) or fails pre-processing, and the stream goes on. Only
the model or an output failing, or a live source lost for good, stops it early (status 1, with the summary; frames
already taken get error records). SIGINT / SIGTERM finish the frames in flight, close the outputs and print the
summary (status 0). With ``--server`` the frames are scored by a Triton server (``python -m runtime.serve``,
:class:`~runtime.serving.client.RemoteDetector`), which batches them with other cameras' frames; while it is down
or restarting, the frames get error records and the stream reconnects with backoff. With ``--dashboard`` a live
page and Prometheus ``/metrics`` are served beside the stream (:mod:`runtime.dashboard`, ``docs/dashboard.md``).

A record holds ``time`` (ISO 8601 UTC, or ``--time epoch_ms``), ``frame`` (id), ``source``, ``name`` / ``class`` /
``defect`` when the source knows them, ``gt_label`` (``"anomalous"`` / ``"normal"``, null when unknown), then
either ``score`` (raw), ``pred_score`` (0.5 = the calibrated threshold), ``label`` (null when the model folder is
uncalibrated), ``latency_ms`` and ``stage_ms``, or ``error``. ``latency_ms`` is the frame's own time line:
``capture_to_verdict``, the sum of ``prepare`` (capture to pre-processed), ``batch_wait`` (until its batch went to
the model: filling the batch and waiting for the model), ``model`` (its batch in the model) and ``output``
(annotating and writing it and the frames before it in its batch). ``stage_ms`` is what the frame cost:
its ``preprocess`` and its share of its batch's ``encode steps decode score``.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from runtime.annotation import frame_picture
from runtime.cli import add_backend_arguments, run_cli
from runtime.defaults import DEFAULT_MODEL, DEFAULT_SERVED_NAME
from runtime.detector import FrameScorer
from runtime.errors import DiadError
from runtime.frames import Source
from runtime.limits import Limits
from runtime.model_folder import open_detector, require_model_folder
from runtime.records import TIME_FORMATS, summary_text
from runtime.serving.client import RemoteDetector
from runtime.sinks import VIDEO_FPS, FrameSink, JsonlSink, WindowSink, open_frame_sink
from runtime.sources import open_source
from runtime.stream_run import FrameObserver, RecordSink, stream

if TYPE_CHECKING:
    from runtime.dashboard import Address, Dashboard

log = logging.getLogger("runtime.stream")

FAILURES = ("source lost", "model failed", "output failed")  # stop reasons that make the command exit 1


@contextmanager
def stop_on_signals(stop_event: threading.Event) -> Iterator[list[str]]:
    """While inside, SIGINT and SIGTERM set ``stop_event`` (a second one aborts with KeyboardInterrupt); yields
    the names of the signals received. Outside the main thread it does nothing."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: object) -> None:
        if stop_event.is_set():
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)
        stop_event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime.stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="synthetic",
                        help="camera index, video file, RTSP/HTTP URL, image folder or glob, or 'synthetic' (default)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder (default {DEFAULT_MODEL}: make demo)")
    add_backend_arguments(parser)
    parser.add_argument("--server", metavar="grpc://HOST:PORT",
                        help="score through a Triton server (python -m runtime.serve) instead of a local model: "
                        "--model, --backend, --device, --provider, --steps and --start-t are the server's")
    parser.add_argument("--served-model", default=DEFAULT_SERVED_NAME,
                        help=f"with --server: the model's name there ({DEFAULT_SERVED_NAME})")
    parser.add_argument("--steps", type=int,
                        help="DDIM steps (default: the model folder's; 0: VAE-only plan (no diffusion))")
    parser.add_argument("--start-t", type=int, help="noising timestep (default: the model folder's)")
    parser.add_argument("--frames", type=int, help="stop after this many frames (default: the end of the source)")
    parser.add_argument("--max-fps", type=float, help="read at most this many frames per second")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="files and synthetic feed: score this many frames per call (default 1; live sources 1)")
    parser.add_argument("--loop", action="store_true", help="replay a video file or image folder")
    parser.add_argument("--seed", type=int, default=0, help="synthetic source: random seed (default 0)")
    parser.add_argument("--defect-rate", type=float, default=0.3, help="synthetic source: defective share (0.3)")
    parser.add_argument("--jsonl", help="write the JSON lines to this file instead of standard output")
    parser.add_argument("--time", choices=TIME_FORMATS, default="iso",
                        help="record time as ISO 8601 UTC (default) or integer milliseconds since the epoch")
    parser.add_argument("--save", help="annotated frames to a video (.mp4, .avi, .mkv, .mov) or a PNG folder")
    parser.add_argument("--show", action="store_true", help="show annotated frames in a window (q or Esc quits)")
    parser.add_argument("--dashboard", metavar="HOST:PORT",
                        help="serve a live page and Prometheus /metrics there (127.0.0.1:8080; port 0: any free "
                        "one); an address other than loopback needs a token")
    parser.add_argument("--dashboard-token", metavar="TOKEN",
                        help="the token the dashboard's requests must carry (default: $DIAD_DASHBOARD_TOKEN)")
    Limits.add_arguments(parser)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        parser.error("--frames must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.max_fps is not None and args.max_fps <= 0:
        parser.error("--max-fps must be positive")
    if not 0.0 <= args.defect_rate <= 1.0:
        parser.error("--defect-rate must lie in [0, 1]")
    if args.server and (args.steps is not None or args.start_t is not None):
        parser.error("--steps and --start-t are the server's with --server (python -m runtime.serve)")
    return args


def _open_model(args: argparse.Namespace, limits: Limits) -> FrameScorer:
    """The local detector of ``--model``, or the ``--server``'s model."""
    if not args.server:
        return open_detector(args.model, args.backend, args.device, args.steps, args.start_t, limits, args.provider)
    remote = RemoteDetector(args.server, args.served_model, limits, maps=bool(args.save or args.show))
    log.info("scoring through %s: model %s version %s (manifest sha256 %s)", args.server, remote.model,
             remote.version, remote.manifest_sha256)
    if not remote.calibrated:
        log.warning("the served model has no thresholds: label and pred_score are null")
    return remote


def _open_sinks(args: argparse.Namespace, stack: ExitStack) -> tuple[list[RecordSink], list[FrameSink]]:
    records: list[RecordSink] = [stack.enter_context(JsonlSink(args.jsonl))]
    frame_sinks: list[FrameSink] = []
    if args.save:
        frame_sinks.append(stack.enter_context(open_frame_sink(args.save, args.max_fps or VIDEO_FPS)))
    if args.show:
        frame_sinks.append(stack.enter_context(WindowSink()))
    return records, frame_sinks


def _dashboard_address(args: argparse.Namespace) -> Address | None:
    """``--dashboard``'s address, checked (a public one needs a token); None without the option."""
    if args.dashboard is None:
        return None
    try:
        from runtime.dashboard import dashboard_address  # prometheus-client: the runtime extra
    except ModuleNotFoundError as exc:
        raise DiadError(f"--dashboard needs {exc.name}: pip install 'diad-edge[runtime]'") from None
    return dashboard_address(args.dashboard, args.dashboard_token)


def _open_dashboard(address: Address, args: argparse.Namespace, detector: FrameScorer, source: Source) -> Dashboard:
    """The dashboard of this stream, serving at ``address``."""
    from runtime.dashboard import Dashboard, model_info

    model = model_info(detector, "triton" if args.server else args.backend)
    return Dashboard(address, thresholds=detector.thresholds, model=model, source=source, render=frame_picture)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    with stop_on_signals(stop) as received:
        if not args.server:
            require_model_folder(args.model)  # before a camera is opened
        dashboard = _dashboard_address(args)
        limits = Limits.from_args(args)
        source = open_source(args.source, loop=args.loop, seed=args.seed, defect_rate=args.defect_rate,
                             max_fps=args.max_fps, limits=limits)
        with ExitStack() as stack:
            try:
                detector = stack.enter_context(_open_model(args, limits))
                records, frame_sinks = _open_sinks(args, stack)
                observers: list[FrameObserver] = []
                if dashboard is not None:
                    observers.append(stack.enter_context(_open_dashboard(dashboard, args, detector, source)))
            except BaseException:
                source.close()
                raise
            summary = stream(detector, source, records, frame_sinks, frames=args.frames, stop_event=stop,
                             time_format=args.time, batch=args.batch_size, observers=observers)
    if received:
        log.info("stopped by %s after the frame in flight", received[0])
    print(f"summary: {summary_text(summary)}", file=sys.stderr)
    return 1 if summary["stop_reason"].startswith(FAILURES) else 0


if __name__ == "__main__":
    run_cli(main)
