"""The GPU run's preflight: everything it needs imports, the GPU answers, the scorer's weights are there.

    python -m benchmarks.gpu_preflight [--device cuda] [--json FILE]

Imports every third-party package the GPU run imports (:func:`benchmarks.gpu_kit.third_party_imports`) and then
the repository's own modules it reaches, prints each version, the GPU (name, memory, compute capability, CUDA and
cuDNN), the scorer's ImageNet weights and the tiny base model. A package that cannot be installed on the GPU
machine (``gpu_machine.json``'s ``not_installable``: TensorRT) is listed, not required. Exits 1 naming what is
missing, 0 when nothing is; a watchdog ends it with status 1 after 30 s (a hung import or driver).
"""
from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.gpu_kit import distributions_of, machine, normalize, reached

WATCHDOG_S = 30


def version_of(name: str, module: Any) -> str:
    """The installed version of the distribution providing ``name`` (else the module's ``__version__``)."""
    for distribution in distributions_of(name):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return str(getattr(module, "__version__", "?"))


def check_imports(
    names: Sequence[str], optional: Sequence[str] = (), versions: bool = True,
) -> tuple[dict[str, str], list[str]]:
    """Import each of ``names``: (name -> its version, "ok" without ``versions``, or what failed; the failures of
    names not in ``optional``)."""
    found, missing = {}, []
    for name in names:
        try:
            module = importlib.import_module(name)
            found[name] = version_of(name, module) if versions else "ok"
        except Exception as exc:  # noqa: BLE001 (any import failure is a finding)
            found[name] = f"not importable: {type(exc).__name__}: {exc}"
            if name not in optional:
                missing.append(f"{name} ({type(exc).__name__}: {exc})")
    return found, missing


def gpu(device: str) -> dict[str, Any]:
    """The GPU ``device`` names, as torch sees it; ``available`` False with the ``error`` when it does not."""
    if not device.startswith("cuda"):
        return {"asked": device, "available": None, "cpus": len(os.sched_getaffinity(0))}
    import torch

    if not torch.cuda.is_available():
        return {"asked": device, "available": False,
                "error": f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"}
    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    return {"asked": device, "available": True, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "count": torch.cuda.device_count()}


def weights() -> tuple[dict[str, str], list[str]]:
    """The tiny recipe's scorer weights and the tiny base model: (what -> path, what is missing)."""
    from runtime.errors import DiadError
    from training.base_model import BASE_MODELS
    from training.models.backbones import find_weights
    from training.models.presets import get_preset

    scorer = get_preset("tiny").scorer
    found, missing = {}, []
    try:
        found["scorer weights"] = find_weights(scorer.backbone, scorer.weights_tag, scorer.weights)
    except DiadError as exc:
        missing.append(f"the scorer's {scorer.backbone} weights ({exc})")
    base = BASE_MODELS["tiny"]
    found["tiny base model"] = str(base)
    if not base.is_file():
        missing.append(f"{base}: the tiny base model (part of the repository)")
    return found, missing


def preflight(device: str) -> dict[str, Any]:
    """Everything the run needs, checked: the report (``missing`` empty when all is there)."""
    start = time.time()
    ours, theirs = reached()
    cannot = {normalize(n) for n in machine()["not_installable"]}
    optional = [n for n in theirs if cannot.intersection(distributions_of(n))]
    packages, missing = check_imports(sorted(theirs), optional)
    modules, broken = check_imports(sorted(ours), versions=False)
    report: dict[str, Any] = {"python": sys.version.split()[0], "packages": packages, "missing": missing + broken,
                              "optional": optional, "modules": len(modules)}
    try:
        report["gpu"] = gpu(device)
        if report["gpu"]["available"] is False:
            report["missing"].append(f"the GPU ({report['gpu']['error']})")
    except Exception as exc:  # noqa: BLE001 (torch did not import: then the GPU is unknown, the steps try it)
        report["gpu"] = {"asked": device, "available": None, "error": f"{type(exc).__name__}: {exc}"}
        report["missing"].append(f"a check of the GPU ({report['gpu']['error']})")
    try:
        report["files"], lacking = weights()
        report["missing"] += lacking
    except Exception as exc:  # noqa: BLE001 (torch or the training package did not import: already listed)
        report["files"] = {"error": f"{type(exc).__name__}: {exc}"}
    report["seconds"] = round(time.time() - start, 1)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_preflight", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the run's device (default cuda)")
    parser.add_argument("--json", type=Path, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    report = preflight(args.device)
    faulthandler.cancel_dump_traceback_later()
    for name, version in report["packages"].items():
        print(f"{name:20} {version}{'  (optional there)' if name in report['optional'] else ''}")
    print(f"{report['modules']} repository modules import")
    print("gpu: " + ", ".join(f"{k} {v}" for k, v in report["gpu"].items()))
    for what, path in report["files"].items():
        print(f"{what}: {path}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    for item in report["missing"]:
        print(f"missing: {item}", file=sys.stderr)
    print(f"preflight {'FAILED' if report['missing'] else 'ok'} in {report['seconds']} s")
    return 1 if report["missing"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
