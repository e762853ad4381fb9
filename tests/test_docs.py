"""The manual: README.md stays a short front page, docs/ builds as a strict mkdocs site, and every relative link in
either points to a file inside the repository."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...
# lab-notebook wording that belongs nowhere in the manual: "sixth session", "issue 9", "issue #12"
SESSION = re.compile(r"\bsessions?\b", re.I)
ISSUE = re.compile(r"\bissues?\s*#\s*\d*|\bissues?\s+\d+", re.I)
ORDINAL_SESSION = re.compile(r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|this|that|"
                             r"earlier|previous|last|next)\s+session\b", re.I)


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (where brackets are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text(encoding="utf-8")))
            if not EXTERNAL.match(t) and not t.startswith("#")]


def test_docs_pages_exist():
    names = {p.name for p in DOCS}
    for page in ("index.md", "running.md", "methods.md", "network.md", "devices.md", "analytic.md", "accuracy.md",
                 "cluster.md", "benchmarks.md", "architecture.md", "measurements.md"):
        assert page in names, f"docs/{page} is missing"


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): " \
                                           "move detail into docs/"


def test_readme_has_no_notebook_wording():
    text = README.read_text(encoding="utf-8")
    for pattern in (SESSION, ISSUE):
        hits = [m.group(0) for m in pattern.finditer(text)]
        assert not hits, f"README.md: {hits} (say it with a date or a commit, in docs/measurements.md)"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_docs_have_no_notebook_wording(page):
    text = page.read_text(encoding="utf-8")
    for pattern in (ISSUE, ORDINAL_SESSION):
        hits = [m.group(0) for m in pattern.finditer(text)]
        assert not hits, f"docs/{page.name}: {hits} (say it with a date or a commit)"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_into_the_repository(page):
    bad = []
    for target in relative_links(page):
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        if not file_part:
            continue
        resolved = (page.parent / file_part).resolve()
        if not resolved.is_relative_to(ROOT):
            bad.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            bad.append(f"{target} (no such file)")
    assert not bad, f"{page.relative_to(ROOT)}: broken links: {bad}"


def test_link_pattern_finds_links():
    """The checker itself: it sees ordinary links and ignores code."""
    sample = "see [a](docs/a.md#x) and ![b](img.png) but not `[c](d.md)` nor [e](https://e.org)\n```\n[f](g.md)\n```\n"
    found = [t for t in LINK.findall(prose(sample)) if not EXTERNAL.match(t)]
    assert found == ["docs/a.md#x", "img.png"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
                    reason="mkdocs and mkdocs-material are not installed (pip install -e '.[docs]')")
def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert (tmp_path / "site" / "index.html").exists()


def test_no_file_refers_to_files_outside_the_repository():
    """Code, configs, scripts and docs name only files of the repository (no notes kept beside it)."""
    outside = re.compile(r"\.\./shared|shared/(paper|design|environment|detransformer)\.md"
                         r"|\b(paper|detransformer)\.md\b")
    files = [p for d in ("harness", "conf", "benchmarks", "scripts", "docs", "notebooks", "topologies", "tests")
             for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".sh", ".md")]
    files += [ROOT / "README.md", ROOT / "results" / "paper" / "README.md"]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files if p != Path(__file__)
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if outside.search(line)]
    assert not hits, hits
