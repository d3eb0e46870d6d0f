"""The README and docs/ as a user meets them: short enough to read, every relative link and anchor resolves, and
every ``python -m`` module and ``make`` target they name exists."""
from __future__ import annotations

import importlib.util
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
MAX_README_LINES = 300

FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
MODULE = re.compile(r"python -m ([A-Za-z_][\w.]*)")
MAKE_TARGET = re.compile(r"(?:^|`)make ([a-z][\w-]*)", re.MULTILINE)  # in code: a fenced line or a `span`
MAKEFILE_TARGET = re.compile(r"^([a-z][\w-]*)\s*:(?!=)", re.MULTILINE)


def prose(text: str) -> str:
    """``text`` without fenced code blocks and HTML comments (links there are not links)."""
    return COMMENT.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, inline markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading).strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8")))}


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` whose file or ``#anchor`` does not exist, as ``target (why)``."""
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading with this anchor in {file.name})")
    return broken


def test_slug_follows_github():
    assert slug("The demo, current recipe (2026-12-06)") == "the-demo-current-recipe-2026-12-06"
    assert slug("ONNX Runtime's spinning (t = 12)") == "onnx-runtimes-spinning-t--12"
    assert slug("`tiny` preset's scorer") == "tiny-presets-scorer"


def test_broken_links_are_found(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# A heading\n")
    page.write_text("[ok](other.md#a-heading) [gone](missing.md) [bad](other.md#nope) [web](https://x.org/y)\n"
                    "```\n[in code](missing-too.md)\n```\n")
    assert broken_links(page) == [
        "missing.md (no such file)", "other.md#nope (no heading with this anchor in other.md)"
    ]


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; keep it a guide, move records to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_readme_commands_exist():
    text = README.read_text(encoding="utf-8")
    missing = sorted({m for m in MODULE.findall(text) if importlib.util.find_spec(m.split(".")[0]) is None
                      or importlib.util.find_spec(m) is None})
    assert missing == [], f"README names modules that do not exist: {missing}"
    targets = set(MAKEFILE_TARGET.findall((ROOT / "Makefile").read_text(encoding="utf-8")))
    unknown = sorted(set(MAKE_TARGET.findall(text)) - targets)
    assert unknown == [], f"README names make targets the Makefile lacks: {unknown}"
