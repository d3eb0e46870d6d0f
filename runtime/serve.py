"""``python -m runtime.serve``: serve a model folder from NVIDIA Triton Inference Server.

    python -m runtime.serve --model models/tiny [--backend onnxruntime|tensorrt] [--device cpu|cuda:N]
        [--steps N] [--start-t T] [--max-batch N] [--max-queue-delay-us U] [--instances K]
        [--http-port 8000 --grpc-port 8001 --metrics-port 8002]

One server batches the frames of many cameras (``python -m runtime.stream --server grpc://HOST:8001``). The
model takes ``frames``, ``uint8 (H, W, 3)`` of any size (pre-processed by the runtime on the server), and answers
``score``, ``pred_score``, ``pred_label`` and, when asked, ``anomaly_map``, ``pred_mask`` and ``raw_map``.
Triton's dynamic batcher joins requests of frames of one size into batches of up to ``--max-batch`` (default the
model folder's ``max_batch``), waiting at most ``--max-queue-delay-us`` for a batch to fill; ``--instances``
model instances (each its own process and detector) run batches concurrently; ``--steps`` / ``--start-t`` choose
the plan they run (``--steps 0``: the VAE-only plan, no diffusion). The model's version is the
manifest's hash (:mod:`runtime.serving.repository`). Triton's endpoints: ``/v2/health/live`` and
``/v2/health/ready`` (HTTP), its statistics, and Prometheus metrics on ``http://HOST:METRICS_PORT/metrics``.
SIGTERM or SIGINT: Triton stops taking requests, finishes those in flight (at most ``--exit-timeout-s``) and the
command exits 0.

Needs the ``serve`` extra and an interpreter with a shared libpython (:mod:`runtime.serving.environment`).
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from runtime.cli import add_backend_arguments, run_cli
from runtime.defaults import DEFAULT_MODEL, DEFAULT_SERVED_NAME
from runtime.detector import model_summary, runnable_plan
from runtime.errors import ServerError
from runtime.limits import Limits
from runtime.manifest import Manifest
from runtime.model_folder import require_model_folder
from runtime.serving.environment import (
    backend_directory,
    check_interpreter,
    find_triton,
    python_paths,
    server_environment,
)
from runtime.serving.repository import ServedModel, manifest_version, write_repository

log = logging.getLogger("runtime.serve")

READY_TIMEOUT_S = 600.0  # loading a model (TensorRT engines) may take minutes
POLL_S = 0.2
PR_SET_PDEATHSIG = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder (default {DEFAULT_MODEL})")
    add_backend_arguments(parser)
    parser.add_argument("--steps", type=int,
                        help="DDIM steps (default: the model folder's; 0: VAE-only plan (no diffusion))")
    parser.add_argument("--start-t", type=int, help="noising timestep (default: the model folder's)")
    parser.add_argument("--name", default=DEFAULT_SERVED_NAME,
                        help=f"the model's name on the server (default {DEFAULT_SERVED_NAME})")
    parser.add_argument("--max-batch", type=int, help="largest batch Triton forms (default: the model folder's)")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000,
                        help="how long a request may wait for its batch to fill, in microseconds (default 2000)")
    parser.add_argument("--instances", type=int, default=1, help="model instances running batches at once (1)")
    parser.add_argument("--address", default="0.0.0.0",
                        help="address the endpoints listen on (default 0.0.0.0: every interface)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP endpoint (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC endpoint (default 8001)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics (default 8002)")
    parser.add_argument("--exit-timeout-s", type=int, default=30,
                        help="on SIGTERM, how long to wait for requests in flight (default 30)")
    parser.add_argument("--repository", type=Path,
                        help="write the Triton model repository here and keep it (default: a temporary folder)")
    Limits.add_arguments(parser)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("max_batch", "instances"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_queue_delay_us < 0:
        parser.error("--max-queue-delay-us must be at least 0")
    return args


def served_model(args: argparse.Namespace, manifest: Manifest) -> ServedModel:
    """What to serve; :class:`ServerError` when ``--max-batch`` is over the model folder's."""
    max_batch = args.max_batch or manifest.max_batch
    if max_batch > manifest.max_batch:
        raise ServerError(f"--max-batch {max_batch}: {manifest.root} runs batches of at most {manifest.max_batch} "
                          "(its max_batch; export it again with a larger --max-batch)")
    return ServedModel(manifest.root, args.backend, args.device, args.provider, max_batch, args.max_queue_delay_us,
                       args.instances, Limits.from_args(args), args.name, args.steps, args.start_t)


def server_command(binary: Path, repository: Path, backends: Path, args: argparse.Namespace) -> list[str]:
    return [
        str(binary), f"--model-repository={repository}", f"--backend-directory={backends}",
        f"--http-address={args.address}", f"--http-port={args.http_port}",
        f"--grpc-address={args.address}", f"--grpc-port={args.grpc_port}",
        f"--metrics-address={args.address}", f"--metrics-port={args.metrics_port}",
        f"--exit-timeout-secs={args.exit_timeout_s}", "--strict-readiness=true", "--log-verbose=0",
    ]


def _die_with_parent() -> None:
    """In the child: SIGTERM when this process dies, so no orphan server keeps the ports."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def wait_ready(process: subprocess.Popen, url: str, timeout_s: float = READY_TIMEOUT_S) -> bool:
    """Poll ``url`` (``/v2/health/ready``) until it answers 200: True; False when ``process`` ended first."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(POLL_S)
    return False


def serve(args: argparse.Namespace) -> int:
    install = find_triton()
    library = check_interpreter(install)  # before anything starts: a clear error, not a broken model load
    require_model_folder(args.model)
    manifest = Manifest.load(args.model)
    model = served_model(args, manifest)
    plan = runnable_plan(manifest, args.steps, args.start_t)  # a plan the schedule cannot make: refused here
    version, digest = manifest_version(manifest)
    with tempfile.TemporaryDirectory(prefix="diad-serve-") as scratch:
        repository = args.repository or Path(scratch) / "models"
        write_repository(model, manifest, model_summary(manifest, plan), repository, python_paths())
        backends = backend_directory(install, Path(scratch))
        command = server_command(install.server, repository, backends, args)
        log.info("starting Triton: %s", " ".join(command))
        process = subprocess.Popen(command, env=server_environment(install, library), start_new_session=True,
                                   preexec_fn=_die_with_parent)
        received: list[str] = []

        def forward(signum: int, _frame: object) -> None:
            if received:  # a second signal: stop waiting for requests in flight
                process.kill()
            received.append(signal.Signals(signum).name)
            process.send_signal(signal.SIGTERM)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            host = "127.0.0.1" if args.address in ("0.0.0.0", "::") else args.address
            if wait_ready(process, f"http://{host}:{args.http_port}/v2/health/ready"):
                log.info("serving %s version %d (manifest sha256 %s) from %s: grpc://%s:%d, http://%s:%d, "
                         "metrics http://%s:%d/metrics", model.name, version, digest, manifest.root, args.address,
                         args.grpc_port, args.address, args.http_port, args.address, args.metrics_port)
            code = process.wait()
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            if process.poll() is None:
                process.kill()
                process.wait()
    if received:
        log.info("stopped by %s; Triton exited with status %d", received[0], code)
        return 0 if code == 0 else 1
    raise ServerError(f"Triton exited with status {code} (its log above says why: a port in use, a model folder "
                      "that failed to load)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    return serve(args)


if __name__ == "__main__":
    run_cli(main)
