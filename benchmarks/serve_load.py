"""Load benchmark: N camera clients on one Triton server, against the local Detector in one process.

    python -m benchmarks.serve_load --model MODEL_DIR [--server grpc://HOST:PORT] [--cameras 1,4,8,16]
        [--seconds 10] [--fps 0] [--out runs/serve_load]

Each camera is a client of its own (a thread with its own gRPC channel, :class:`RemoteDetector`) sending one
frame per request, as ``python -m runtime.stream --server`` does: the next frame once the last is answered and
its frame period (``--fps``; 0: none, as fast as the server answers) has passed; with ``--fps`` each camera starts
at a random phase within its period (seeded), as free-running cameras are not in step. For each camera count: total
throughput (answered frames per second), latency percentiles (request sent to answer) and the batches Triton
formed meanwhile (the change in its statistics: executions per batch size). The baseline is the local
:class:`~runtime.detector.Detector` in this process, one frame per call (what one camera process runs) and
``max_batch`` frames per call. Without ``--server`` a server is started on free loopback ports
(``python -m runtime.serve --model MODEL_DIR``, ``--serve-args`` passed on) and stopped at the end.

Writes ``serve_load.csv``, ``serve_load.md`` and ``serve_load.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.cli import add_backend_arguments, run_cli
from runtime.detector import Detector
from runtime.errors import ServerError
from runtime.serving.client import RemoteDetector, grpc_address
from runtime.synthetic import CLASSES, render

FIELDS = ("mode", "cameras", "frames", "errors", "seconds", "throughput_fps", "p50_ms", "p95_ms", "p99_ms",
          "mean_batch", "batches")
START_TIMEOUT_S = 300.0


def camera_frames(size: int, count: int = 8) -> list[np.ndarray]:
    """Synthetic conveyor frames (each class, with and without a defect) at ``size`` pixels."""
    rng = np.random.default_rng(0)
    return [render(CLASSES[k % len(CLASSES)], rng, None if k % 2 else "scratch", size)[0] for k in range(count)]


def row(mode: str, cameras: int, latencies: list[float], errors: int, seconds: float,
        batches: dict[int, int] | None = None, frames_per_call: int = 1) -> dict:
    """One result: ``latencies`` in seconds, one per call of ``frames_per_call`` frames."""
    lat = np.asarray(latencies) * 1000.0
    p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if len(lat) else (float("nan"),) * 3
    frames = len(latencies) * frames_per_call
    executions = sum(batches.values()) if batches else 0
    return {
        "mode": mode, "cameras": cameras, "frames": frames, "errors": errors, "seconds": round(seconds, 2),
        "throughput_fps": round(frames / seconds, 2), "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "mean_batch": round(sum(size * n for size, n in batches.items()) / executions, 2) if executions else "",
        "batches": " ".join(f"{size}:{n}" for size, n in sorted(batches.items())) if batches else "",
    }


# ------------------------------------------------------------------------------------------------- local


def run_local(detector: Detector, frames: list[np.ndarray], batch: int, seconds: float) -> dict:
    """The local Detector scoring ``batch`` frames per call for ``seconds``."""
    prepared = np.stack([detector.prepare(f) for f in frames])
    calls = [prepared[np.arange(k, k + batch) % len(prepared)] for k in range(len(prepared))]
    detector.score(calls[0])  # warm-up
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        detector.score(calls[len(latencies) % len(calls)])
        latencies.append(time.perf_counter() - t)
    return row(f"local batch {batch}", 1, latencies, 0, time.perf_counter() - start, frames_per_call=batch)


# ------------------------------------------------------------------------------------------------ server


def batch_counts(url: str, model: str) -> dict[int, int]:
    """Triton's executions so far per batch size."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(grpc_address(url)) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for s in stats
            for b in s.get("batch_stats", [])}


def run_cameras(url: str, model: str, cameras: int, frames: list[np.ndarray], seconds: float, fps: float) -> dict:
    """``cameras`` clients, each sending one frame per request at most ``fps`` per second, for ``seconds``."""
    clients = [RemoteDetector(url, model) for _ in range(cameras)]
    prepared = [clients[0].prepare(f)[None] for f in frames]
    for client in clients:  # warm-up: every channel connected, the model run once
        client.submit(prepared[0])
        client.collect()
    latencies: list[list[float]] = [[] for _ in range(cameras)]
    errors = [0] * cameras
    before = batch_counts(url, model)
    barrier = threading.Barrier(cameras + 1)
    period = 1.0 / fps if fps > 0 else 0.0
    phases = np.random.default_rng(0).uniform(0, period, cameras)  # free-running cameras are not in step

    def camera(k: int) -> None:
        barrier.wait()
        time.sleep(phases[k])
        end = time.perf_counter() + seconds
        n = 0
        while (now := time.perf_counter()) < end:
            try:
                clients[k].submit(prepared[(n + k) % len(prepared)])
                clients[k].collect()
                latencies[k].append(time.perf_counter() - now)
            except ServerError:
                errors[k] += 1
            n += 1
            time.sleep(max(0.0, now + period - time.perf_counter()))

    threads = [threading.Thread(target=camera, args=(k,)) for k in range(cameras)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    after = batch_counts(url, model)
    for client in clients:
        client.close()
    formed = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    return row("server", cameras, [x for lat in latencies for x in lat], sum(errors), elapsed,
               {size: n for size, n in formed.items() if n})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """``python -m runtime.serve`` on free loopback ports, ready; its process and gRPC URL."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    command = [sys.executable, "-m", "runtime.serve", "--model", args.model, "--address", "127.0.0.1",
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
               "--backend", args.backend, *(["--device", args.device] if args.device else []),
               *(["--provider", args.provider] if args.provider else []), *shlex.split(args.serve_args)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return process, f"grpc://127.0.0.1:{grpc}"
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise ServerError(f"the server did not start: {' '.join(command)}")


# ------------------------------------------------------------------------------------------------ report


def markdown(rows: list[dict], title: str) -> str:
    head = ("| mode | cameras | frames | errors | frames/s | p50 ms | p95 ms | p99 ms | mean batch | "
            "batches (size:count) |")
    lines = [f"### {title}", "", head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        cells = [r["mode"], r["cameras"], r["frames"], r["errors"], r["throughput_fps"], r["p50_ms"], r["p95_ms"],
                 r["p99_ms"], r["mean_batch"], r["batches"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Throughput and p95 latency against the camera count; the local Detector's as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = [r for r in rows if r["mode"] == "server"]
    local = [r for r in rows if r["mode"] != "server"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "throughput_fps", "frames / s (all cameras)"), (axes[1], "p95_ms", "p95 ms")):
        ax.plot([r["cameras"] for r in served], [r[key] for r in served], "o-", label="Triton server")
        for r, style in zip(local, (":", "--"), strict=False):
            ax.axhline(r[key], linestyle=style, color="grey", label=f"{r['mode']} (one process)")
        ax.set_xlabel("concurrent cameras")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (the local baseline; served when no --server)")
    parser.add_argument("--server", help="a running server, grpc://HOST:PORT (default: start one on loopback)")
    parser.add_argument("--served-model", default="diad", help="the model's name on the server (diad)")
    add_backend_arguments(parser)
    parser.add_argument("--serve-args", default="", help="more runtime.serve flags for the server started here")
    parser.add_argument("--cameras", default="1,4,8,16", help="camera counts, comma-separated (1,4,8,16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per camera count (10)")
    parser.add_argument("--fps", type=float, default=0.0, help="each camera's frame rate (0: as fast as answered)")
    parser.add_argument("--frame-size", type=int, default=256, help="camera frames, pixels square (256)")
    parser.add_argument("--out", type=Path, default=Path("runs/serve_load"), help="report folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    counts = [int(c) for c in args.cameras.split(",")]
    frames = camera_frames(args.frame_size)
    rows: list[dict] = []
    with Detector(args.model, args.backend, args.device, provider=args.provider) as detector:
        for batch in sorted({1, detector.backend.max_batch}):
            rows.append(run_local(detector, frames, batch, args.seconds))
            print(rows[-1], flush=True)
    process, url = start_server(args) if not args.server else (None, args.server)
    try:
        for cameras in counts:
            rows.append(run_cameras(url, args.served_model, cameras, frames, args.seconds, args.fps))
            print(rows[-1], flush=True)
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "serve_load.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    title = f"{args.model} on {args.backend} {args.device or ''}, {args.seconds:g} s per row, fps {args.fps or 'max'}"
    text = markdown(rows, title)
    (args.out / "serve_load.md").write_text(text)
    plot(rows, args.out / "serve_load.png")
    print(text)
    return 0


if __name__ == "__main__":
    run_cli(main)
