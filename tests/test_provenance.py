"""Where a row was measured: the provenance columns, and what the figures say about the commits they come from."""

from __future__ import annotations

import os
import subprocess

import pandas as pd

from harness.store.provenance import COLUMNS, REPO, describe, provenance, stamp


def test_provenance_names_this_checkout_and_machine():
    p = provenance()
    assert list(p) == COLUMNS
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert p["git_commit"] == (head or None)
    assert isinstance(p["git_dirty"], bool) or p["git_commit"] is None
    assert p["cpu_count"] == os.cpu_count() and p["kernel"] == os.uname().release and p["host"] == os.uname().nodename
    assert p["torch_version"].startswith("2.")


def rows(*commits) -> pd.DataFrame:
    return pd.DataFrame({"git_commit": list(commits), "git_dirty": [False, True, False][: len(commits)],
                         "host": ["a", "b", "a"][: len(commits)]})


def test_one_commit_is_named_and_several_are_flagged():
    one = describe(rows("1" * 40, "1" * 40))
    assert one == ["drawn from commits 1111111111 (1 row), 1111111111-dirty (1 row); hosts a, b",
                   "these rows come from 2 commits: differences between points may be code changes"]
    clean = describe(pd.DataFrame({"git_commit": ["2" * 40] * 3, "git_dirty": [False] * 3, "host": ["a"] * 3}))
    assert clean == ["drawn from commit 2222222222 (3 rows); host a"]
    old = describe(pd.DataFrame({"status": ["ok"]}))  # rows from before these columns
    assert old == ["drawn from commit unrecorded (1 row); host unknown"]


def test_a_figure_of_several_commits_says_so():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    fig.suptitle("speedup")
    stamp(fig, rows("1" * 40, "3" * 40))
    assert fig.get_suptitle() == "speedup\nrows from commits 1111111111 (1 row), 3333333333-dirty (1 row); hosts a, b"
    fig2 = plt.figure()
    fig2.suptitle("speedup")
    stamp(fig2, rows("1" * 40))
    assert fig2.get_suptitle() == "speedup"
    plt.close("all")
