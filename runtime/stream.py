"""``python -m runtime.stream``: score a camera, network stream, video, image folder or the synthetic conveyor.

    python -m runtime.stream [--source synthetic|0|rtsp://...|clip.mp4|folder|'*.png'] [--model models/tiny]
        [--frames N] [--jsonl PATH] [--save out.mp4|folder] [--show]

One JSON object per frame goes to standard output (or ``--jsonl``); logs and the summary go to standard error.
Live sources (cameras, URLs) are read in a background thread that keeps only the newest frame, so a slow model
drops stale frames (counted) instead of falling behind, and a lost stream reconnects with backoff. Files, folders
and the synthetic feed are scored frame by frame. A frame that cannot be decoded gives an error record and the
stream goes on. SIGINT / SIGTERM finish the frame in flight, close the outputs and print the summary (status 0).

A record holds ``time`` (ISO 8601 UTC, or ``--time epoch_ms``), ``frame`` (id), ``source``, ``name`` / ``class`` /
``defect`` when the source knows them, ``gt_label`` (``"anomalous"`` / ``"normal"``, null when unknown), then
either ``score`` (raw), ``pred_score`` (0.5 = the calibrated threshold), ``label`` (null when the model folder is
uncalibrated) and ``latency_ms`` (``preprocess encode steps decode score`` and the frame's ``total``), or ``error``.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from runtime.cli import run_cli
from runtime.detector import BACKENDS, Detector, Prediction
from runtime.errors import ModelFolderError, SourceError
from runtime.metrics import auroc
from runtime.sinks import (
    OTHER_COLOUR,
    VERDICT_COLOURS,
    FrameSink,
    JsonlSink,
    LatencyStats,
    WindowSink,
    annotate,
    format_summary,
    open_frame_sink,
)
from runtime.sources import Frame, LatestFrameReader, Source, open_source
from runtime.visualize import label, overlay

log = logging.getLogger("runtime.stream")

DEFAULT_MODEL = "models/tiny"
LABELS = {True: "anomalous", False: "normal"}
COLOURS = {"anomalous": VERDICT_COLOURS["anomaly"], "normal": VERDICT_COLOURS["good"]}
DISPLAY = (512, 960)  # annotated frames: the longer side is scaled into this range
VIDEO_FPS = 10.0  # frame rate of a saved video without --max-fps
TIME_FORMATS = ("iso", "epoch_ms")  # JSON sinks keep 6 significant digits of floats, so epoch time is integer ms
STOP_POLL_S = 0.1


class RecordSink(Protocol):
    """Where per-frame records go (:class:`runtime.sinks.JsonlSink`, or anything with ``write``)."""

    def write(self, record: dict) -> None: ...


# ------------------------------------------------------------------------------------------------- model


def require_model_folder(model: str | Path) -> None:
    """Raise :class:`ModelFolderError` saying how to build ``model`` when it is not a folder."""
    if not Path(model).is_dir():
        raise ModelFolderError(
            f"{model}: no model folder here. Build one with `make demo`, or export a trained run with "
            f"`python -m export --run RUN --out {model}` and calibrate it with "
            f"`python -m runtime.calibrate --model {model} --images NORMAL_IMAGES`"
        )


def open_detector(
    model: str | Path,
    backend: str = "onnxruntime",
    device: str | None = None,
    steps: int | None = None,
    start_t: int | None = None,
) -> Detector:
    """The :class:`Detector` of ``model`` (see :func:`require_model_folder`)."""
    require_model_folder(model)
    detector = Detector(model, backend, device, steps, start_t)
    if not detector.thresholds.calibrated:
        log.warning("%s has no thresholds: label and pred_score are null (calibrate with runtime.calibrate)", model)
    return detector


# ----------------------------------------------------------------------------------------------- records


def _timestamp(seconds: float, time_format: str) -> str | int:
    """ISO 8601 UTC with milliseconds, or integer milliseconds since the Unix epoch."""
    if time_format == "epoch_ms":
        return round(seconds * 1000)
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def _base_record(frame: Frame, time_format: str) -> dict:
    """The fields every record has: time, frame id, source, what is known of the frame, ground truth."""
    record = {"time": _timestamp(frame.time, time_format), "frame": frame.index, "source": frame.source}
    known = {"name": frame.name, "class": frame.class_name, "defect": frame.defect}
    record.update({key: value for key, value in known.items() if value is not None})
    record["gt_label"] = None if frame.label is None else LABELS[bool(frame.label)]
    return record


def _verdict(prediction: Prediction) -> str | None:
    return None if prediction.pred_label is None else LABELS[bool(prediction.pred_label)]


def prediction_record(frame: Frame, prediction: Prediction, total_s: float, time_format: str = "iso") -> dict:
    """A scored frame: raw ``score``, ``pred_score`` / ``label`` (None uncalibrated) and stage latencies in ms."""
    stages = {stage: s * 1000.0 for stage, s in prediction.seconds.items() if stage != "total"}
    return {
        **_base_record(frame, time_format),
        "score": prediction.score,
        "pred_score": prediction.pred_score,
        "label": _verdict(prediction),
        "latency_ms": {**stages, "total": total_s * 1000.0},
    }


def error_record(frame: Frame, time_format: str = "iso") -> dict:
    """A frame that could not be scored; ``error`` says why."""
    return {**_base_record(frame, time_format), "error": frame.error or "the source gave no image"}


# -------------------------------------------------------------------------------------------- annotation


def display_size(image: np.ndarray) -> np.ndarray:
    """``image`` scaled so that its longer side lies in :data:`DISPLAY` (small frames up, large ones down)."""
    h, w = image.shape[:2]
    longer = max(h, w)
    target = min(max(longer, DISPLAY[0]), DISPLAY[1])
    if target == longer:
        return image
    scale = target / longer
    size = (max(round(w * scale), 1), max(round(h * scale), 1))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def annotated(image: np.ndarray, prediction: Prediction) -> np.ndarray:
    """The frame at display size with the anomaly heatmap and the verdict. Uncalibrated: the raw map over its own
    range and the raw score."""
    shown = display_size(image)
    verdict = _verdict(prediction)
    if verdict is not None:
        return annotate(shown, prediction.anomaly_map, verdict, prediction.pred_score, COLOURS[verdict])
    raw = prediction.raw_map
    heat = overlay(shown, raw, float(raw.min()), float(raw.max()), alpha=0.4)
    return label(heat, f"UNCALIBRATED  raw {prediction.score:.4g}", OTHER_COLOUR)


def error_card(frame: Frame) -> np.ndarray:
    """A black display-size picture saying the frame could not be read (keeps saved videos in step)."""
    card = np.zeros((DISPLAY[0], DISPLAY[0], 3), np.uint8)
    return label(card, f"ERROR  frame {frame.index} {frame.name or ''}".rstrip(), OTHER_COLOUR)


# ------------------------------------------------------------------------------------------------ stream


@dataclass
class _Truth:
    """Ground truth seen so far with the raw scores and (calibrated) verdicts, for AUROC and accuracy."""

    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)

    def add(self, frame: Frame, prediction: Prediction) -> None:
        if frame.label is None:
            return
        self.labels.append(int(frame.label))
        self.scores.append(prediction.score)
        if prediction.pred_label is not None:
            self.correct.append(bool(prediction.pred_label) == bool(frame.label))

    def summary(self) -> dict:
        """``labelled`` frames, ``image_auroc`` (both labels seen) and ``accuracy`` (calibrated), else None."""
        both = len(set(self.labels)) == 2
        return {
            "labelled": len(self.labels),
            "image_auroc": auroc(np.asarray(self.scores), np.asarray(self.labels)) if both else None,
            "accuracy": float(np.mean(self.correct)) if self.correct else None,
        }


def _relay_stop(stop_event: threading.Event, source: Source, finished: threading.Event) -> None:
    """Stop ``source`` once ``stop_event`` is set, ending a read blocked in a reconnect backoff or throttle wait."""
    while not finished.is_set():
        if stop_event.wait(STOP_POLL_S):
            source.stop()
            return


def _write_frames(frame_sinks: Sequence[FrameSink], image: np.ndarray) -> bool:
    """Write ``image`` to every frame sink; True when one of them (a window) asks to quit."""
    quit_ = False
    for sink in frame_sinks:
        quit_ = sink.write(image) or quit_
    return quit_


def _score(detector: Detector, batch: Sequence[Frame], frame_sinks: Sequence[FrameSink], time_format: str,
           truth: _Truth) -> list[tuple[dict, float | None, bool]]:
    """Frames through the detector (readable ones in one batch) and the frame sinks, in order: per frame
    (record, latency or None for an error, quit?). A frame's latency is its batch's wall time."""
    start = time.perf_counter()
    readable = [f for f in batch if f.error is None and f.image is not None]
    predictions = dict(zip(map(id, readable), detector.predict([f.image for f in readable]) if readable else []))
    results = []
    for frame in batch:
        prediction = predictions.get(id(frame))
        if prediction is None:
            quit_ = bool(frame_sinks) and _write_frames(frame_sinks, error_card(frame))
            results.append((error_record(frame, time_format), None, quit_))
            continue
        quit_ = bool(frame_sinks) and _write_frames(frame_sinks, annotated(frame.image, prediction))
        truth.add(frame, prediction)
        total = time.perf_counter() - start
        results.append((prediction_record(frame, prediction, total, time_format), total, quit_))
    return results


def stream(
    detector: Detector,
    source: Source,
    records: Sequence[RecordSink] = (),
    frame_sinks: Sequence[FrameSink] = (),
    *,
    frames: int | None = None,
    stop_event: threading.Event | None = None,
    time_format: str = "iso",
    batch: int = 1,
) -> dict:
    """Score ``source`` frame by frame (a live one through a :class:`LatestFrameReader`) into ``records`` and
    annotated ``frame_sinks`` until it ends, ``frames`` records were written, ``stop_event`` is set or a window
    viewer quits; the frames in flight are always finished. The source is closed on return; the sinks are not.
    ``batch`` > 1 scores a finite source's frames in batches (more throughput, each frame waits for its batch);
    a live source is always scored frame by frame, newest first.

    Returns the summary: :meth:`LatencyStats.summary`'s fields (``frames`` = records written, ``dropped`` = live
    frames replaced by newer ones or left unread at the end) plus ``source``, ``stop_reason``, ``skipped`` (live
    frames discarded by ``max_fps``), ``calibrated``, ``labelled``, ``image_auroc`` and ``accuracy``.
    """
    stats, truth = LatencyStats(), _Truth()
    reader = LatestFrameReader(source) if source.live else None
    frames_in: Iterator[Frame] = reader if reader is not None else source
    finished = threading.Event()
    if stop_event is not None:
        threading.Thread(target=_relay_stop, args=(stop_event, source, finished), daemon=True).start()
    size = 1 if reader is not None else max(1, batch)
    taken, reason, pending = 0, "end of source", []
    try:
        while True:
            stop = None
            if frames is not None and taken + len(pending) >= frames:
                stop = "frame limit"
            elif stop_event is not None and stop_event.is_set():
                stop = "stop requested"
            else:
                try:
                    pending.append(next(frames_in))
                except StopIteration:
                    stop = "stop requested" if stop_event is not None and stop_event.is_set() else reason
                except SourceError as exc:
                    log.error("%s", exc)
                    stop = f"source lost: {exc}"
            if pending and (stop is not None or len(pending) == size):
                taken += len(pending)
                quit_ = False
                for record, latency, frame_quit in _score(detector, pending, frame_sinks, time_format, truth):
                    if latency is None:
                        log.warning("frame %d: %s", record["frame"], record["error"])
                        stats.add_error()
                    else:
                        stats.add(latency)
                    for sink in records:
                        sink.write(record)
                    quit_ = quit_ or frame_quit
                pending = []
                if quit_:
                    reason = "viewer quit"
                    break
            if stop is not None:
                reason = stop
                break
    finally:
        finished.set()
        if reader is not None:
            reader.close()
            stats.dropped = reader.received - taken
        else:
            source.close()
    return {"source": source.name, "stop_reason": reason, **stats.summary(), "skipped": source.skipped,
            "calibrated": detector.thresholds.calibrated, "model": model_summary(detector), **truth.summary()}


def model_summary(detector: Detector) -> dict:
    """What scored the frames: preset, DDIM plan and scorer (backbone, layers, weights), from the manifest."""
    data, plan = detector.manifest.data, detector.plan
    return {"preset": data.get("preset"), "start_t": int(plan.start_t), "steps": len(plan.timesteps),
            "scorer": data.get("scorer", {})}


def summary_text(summary: dict) -> str:
    """:func:`format_summary` plus image AUROC / accuracy when known and why the stream stopped."""
    parts = [format_summary(summary)]
    if summary["image_auroc"] is not None:
        parts.append(f"image AUROC {summary['image_auroc']:.3f} over {summary['labelled']} labelled frames")
    if summary["accuracy"] is not None:
        parts.append(f"verdict accuracy {summary['accuracy']:.3f}")
    model = summary["model"]
    scorer = model["scorer"]
    weights = "RANDOM weights" if scorer.get("weights") == "random" else "ImageNet weights"
    parts.append(
        f"model {model['preset']}, DDIM {model['steps']} steps from t={model['start_t']}, scorer "
        f"{scorer.get('backbone')} layers {scorer.get('layers')} ({weights})"
    )
    return "; ".join(parts) + f" ({summary['stop_reason']})"


# ------------------------------------------------------------------------------------------------ command


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
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="inference backend")
    parser.add_argument("--device", help="onnxruntime: cpu (default), cuda[:N] or tensorrt[:N]; tensorrt: cuda:N")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the model folder's)")
    parser.add_argument("--start-t", type=int, help="noising timestep (default: the model folder's)")
    parser.add_argument("--frames", type=int, help="stop after this many frames (default: the end of the source)")
    parser.add_argument("--max-fps", type=float, help="read at most this many frames per second")
    parser.add_argument("--batch", type=int, default=1,
                        help="files and synthetic feed: score this many frames per call (default 1; live sources 1)")
    parser.add_argument("--loop", action="store_true", help="replay a video file or image folder")
    parser.add_argument("--seed", type=int, default=0, help="synthetic source: random seed (default 0)")
    parser.add_argument("--defect-rate", type=float, default=0.3, help="synthetic source: defective share (0.3)")
    parser.add_argument("--jsonl", help="write the JSON lines to this file instead of standard output")
    parser.add_argument("--time", choices=TIME_FORMATS, default="iso",
                        help="record time as ISO 8601 UTC (default) or integer milliseconds since the epoch")
    parser.add_argument("--save", help="annotated frames to a video (.mp4, .avi, .mkv, .mov) or a PNG folder")
    parser.add_argument("--show", action="store_true", help="show annotated frames in a window (q or Esc quits)")
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        parser.error("--frames must be at least 1")
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.max_fps is not None and args.max_fps <= 0:
        parser.error("--max-fps must be positive")
    if not 0.0 <= args.defect_rate <= 1.0:
        parser.error("--defect-rate must lie in [0, 1]")
    return args


def _open_sinks(args: argparse.Namespace, stack: ExitStack) -> tuple[list[RecordSink], list[FrameSink]]:
    records: list[RecordSink] = [stack.enter_context(JsonlSink(args.jsonl))]
    frame_sinks: list[FrameSink] = []
    if args.save:
        frame_sinks.append(stack.enter_context(open_frame_sink(args.save, args.max_fps or VIDEO_FPS)))
    if args.show:
        frame_sinks.append(stack.enter_context(WindowSink()))
    return records, frame_sinks


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    with stop_on_signals(stop) as received:
        require_model_folder(args.model)  # before a camera is opened
        source = open_source(args.source, loop=args.loop, seed=args.seed, defect_rate=args.defect_rate,
                             max_fps=args.max_fps)
        with ExitStack() as stack:
            try:
                detector = stack.enter_context(open_detector(args.model, args.backend, args.device, args.steps,
                                                             args.start_t))
                records, frame_sinks = _open_sinks(args, stack)
            except BaseException:
                source.close()
                raise
            summary = stream(detector, source, records, frame_sinks, frames=args.frames, stop_event=stop,
                             time_format=args.time, batch=args.batch)
    if received:
        log.info("stopped by %s after the frame in flight", received[0])
    print(f"summary: {summary_text(summary)}", file=sys.stderr)
    return 1 if summary["stop_reason"].startswith("source lost") else 0


if __name__ == "__main__":
    run_cli(main)
