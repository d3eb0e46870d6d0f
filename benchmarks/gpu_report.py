"""The GPU run's report: ``report.json`` and ``report.md`` from the steps' outcomes, with the targets and the answer.

The answer to "with many times the CPU demo's training steps, does the diffusion earn its cost over its own
autoencoder?" is read off the evaluation (DiAD against VAE-only, the same scorer) and the tiny rows (DiAD's plan
against the VAE-only plan, ms per image): it earns its cost when DiAD's I-AUROC is at least :data:`MARGIN` above
VAE-only's and neither P-AUROC nor AU-PRO is more than :data:`MARGIN` below. Torch-free.
"""
from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.gpu_budget import OK, Outcome

MARGIN = 0.01
CPU_DEMO_DIAD_STEPS = 600  # the demo-sized CPU run of docs/accuracy.md (240 + 600 steps): the accuracy work's basis
STAGES = ("encode", "steps", "decode", "score")
# (what, step, row filter, the figure, at least): the targets for the GPU rows
TARGETS: tuple[tuple[str, str, Callable[[dict], bool], str, float], ...] = (
    ("tiny, batch 32, torch fp16 + CUDA graph, the recipe's plan", "tiny",
     lambda r: r.get("config") == "torch fp16 CUDA graph" and r.get("method") == "diad" and r.get("batch") == 32,
     "images_per_s", 1000.0),
    ("sd15-size, 10 DDIM steps, batch 8, torch fp16 + CUDA graph", "sd15",
     lambda r: r.get("config") == "sd15 fp16 CUDA graph" and r.get("steps") == 10 and r.get("batch") == 8,
     "images_per_s", 25.0),
)


def fmt(value: Any) -> str:
    """A table cell: floats with 3 decimals below 10, 1 below 100, none above (thousands separated), 2 significant
    figures below 0.01; yes / no; "-" for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2g}"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value).replace("|", "/").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(fmt(v) for v in row) + " |" for row in rows)]


def clip(text: str, limit: int = 160) -> str:
    """``text`` cut to ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ok_rows(outcomes: dict[str, Outcome], step: str) -> list[dict[str, Any]]:
    """The measured rows of ``step`` (none when it did not run)."""
    return [r for r in outcomes[step].rows if r.get("status") == OK] if step in outcomes else []


def targets(outcomes: dict[str, Outcome]) -> list[dict[str, Any]]:
    """Each target with the measured figure, whether it is met and, when missed, the stage that limits it."""
    found = []
    for what, step, match, figure, least in TARGETS:
        rows = [r for r in (outcomes[step].rows if step in outcomes else []) if match(r)]
        row = rows[0] if rows else None
        entry: dict[str, Any] = {"target": what, "at_least": least, "unit": figure}
        if row is None or row.get("status") != OK:
            state = f"the {step} step {outcomes[step].status}" if step in outcomes else f"no {step} step"
            why = row.get("reason") if row else f"no such row in this run ({state})"
            entry.update(measured=None, met=None, note=f"not measured: {why}")
        else:
            stages = row.get("stages_ms", {})
            limit = max(stages, key=stages.get) if stages else None
            met = row[figure] >= least
            why = f"limited by the {limit} stage ({stages[limit]:.2f} of {sum(stages.values()):.2f} ms per image)"
            entry.update(measured=row[figure], met=met, note="" if met else why)
        found.append(entry)
    return found


def cost_ratio(outcomes: dict[str, Outcome]) -> tuple[float, str] | None:
    """DiAD's plan's ms per image over the VAE-only plan's, from the fastest configuration at the largest batch."""
    rows = ok_rows(outcomes, "tiny")
    if not rows:
        return None
    batch = max(r["batch"] for r in rows)
    pairs = {}
    for r in (r for r in rows if r["batch"] == batch):
        pairs.setdefault(r["config"], {})[r["method"]] = r["p50_ms"]
    pairs = {k: v for k, v in pairs.items() if {"diad", "vae-only"} <= set(v)}
    if not pairs:
        return None
    config = min(pairs, key=lambda k: pairs[k]["diad"])
    return pairs[config]["diad"] / pairs[config]["vae-only"], f"{config}, batch {batch}"


def answer(outcomes: dict[str, Outcome], dry: bool = False) -> dict[str, Any]:
    """Does the diffusion earn its cost over its own autoencoder, from this run's figures (``dry``: say that a dry
    run's figures answer nothing)."""
    scores = {r["config"]: r for r in ok_rows(outcomes, "evaluate")}
    training = ok_rows(outcomes, "diad")
    if not {"diad", "vae"} <= set(scores) or not training:
        why = "; ".join(f"{s} {outcomes[s].status}" + (f" ({outcomes[s].reason})" if outcomes[s].reason else "")
                        for s in ("diad", "evaluate") if s in outcomes and outcomes[s].status != OK)
        return {"earns_its_cost": None, "text": f"Not answered: no evaluation of a trained run ({why or 'not run'})."}
    delta = {k: scores["diad"][k] - scores["vae"][k] for k in ("i_auroc", "p_auroc", "aupro")}
    earns = delta["i_auroc"] >= MARGIN and min(delta["p_auroc"], delta["aupro"]) >= -MARGIN
    steps = training[0]["steps"]
    cost = cost_ratio(outcomes)
    figures = ", ".join(f"{k.replace('_', '-').upper()} {scores['diad'][k]:.3f} vs {scores['vae'][k]:.3f} "
                        f"({delta[k]:+.3f})" for k in delta)
    text = (f"With {steps:,} DiAD training steps ({steps / CPU_DEMO_DIAD_STEPS:.0f}x the {CPU_DEMO_DIAD_STEPS} of the "
            f"CPU demo run), DiAD against its own autoencoder (VAE-only, same scorer): {figures}. ")
    if cost:
        text += f"DiAD's plan costs {cost[0]:.1f}x the VAE-only plan's time per image ({cost[1]}). "
    verdict = "earns its cost" if earns else "does not earn its cost"
    if dry:
        text = "Dry run (tiny sizes on a CPU): these figures try the script and answer nothing. " + text
    text += (f"So the diffusion {verdict} here (criterion: I-AUROC at least {MARGIN} above VAE-only, P-AUROC and "
             f"AU-PRO at most {MARGIN} below).")
    return {"earns_its_cost": earns, "delta": delta, "diad_steps": steps,
            "multiple_of_cpu_demo": steps / CPU_DEMO_DIAD_STEPS, "cost_ratio": cost[0] if cost else None,
            "text": text}


# ------------------------------------------------------------------------------------------------- Markdown
def rows_section(
    title: str, outcome: Outcome | None, header: Sequence[str], cells: Callable[[dict], list],
) -> list[str]:
    """A section: the measured rows as a table, the others (skipped, failed) as a list with their reasons."""
    if outcome is None:
        return []
    lines = [f"## {title}", ""]
    measured = [r for r in outcome.rows if r.get("status") == OK]
    if measured:
        lines += table(header, [cells(r) for r in measured])
    others = [r for r in outcome.rows if r.get("status") != OK]
    lines += [f"- {r.get('config', r.get('name', '?'))}: {r.get('status')}: {r.get('reason', '')}" for r in others]
    if not outcome.rows:
        lines.append(f"{outcome.status}: {outcome.reason or 'no rows'}")
    return lines + [""]


def stage_cells(stages: dict[str, float]) -> list[str]:
    """The stage split's cells, ms per image."""
    return [f"{stages.get(s, 0.0):.2f}" for s in STAGES]


def generic_cells(rows: list[dict[str, Any]]) -> tuple[list[str], Callable[[dict], list]]:
    """Columns for rows of unknown fields (the plumbing's): every scalar field, in first-seen order."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in keys and not isinstance(v, (dict, list)) and k != "status"]
    return keys, lambda r: [r.get(k) for k in keys]


def markdown(info: dict[str, Any], outcomes: dict[str, Outcome], found: list[dict], said: dict[str, Any]) -> str:
    """``report.md``: the run, the answer, the targets, the steps, then each step's rows."""
    pre = outcomes["preflight"].data if "preflight" in outcomes else {}
    gpu = pre.get("gpu", {})
    where = gpu.get("name") or info["device"]
    run = (f"{info['sizes']['name']} sizes, device {info['device']}, deadline {info['deadline_minutes']:g} min, "
           f"{info['seconds']:.0f} s in all; `{info['command']}`")
    lines = [f"# GPU run on {where}, {info['date']}", "", run, "", "## Answer", "", said["text"], "", "## Targets", ""]
    lines += table(["target", "at least", "measured", "met", "note"],
                   [[t["target"], t["at_least"], t["measured"], t["met"], t["note"]] for t in found])
    lines += ["", "## Steps", ""]
    lines += table(["step", "status", "seconds", "share", "reason"],
                   [[o.step, o.status, f"{o.seconds:.1f}", f"{o.share:.0f}", clip(o.reason)]
                    for o in outcomes.values()])
    packages = ", ".join(f"{k} {v}" for k, v in pre.get("packages", {}).items())
    lines += ["", f"Python {pre.get('python', '?')}; GPU: {json.dumps(gpu)}; packages: {packages}", ""]
    lines += rows_section("Backends that cannot run here", outcomes.get("backends"), ["config", "status"],
                          lambda r: [r["config"], r["status"]])
    lines += rows_section(
        "Tiny model (shipped base weights), ms per image", outcomes.get("tiny"),
        ["config", "plan", "batch", "p50 ms", "img/s", *STAGES],
        lambda r: [r["config"], r["method"], r["batch"], r["p50_ms"], r["images_per_s"], *stage_cells(r["stages_ms"])])
    lines += rows_section(
        "Parity with ONNX Runtime on the CPU (the same images)", outcomes.get("parity"),
        ["config", "images", "max abs score", "relative", "max abs map", "relative", "tolerance", "within"],
        lambda r: [r["config"], r["images"], r["max_abs_score"], r["relative_score"], r["max_abs_map"],
                   r["relative_map"], r["tolerance"], r["within"]])
    preset = outcomes["sd15"].data.get("preset", "sd15") if "sd15" in outcomes else "sd15"
    lines += rows_section(
        f"{preset}-size pipeline (seeded random weights)", outcomes.get("sd15"),
        ["config", "batch", "steps", "ms/img", "img/s", *STAGES, "TFLOP/img", "TFLOP/s", "of peak"],
        lambda r: [r["config"], r["batch"], r["steps"], r["ms_per_image"], r["images_per_s"],
                   *stage_cells(r["stages_ms"]), r["tflop_per_image"], r["tflops"], r["peak_fraction"]])
    plumbing = outcomes.get("plumbing")
    if plumbing is not None:
        header, cells = generic_cells([r for r in plumbing.rows if r.get("status") == OK])
        lines += rows_section("TensorRT backend's CUDA side (engine stand-in)", plumbing, header, cells)
    for step, title in (("autoencoder", "Training: autoencoder"), ("diad", "Training: DiAD")):
        lines += rows_section(title, outcomes.get(step), ["device", "minutes", "steps", "s", "steps/s",
                                                          "CPU demo steps/s", "speed-up"],
                              lambda r: [r["device"], r["minutes"], r["steps"], r["seconds"], r["steps_per_s"],
                                         r["cpu_demo_steps_per_s"], r["speedup"]])
        if step in outcomes and outcomes[step].data.get("cpu_demo"):
            lines[-1:-1] = ["", f"The CPU demo: {outcomes[step].data['cpu_demo']}."]
    lines += rows_section("Evaluation: DiAD against VAE-only (mean over classes)", outcomes.get("evaluate"),
                          ["method", "I-AUROC", "P-AUROC", "AU-PRO"],
                          lambda r: [r["config"], r["i_auroc"], r["p_auroc"], r["aupro"]])
    return "\n".join(lines) + "\n"


def write_report(out: Path, info: dict[str, Any], outcomes: Sequence[Outcome]) -> int:
    """``report.json``, ``report.md``, and the sweep CSV and evaluation tables where those steps wrote them, into
    ``out``; returns the number of measured rows."""
    by_step = {o.step: o for o in outcomes}
    copies = {"sweep.csv": by_step.get("tiny", Outcome("", "")).data.get("csv"),
              "metrics.md": by_step.get("evaluate", Outcome("", "")).data.get("metrics_md")}
    for name, source in copies.items():
        if source and Path(source).is_file():
            shutil.copyfile(source, out / name)
    found, said = targets(by_step), answer(by_step, info["sizes"]["name"] == "dry")
    measured = sum(1 for o in outcomes for r in o.rows if r.get("status") == OK)
    report = {"info": info, "measured_rows": measured, "answer": said, "targets": found,
              "steps": [asdict(o) for o in outcomes]}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown(info, by_step, found, said))
    return measured
