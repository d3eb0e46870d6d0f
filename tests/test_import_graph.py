"""The import graph of runtime, training, export, benchmarks and the tests: no circles, no private names shared.

Every ``import`` and ``from ... import`` anywhere in a file is an edge (inside functions and ``if TYPE_CHECKING:``
too), relative imports resolved; ``from package import name`` points at the submodule when ``name`` is one. Test
files are named as pytest imports them (``tests/helpers/gif.py`` is ``helpers.gif``). Run it alone with
``python tests/test_import_graph.py``: it prints what the tests would report.
"""
from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "training", "export", "benchmarks", "tests")


@dataclass(frozen=True)
class Import:
    """One imported module, and the name taken from it (None for ``import module``)."""

    path: Path
    line: int
    module: str
    name: str | None


def module_name(path: Path) -> str:
    """The dotted name under which ``path`` is imported (test files relative to ``tests/``, as pytest puts them)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "tests":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    """Every Python file of :data:`PACKAGES` by module name."""
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def imports(path: Path) -> Iterator[Import]:
    """Every import statement of ``path``, wherever it stands, with relative modules made absolute."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name, None)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            for alias in node.names:
                yield Import(path, node.lineno, module, alias.name)


def graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """The edges between the modules of ``files``: each module to the ones of ``files`` it imports."""
    edges: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for found in imports(path):
            submodule = f"{found.module}.{found.name}"
            target = submodule if submodule in files else found.module
            if target in files and target != name:
                edges[name].add(target)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other (Tarjan's algorithm, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while not group or group[-1] != node:
                        group.append(stack.pop())
                        on_stack.discard(group[-1])
                    groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def shortest_cycle(edges: dict[str, set[str]], group: list[str]) -> list[str]:
    """A shortest circle through the first module of ``group``: the modules from it back to it."""
    start, members = group[0], set(group)
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges[node] & members):
            if child == start:
                path = [node]
                while (previous := came_from[path[-1]]) is not None:
                    path.append(previous)
                return [*reversed(path), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"{group}: not a circle")


def cycles() -> list[str]:
    """Each import circle as ``a -> b -> a``, followed by the whole group when more modules reach each other."""
    edges = graph(source_files())
    found = []
    for group in strongly_connected(edges):
        if len(group) > 1:
            circle = shortest_cycle(edges, group)
            whole = "" if len(circle) - 1 == len(group) else f" (all of {', '.join(group)} reach each other)"
            found.append(" -> ".join(circle) + whole)
    return found


def underscore_imports() -> list[str]:
    """Each private name (one leading underscore) imported from another module, as ``file:line name from module``."""
    found = []
    for path in source_files().values():
        for item in imports(path):
            names = [item.name] if item.name else item.module.split(".")
            if any(n.startswith("_") and not n.startswith("__") for n in names):
                taken = f"{item.name} from {item.module}" if item.name else item.module
                found.append(f"{path.relative_to(ROOT)}:{item.line} {taken}")
    return found


def test_no_import_circles():
    found = cycles()
    assert not found, "import circles (break each: move what both sides need into a module of its own):\n  " + (
        "\n  ".join(found))


def test_no_private_names_imported_from_another_module():
    found = underscore_imports()
    assert not found, "private names imported from another module (make them public, or keep them at home):\n  " + (
        "\n  ".join(found))


if __name__ == "__main__":
    for title, lines in (("import circles", cycles()), ("private names imported", underscore_imports())):
        print(f"{title}: {len(lines)}", *(f"  {line}" for line in lines), sep="\n")
