"""The prepared GPU run: one command, one deadline, a report of everything it measured or could not.

    python -m benchmarks.gpu_run --out DIR [--device cuda] [--deadline-minutes 9] [--sizes full|dry]
                                 [--kit .whl] [--site /tmp/site] [--work DIR] [--keep-work]

On the GPU test machine, with the kit carried (``make gpu-kit`` first, here), the whole device command is

    bash benchmarks/gpu_run.sh "$OUT"        # device tool: carry [".whl"], timeout_s 600

which installs the kit's wheels into /tmp/site and runs this module with ``--device cuda --deadline-minutes 9``.
``make gpu-dry-run`` runs the same steps on this CPU with ``--sizes dry --device cpu``.

Steps, in order, each with a share of the time left in proportion to its nominal seconds (:mod:`benchmarks.gpu_budget`;
skipped with the reason when its share is below its minimum): ``kit`` (pip installs the wheels), ``preflight``
(:mod:`benchmarks.gpu_preflight`), ``data`` (the demo's synthetic set), then two worker processes of
:mod:`benchmarks.gpu_steps`: the measurements (``export``, ``backends``, ``tiny``, ``parity``, ``sd15``,
``plumbing``) and the training (``autoencoder``, ``diad``, ``statistics``, ``evaluate``). Every child process is
killed at the end of its share; a worker stopped by a CUDA error is started again for the steps it left. A step
that needs the GPU is skipped when the preflight found none.

Writes into DIR, flat, at most five files: ``report.json`` and ``report.md`` (every step with its status, share and
reason; the rows; the targets; the answer to whether the diffusion earns its cost over its own autoencoder),
``sweep.csv`` (the tiny rows, :mod:`benchmarks.sweep`'s columns), ``metrics.md`` (the evaluation) and ``log.txt``
(this run's and every child's output). Exits 1 only when nothing was measured.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from benchmarks.gpu_budget import (
    CONTEXT_LOST,
    FAILED,
    OK,
    SKIPPED,
    Clock,
    Outcome,
    Step,
    describe,
    environment,
    read_outcomes,
    run_process,
)
from benchmarks.gpu_kit import ROOT, kit_pins, normalize

REPORT_RESERVE_S = 5.0  # kept back from every share for writing the report
PREFLIGHT_LIMIT_S = 30.0
WORKER_GRACE_S = 3.0  # a worker's own deadline is this much before its kill
WORKER_STARTS = 3  # a worker stopped by a CUDA error is started again for the steps it left, this often in all
BENCH = ("export", "backends", "tiny", "parity", "sd15", "plumbing")
TRAIN = ("autoencoder", "diad", "statistics", "evaluate")
NEEDS_DEVICE = {"tiny", "parity", "sd15", "plumbing", *TRAIN}  # skipped when the GPU asked for is missing
RESULT_FILES = ("report.json", "report.md", "sweep.csv", "metrics.md", "log.txt")


@dataclass(frozen=True)
class Sizes:
    """What the run measures at which size; ``weights``: per step, (nominal seconds, minimum seconds)."""

    name: str
    data: tuple[int, int, int]  # synthetic set: training, normal test and per-defect test images per class
    tiny_limit: int  # test images per class for the tiny rows
    tiny_batches: tuple[int, ...]  # the first batch size scores every image, the others time latency_batches
    warmup: int
    latency_batches: int
    parity_images: int
    big_preset: str  # "sd15"; the dry run's stand-in is "tiny" (random weights either way)
    big_precision: str
    big_graph: bool
    big_steps: tuple[int, ...]
    big_batches: tuple[int, ...]
    repeats: int
    autoencoder_minutes: float
    diad_minutes: float
    max_steps: int | None  # per training stage (the dry run's bound)
    eval_limit: int | None  # test images per class
    diad_args: tuple[str, ...]  # more arguments of training.train
    threads: int | None  # OpenMP threads per child process (None: torch's default)
    weights: dict[str, tuple[float, float]] = field(default_factory=dict)


SIZES = {
    "full": Sizes(
        name="full", data=(60, 20, 10), tiny_limit=24, tiny_batches=(32, 8, 1), warmup=2, latency_batches=10,
        parity_images=32, big_preset="sd15", big_precision="fp16", big_graph=True, big_steps=(10, 4, 2),
        big_batches=(1, 8), repeats=3, autoencoder_minutes=1.0, diad_minutes=4.0, max_steps=None, eval_limit=None,
        diad_args=(), threads=None,
        weights={"kit": (10, 3), "preflight": (25, 5), "data": (12, 3), "export": (15, 5), "backends": (3, 1),
                 "tiny": (40, 8), "parity": (8, 3), "sd15": (55, 15), "plumbing": (20, 5), "autoencoder": (72, 20),
                 "diad": (255, 40), "statistics": (15, 4), "evaluate": (25, 6)},
    ),
    "dry": Sizes(  # every step at its smallest on a CPU: what runs on the GPU, tried here first
        name="dry", data=(1, 1, 1), tiny_limit=2, tiny_batches=(8, 1), warmup=1, latency_batches=1,
        parity_images=2, big_preset="tiny", big_precision="fp32", big_graph=False, big_steps=(2, 1),
        big_batches=(1, 2), repeats=1, autoencoder_minutes=0.5, diad_minutes=0.5, max_steps=1, eval_limit=2,
        # one thread: on a small CPU that other jobs share, OpenMP's idle threads spin and slow every kernel
        diad_args=("--val-fraction", "0"), threads=1,
        weights={"kit": (2, 1), "preflight": (15, 5), "data": (4, 1), "export": (25, 5), "backends": (2, 1),
                 "tiny": (14, 3), "parity": (5, 2), "sd15": (8, 3), "plumbing": (3, 1), "autoencoder": (20, 5),
                 "diad": (16, 5), "statistics": (8, 2), "evaluate": (10, 3)},
    ),
}


def plan(sizes: Sizes, kit: bool) -> list[Step]:
    """The run's steps in order (``kit`` only when there is a kit to install)."""
    names = [*(["kit"] if kit else []), "preflight", "data", *BENCH, *TRAIN]
    return [Step(name, *sizes.weights[name]) for name in names]


class Run:
    """One GPU run: its clock, its log, its child processes and the outcomes of its steps."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.sizes = SIZES[args.sizes]
        self.clock = Clock(time.time() + 60 * args.deadline_minutes, REPORT_RESERVE_S)
        self.out = Path(args.out)
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_run-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.steps = plan(self.sizes, args.kit is not None)
        self.outcomes: dict[str, Outcome] = {}
        self.site: list[str] = []
        self.started = time.time()
        self.log: IO[str] = open(self.out / "log.txt", "w")  # noqa: SIM115 (closed by close())

    def say(self, text: str) -> None:
        """A line on stdout and in log.txt, stamped with the seconds since the start."""
        line = f"[{time.time() - self.started:6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def pending(self) -> list[Step]:
        """The steps without an outcome yet, in order."""
        return [s for s in self.steps if s.name not in self.outcomes]

    def keep(self, outcome: Outcome) -> None:
        """Record a step's outcome and log it."""
        self.outcomes[outcome.step] = outcome
        self.say(f"{outcome.step}: {outcome.status} in {outcome.seconds:.1f} s of {outcome.share:.0f} s"
                 + (f" ({outcome.reason})" if outcome.reason else ""))

    def share(self, step: Step, cap: float | None = None) -> float:
        """``step``'s share of the time left (at most ``cap`` s); ``step`` may stand for several pending steps, its
        weight theirs together."""
        share = self.clock.share(step, self.pending())
        return min(share, cap) if cap else share

    def child(self, step: Step, command: list[str], share: float) -> tuple[str, float, float]:
        """Run ``command`` within ``share`` seconds: (what went wrong or "", share, seconds)."""
        start = time.time()
        reason = self.clock.short(step, share)
        if not reason:
            self.say(f"{step.name}: {' '.join(command[1:])} (share {share:.0f} s)")
            reason = run_process(command, share, self.log, environment([*self.site, str(ROOT)], self.sizes.threads))
        return reason, share, time.time() - start

    def python(self, *args: str) -> list[str]:
        """A command line of this interpreter."""
        return [sys.executable, *args]

    def close(self) -> None:
        """Close the log; remove the scratch folder unless ``--keep-work``."""
        self.log.close()
        if not self.args.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the steps
def install_kit(run: Run, step: Step) -> Outcome:
    """pip installs the kit's wheels into ``--site`` (no index, no dependencies); names pins without a wheel."""
    folder, site = Path(run.args.kit), run.args.site
    wheels = sorted(folder.glob("*.whl"))
    present = {normalize(w.name.split("-")[0]) for w in wheels}
    missing = [f"{name}=={version}" for name, version in kit_pins().items() if name not in present]
    data = {"wheels": [w.name for w in wheels], "mib": round(sum(w.stat().st_size for w in wheels) / 2**20, 2),
            "missing": missing, "site": site}
    if not wheels:
        return Outcome(step.name, FAILED, f"{folder}: no wheels (make gpu-kit here, and carry .whl)", data=data)
    command = run.python("-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                         "--no-cache-dir", "--upgrade", "--target", site, *map(str, wheels))
    reason, share, seconds = run.child(step, command, run.share(step))
    run.site = [site] if not reason else []
    if not reason and missing:
        reason = f"no wheel for {', '.join(missing)} in {folder}"
    return Outcome(step.name, FAILED if reason else OK, reason, seconds, share, data=data)


def preflight(run: Run, step: Step) -> Outcome:
    """:mod:`benchmarks.gpu_preflight` within its share (at most 30 s); its report is the outcome's data."""
    report = run.work / "preflight.json"
    command = run.python("-m", "benchmarks.gpu_preflight", "--device", run.args.device, "--json", str(report))
    reason, share, seconds = run.child(step, command, run.share(step, PREFLIGHT_LIMIT_S))
    data = json.loads(report.read_text()) if report.is_file() else {}
    if reason and data.get("missing"):
        reason = "missing: " + "; ".join(data["missing"])
    return Outcome(step.name, FAILED if reason else OK, reason, seconds, share, data=data)


def make_data(run: Run, step: Step) -> Outcome:
    """The demo's synthetic set at the sizes' counts (``training.synthetic``, seed 0)."""
    train, good, defect = run.sizes.data
    command = run.python("-m", "training.synthetic", str(run.work / "data"), "--seed", "0", "--train", str(train),
                         "--test-good", str(good), "--test-defect", str(defect))
    reason, share, seconds = run.child(step, command, run.share(step))
    data = {"images_per_class": dict(zip(("train", "test_good", "test_per_defect"), run.sizes.data, strict=True))}
    return Outcome(step.name, FAILED if reason else OK, reason, seconds, share, data=data)


def run_worker(run: Run, names: Sequence[str], missing_gpu: str) -> None:
    """The steps ``names`` in a :mod:`benchmarks.gpu_steps` worker process, started again (at most
    :data:`WORKER_STARTS` times in all) while one stops after a CUDA error with steps left; the steps no worker
    finished are failed (the one it was running) or skipped (the ones it did not reach), saying why."""
    for name in names:
        if missing_gpu and name in NEEDS_DEVICE:
            run.keep(Outcome(name, SKIPPED, f"the GPU is missing: {missing_gpu}"))
    lost = f"exit status {CONTEXT_LOST}"
    for attempt in range(1, WORKER_STARTS + 1):
        steps = [s for s in run.steps if s.name in names and s.name not in run.outcomes]
        if not steps:
            return
        group = Step(f"{steps[0].name}..{steps[-1].name}", sum(s.weight for s in steps), 0.0)
        share = run.share(group)
        results = run.work / f"{steps[0].name}-{attempt}.jsonl"
        spec = {"steps": [asdict(s) for s in steps], "deadline": time.time() + share - WORKER_GRACE_S,
                "results": str(results), "device": run.args.device, "sizes": asdict(run.sizes),
                "work": str(run.work), "data": str(run.work / "data")}
        spec_path = run.work / f"{steps[0].name}-{attempt}.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        reason, _, _ = run.child(group, run.python("-m", "benchmarks.gpu_steps", str(spec_path)), share)
        for outcome in read_outcomes(results).values():
            run.keep(outcome)
        if reason != lost:
            break
    left = [s for s in run.steps if s.name in names and s.name not in run.outcomes]
    for i, step in enumerate(left):
        if reason == lost:
            outcome = Outcome(step.name, SKIPPED, f"not started: a CUDA error stopped the worker and its "
                                                  f"{WORKER_STARTS} starts are used up")
        elif i == 0:
            outcome = Outcome(step.name, FAILED, f"its worker process ended ({reason or 'with no outcome for it'}) "
                                                 "while it ran; log.txt has the worker's output")
        else:
            outcome = Outcome(step.name, SKIPPED, f"not started: the worker ended ({reason}) during {left[0].name}")
        run.keep(outcome)


def missing_gpu(run: Run) -> str:
    """Why the GPU asked for is not usable, from the preflight ("" when it is, or none was asked for)."""
    if not run.args.device.startswith("cuda"):
        return ""
    gpu = run.outcomes["preflight"].data.get("gpu", {})
    if gpu.get("available") is False:  # not when the preflight could not tell: then the steps try
        return gpu.get("error", "no CUDA device")
    return ""


# ------------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the report files (created; at most 5 files)")
    parser.add_argument("--device", default="cuda", help="torch device of every step: cuda (default) or cpu")
    parser.add_argument("--deadline-minutes", type=float, default=9.0,
                        help="wall-clock limit of the whole run, kit and report included (default 9)")
    parser.add_argument("--sizes", choices=sorted(SIZES), default="full",
                        help="full (the GPU run) or dry (tiny sizes for a CPU, make gpu-dry-run)")
    parser.add_argument("--kit", help="folder of wheels to pip install first (the GPU machine: .whl)")
    parser.add_argument("--site", default="/tmp/site", help="where --kit installs to (default /tmp/site)")
    parser.add_argument("--work", help="scratch folder (default a new temporary folder, removed at the end)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    return parser


def run_all(run: Run) -> None:
    """Every step of ``run`` in order; should the orchestration itself fail, the steps left are failed naming why."""
    try:
        for step in [s for s in run.steps if s.name in ("kit", "preflight", "data")]:
            run.keep({"kit": install_kit, "preflight": preflight, "data": make_data}[step.name](run, step))
        gpu = missing_gpu(run)
        run_worker(run, BENCH, gpu)
        run_worker(run, TRAIN, gpu)
    except Exception as exc:  # noqa: BLE001 (a report of what was done beats none)
        run.say(f"the run stopped: {describe(exc)}")
        for step in run.pending():
            run.keep(Outcome(step.name, FAILED, f"not run: the run stopped ({describe(exc)})"))


def main(argv: Sequence[str] | None = None) -> int:
    """The GPU run; 0 when a row was measured, else 1."""
    from benchmarks.gpu_report import write_report

    args = build_parser().parse_args(argv)
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        build_parser().error(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    run = Run(args)
    run.say(f"GPU run ({args.sizes} sizes, device {args.device}, deadline {args.deadline_minutes:g} min) into "
            f"{run.out}; scratch {run.work}")
    try:
        run_all(run)
        info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": args.device,
                "sizes": asdict(run.sizes), "deadline_minutes": args.deadline_minutes,
                "host": f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})",
                "seconds": round(time.time() - run.started, 1),
                "command": " ".join(["python -m benchmarks.gpu_run", *(argv if argv is not None else sys.argv[1:])])}
        measured = write_report(run.out, info, [run.outcomes[s.name] for s in run.steps])
        run.say(f"wrote {', '.join(f for f in RESULT_FILES if (run.out / f).is_file())} to {run.out} "
                f"({measured} measured row(s), {time.time() - run.started:.0f} s)")
    finally:
        run.close()
    return 0 if measured else 1


if __name__ == "__main__":
    raise SystemExit(main())
