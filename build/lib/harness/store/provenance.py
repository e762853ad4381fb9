"""Where a row was measured: the project's git commit (and whether the checkout had uncommitted changes), the
machine's name, kernel, CPU model and core count, and torch's version. Every result row carries these columns;
``astra-plot`` and ``astra-report`` say which commits and hosts a figure was drawn from.

Read once per process (a sweep's jobs share it). Nothing here imports the rest of the harness.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

import pandas as pd

from harness.paths import ROOT as REPO

COLUMNS = ["git_commit", "git_dirty", "host", "kernel", "cpu_model", "cpu_count", "torch_version"]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "cpu model")):  # x86, arm, others
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """This process's provenance columns. ``git_commit``/``git_dirty`` are None outside a git checkout (an
    installed package); ``git_dirty`` counts tracked files only (results and caches are not the code)."""
    from importlib.metadata import PackageNotFoundError, version

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = None
    return {"git_commit": commit.strip() if commit else None,
            "git_dirty": bool(status.strip()) if status is not None else None,
            "host": platform.node() or None, "kernel": platform.release() or None, "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "torch_version": torch}


def describe(df: pd.DataFrame) -> list[str]:
    """Lines naming the commits and hosts a set of rows was measured at, and a warning when they mix commits (or
    include rows from a checkout with uncommitted changes, or rows older than these columns)."""
    if df.empty:
        return []
    commits = df["git_commit"] if "git_commit" in df.columns else pd.Series(None, index=df.index, dtype=object)
    dirty = df["git_dirty"] if "git_dirty" in df.columns else pd.Series(None, index=df.index, dtype=object)
    hosts = df["host"] if "host" in df.columns else pd.Series(None, index=df.index, dtype=object)

    def name(c, d) -> str:  # as git describe --dirty writes it
        return "unrecorded" if not isinstance(c, str) else c[:10] + ("-dirty" if pd.notna(d) and bool(d) else "")

    counts = pd.Series([name(c, d) for c, d in zip(commits, dirty)]).value_counts()
    named = ", ".join(f"{c} ({n} row{'' if n == 1 else 's'})" for c, n in counts.items())
    lines = [f"drawn from commit{'s' if len(counts) > 1 else ''} {named}; host"
             f"{'s' if hosts.nunique() > 1 else ''} {', '.join(sorted(hosts.dropna().astype(str).unique())) or 'unknown'}"]
    if len(counts) > 1:
        lines.append(f"these rows come from {len(counts)} commits: differences between points may be code changes")
    return lines


def stamp(fig, df: pd.DataFrame) -> None:
    """Say in a figure's title when its rows come from several commits (a figure of one commit says nothing)."""
    lines = describe(df)
    if len(lines) > 1:
        head = fig.get_suptitle()
        fig.suptitle((head + "\n" if head else "") + lines[0].replace("drawn from", "rows from"), fontsize="medium")
