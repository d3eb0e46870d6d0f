"""The GPU test machine's packages, the kit of wheels the GPU run carries there, and what the GPU run imports.

    python -m benchmarks.gpu_kit check .whl    # the kit folder: one wheel per pin, cp312/manylinux x86_64 or pure
                                               # Python, each Requires-Dist met there, <= 30 MiB in all
    python -m benchmarks.gpu_kit imports       # the third-party names the GPU run imports, and who imports them

``gpu_machine.json`` holds the machine (Python, distributions, what cannot be installed there), ``gpu_kit.txt`` the
kit's pins. :func:`third_party_imports` walks the repository's modules reached from :data:`ENTRY_POINTS` (every
``import`` statement, in functions too) and returns the top-level names outside the repository and the standard
library; the preflight imports them and a test holds them against the machine plus the kit.
"""
from __future__ import annotations

import argparse
import ast
import functools
import json
import re
import sys
import zipfile
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MACHINE = HERE / "gpu_machine.json"
PINS = HERE / "gpu_kit.txt"
PACKAGES = ("benchmarks", "export", "runtime", "training")  # the repository's own top-level packages
ENTRY_POINTS = (  # what the GPU run starts: its orchestrator, its child processes and the commands they call
    "benchmarks.gpu_run", "benchmarks.gpu_preflight", "benchmarks.gpu_steps", "training.synthetic",
)
KIT_LIMIT_MIB = 30
TARGET_PYTHON = "cp312"


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def machine() -> dict[str, Any]:
    """``gpu_machine.json``."""
    return json.loads(MACHINE.read_text())


def kit_pins() -> dict[str, str]:
    """``gpu_kit.txt``: normalised distribution name -> pinned version. ``ValueError`` names a line that is not
    ``name==version``."""
    pins = {}
    for number, line in enumerate(PINS.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"{PINS}:{number}: {line!r}: expected name==version")
        pins[normalize(name)] = version.strip()
    return pins


def available() -> dict[str, str | None]:
    """What the GPU run finds there: the machine's distributions and the kit's (normalised name -> version or
    None where only the name is known)."""
    found = {normalize(name): version for name, version in machine()["packages"].items()}
    found.update(kit_pins())
    return found


# ------------------------------------------------------------------------------------------------ the wheels
def wheel_problems(folder: Path) -> tuple[list[str], dict[str, int]]:
    """What is wrong with a kit folder against the pins and the machine, and each wheel's size in bytes."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    pins, problems, sizes, seen = kit_pins(), [], {}, {}
    for path in sorted(folder.glob("*.whl")):
        sizes[path.name] = path.stat().st_size
        try:
            name, version, _, tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename as exc:
            problems.append(f"{path.name}: not a wheel name ({exc})")
            continue
        if name in seen:
            problems.append(f"{path.name}: a second wheel of {name} (also {seen[name]}); pip refuses two")
        seen[name] = path.name
        if name not in pins:
            problems.append(f"{path.name}: {name} is not pinned in {PINS.name}")
        elif str(version) != pins[name]:
            problems.append(f"{path.name}: version {version}, {PINS.name} pins {pins[name]}")
        if not any(fits_target(t.interpreter, t.abi, t.platform) for t in tags):
            problems.append(f"{path.name}: built for none of CPython 3.12 manylinux x86_64 or pure Python")
        problems += [f"{path.name}: {p}" for p in unmet_requirements(requirements_of(path))]
    problems += [f"{name}=={v}: no wheel in {folder}" for name, v in pins.items() if name not in seen]
    total = sum(sizes.values())
    if total > KIT_LIMIT_MIB * 2**20:
        problems.append(f"{folder}: {total / 2**20:.1f} MiB of wheels, over the {KIT_LIMIT_MIB} MiB limit")
    return problems, sizes


def fits_target(interpreter: str, abi: str, platform: str) -> bool:
    """A wheel tag that installs on the machine's CPython 3.12, linux x86_64."""
    python_ok = interpreter in (TARGET_PYTHON, "py3", "py312")
    abi_ok = abi in ("none", "abi3", TARGET_PYTHON)
    platform_ok = platform == "any" or (platform.startswith("manylinux") and platform.endswith("x86_64"))
    return python_ok and abi_ok and platform_ok


def requirements_of(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        name = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
        if name is None:
            raise ValueError(f"{wheel}: no .dist-info/METADATA inside")
        text = z.read(name).decode("utf-8", "replace")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def unmet_requirements(requirements: Iterable[str]) -> list[str]:
    """The requirements that apply on the machine (markers evaluated for its Python, no extras) and that neither
    the machine nor the kit meets; a version the machine does not record counts as met."""
    from packaging.requirements import Requirement

    python = machine()["python"]
    env = {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python, "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    have, unmet = available(), []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = normalize(req.name)
        if name not in have:
            unmet.append(f"needs {text}: not on the machine and not in the kit")
        elif have[name] is not None and not req.specifier.contains(have[name], prereleases=True):
            unmet.append(f"needs {text}: {name} {have[name]} there")
    return unmet


# ----------------------------------------------------------------------------------------------- the imports
def module_file(module: str) -> Path | None:
    """The repository file of a dotted module name, or None when it is not one of ours (or does not exist)."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def imported_names(path: Path, module: str) -> Iterable[str]:
    """Every dotted name an ``import`` statement of ``path`` (module ``module``) names, relative ones resolved;
    ``from a import b`` yields ``a`` and ``a.b`` (b may be a submodule)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package[: len(package) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def reached(entries: Sequence[str] = ENTRY_POINTS) -> tuple[set[str], dict[str, set[str]]]:
    """The repository's modules reached from ``entries`` through their imports, and the top-level names outside the
    repository and the standard library that those modules import, each with the modules that import it."""
    seen: set[str] = set()
    found: dict[str, set[str]] = {}
    todo = list(entries)
    while todo:
        module = todo.pop()
        path = module_file(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b first
        for name in imported_names(path, module):
            top = name.split(".")[0]
            if top in PACKAGES:
                todo.append(name)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, set()).add(module)
    return seen, found


def third_party_imports(entries: Sequence[str] = ENTRY_POINTS) -> dict[str, set[str]]:
    """Top-level names outside the repository and the standard library that the modules reached from ``entries``
    import, each with the repository modules that import it."""
    return reached(entries)[1]


@functools.lru_cache(maxsize=1)
def installed_packages() -> dict[str, list[str]]:
    """This environment's top-level import names -> the distributions that provide them."""
    return metadata.packages_distributions()


def distributions_of(import_name: str) -> list[str]:
    """The distributions that provide a top-level import name: ``gpu_machine.json``'s map, else this
    environment's installed metadata (normalised names; empty when unknown here)."""
    mapped = machine()["import_names"].get(import_name)
    if mapped:
        return [normalize(mapped)]
    return [normalize(d) for d in installed_packages().get(import_name, [import_name])]


def coverage(import_name: str) -> str:
    """What provides ``import_name`` on the GPU machine: "machine", "kit", "not installable" (a backend the run lists
    as skipped, with the reason) or "" (nothing)."""
    names = set(distributions_of(import_name))
    if names & {normalize(n) for n in machine()["packages"]}:
        return "machine"
    if names & set(kit_pins()):
        return "kit"
    if names & {normalize(n) for n in machine()["not_installable"]}:
        return "not installable"
    return ""


def uncovered_imports(entries: Sequence[str] = ENTRY_POINTS) -> dict[str, set[str]]:
    """The third-party imports of the GPU run that neither the machine, the kit nor the list of what cannot be
    installed there covers, with their importers."""
    return {name: importers for name, importers in third_party_imports(entries).items() if not coverage(name)}


# ------------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_kit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="check a kit folder").add_argument("folder", type=Path)
    sub.add_parser("imports", help="the GPU run's third-party imports")
    args = parser.parse_args(argv)
    if args.command == "imports":
        found = {name: coverage(name) or "NOT COVERED" for name in third_party_imports()}
        for name, importers in sorted(third_party_imports().items()):
            print(f"{name:16} {found[name]:16} {', '.join(sorted(importers))}")
        return 1 if "NOT COVERED" in found.values() else 0
    if not args.folder.is_dir():
        print(f"error: {args.folder}: no such folder (make gpu-kit downloads the wheels into it)", file=sys.stderr)
        return 2
    problems, sizes = wheel_problems(args.folder)
    for name, size in sizes.items():
        print(f"{size / 2**20:8.2f} MiB  {name}")
    print(f"{sum(sizes.values()) / 2**20:8.2f} MiB  in all ({len(sizes)} wheels; limit {KIT_LIMIT_MIB} MiB)")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
