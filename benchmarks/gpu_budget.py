"""The GPU run's clock: one deadline shared out among its steps, and child processes that never outlive their share.

A step's share of the time left (less a reserve for writing the report) is its weight, its nominal seconds, over
the weights of the steps still to run, itself included: a step that finishes early leaves its time to the ones
after it, one that is short of its minimum is skipped with the reason. Every step runs in a child process with its
share as a hard timeout (:func:`run_process`) or checks the clock itself between its parts (:func:`run_steps` in a
worker process). Torch-free, so the orchestrator can report a machine where torch does not import.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

CONTEXT_LOST = 3  # a worker's exit status after a CUDA error: the rest of its steps need a fresh process
OK, SKIPPED, FAILED = "ok", "skipped", "failed"


@dataclass(frozen=True)
class Step:
    """A part of the GPU run: ``weight`` its nominal seconds, ``minimum`` the share below which it is skipped."""

    name: str
    weight: float
    minimum: float


@dataclass
class Outcome:
    """What became of a step: its status, why (skipped or failed), its time, its share and its rows."""

    step: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    share: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


class Clock:
    """Seconds left before ``deadline`` (``time.time()``), less ``reserve``; shares of them."""

    def __init__(self, deadline: float, reserve: float = 0.0):
        self.deadline = deadline
        self.reserve = reserve

    def left(self) -> float:
        """Seconds to the deadline, less the reserve."""
        return self.deadline - self.reserve - time.time()

    def share(self, step: Step, pending: Sequence[Step]) -> float:
        """``step``'s share of the time left: its weight among ``pending`` (the steps still to run, ``step``
        included)."""
        total = sum(s.weight for s in pending) or 1.0
        return max(0.0, self.left() * step.weight / total)

    def short(self, step: Step, share: float) -> str:
        """Why ``step`` cannot run in ``share`` seconds, or "" when it can."""
        if share >= step.minimum:
            return ""
        return f"time short: {share:.0f} s of the deadline left for it, it needs at least {step.minimum:.0f} s"


def is_cuda_error(exc: BaseException) -> bool:
    """An error from the CUDA driver or runtime, after which the process's CUDA context may be unusable."""
    text = f"{type(exc).__name__}: {exc}"
    return "CUDA error" in text or "AcceleratorError" in text or "cudaError" in text or "CUBLAS_STATUS" in text


def describe(exc: BaseException) -> str:
    """``Type: message`` and where it was raised (the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_steps(
    steps: Sequence[Step], clock: Clock, run: Callable[[str, float], Outcome], results: Path,
) -> bool:
    """Run each step by ``run(name, deadline)`` within its share, appending each :class:`Outcome` to ``results``
    (JSON lines) as it completes. An exception (a command's usage error too) fails only its step. After a CUDA
    error (raised, or flagged by the outcome's ``data["cuda_error"]``) the steps left are left for a fresh process:
    returns False then, else True."""
    for i, step in enumerate(steps):
        share = clock.share(step, steps[i:])
        start = time.time()
        reason = clock.short(step, share)
        if reason:
            outcome = Outcome(step.name, SKIPPED, reason)
        else:
            try:
                outcome = run(step.name, start + share)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 (the report names it; the other steps run)
                traceback.print_exc()
                outcome = Outcome(step.name, FAILED, describe(exc), data={"cuda_error": is_cuda_error(exc)})
        outcome.seconds, outcome.share = round(time.time() - start, 2), round(share, 1)
        record(results, outcome)
        if outcome.data.get("cuda_error") and i + 1 < len(steps):
            return False
    return True


def record(results: Path, outcome: Outcome) -> None:
    """Append ``outcome`` to the JSON-lines file ``results``."""
    with open(results, "a") as f:
        f.write(json.dumps(asdict(outcome), default=str) + "\n")


def read_outcomes(results: Path) -> dict[str, Outcome]:
    """The outcomes in ``results`` by step (the last one of a step wins); none when the file is missing. A line cut
    short (its process killed while writing it) is left out."""
    if not results.is_file():
        return {}
    outcomes = {}
    for line in results.read_text().splitlines():
        try:
            outcome = Outcome(**json.loads(line))
        except (ValueError, TypeError):
            continue
        outcomes[outcome.step] = outcome
    return outcomes


def run_process(command: Sequence[str], timeout: float, log: IO[str], env: dict[str, str] | None = None) -> str:
    """Run ``command`` with its output appended to ``log``; killed, with its process group, after ``timeout``
    seconds. Returns "" on exit status 0, else what happened (``exit status N`` or ``timed out after S s``)."""
    log.flush()
    process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=env, start_new_session=True)
    try:
        status = process.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return f"timed out after {timeout:.0f} s"
    return "" if status == 0 else f"exit status {status}"


def environment(extra_path: Sequence[str] = (), threads: int | None = None) -> dict[str, str]:
    """This environment for a child process: ``extra_path`` ahead on PYTHONPATH, unbuffered output, no progress
    bars (tqdm) and, given ``threads``, that many OpenMP threads (torch's CPU kernels)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    parts = [*extra_path, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env
