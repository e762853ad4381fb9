"""How a ``-m`` sweep ends: one summary line (points ok / failed / skipped, the store), exit 1 when a point failed (0
with ``results.allow_failures=true``), failed rows carrying the settings they were asked to run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.store.results import load, pending_dir

REPO = Path(__file__).resolve().parents[1]
TINY = ["network=analytic", "model=vit_tiny", "tokens=16", "repeats=1", "warmup=0", "solo_repeats=0"]


def sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.bench", "-m", *TINY, f"results.path={tmp_path / 'r.parquet'}",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def last_line(p: subprocess.CompletedProcess) -> str:
    return [ln for ln in p.stderr.splitlines() if ln.strip()][-1]


@pytest.mark.slow
def test_a_sweep_with_a_failed_point_says_so_and_exits_1(tmp_path):
    # tp needs a head per device: devices=5 fails (vit_tiny has 4); single at devices=5 is the devices=2 point again
    p = sweep(tmp_path, "method=tp,single", "devices=2,5")
    assert p.returncode == 1, p.stderr[-3000:]
    store = tmp_path / "r.parquet"
    assert last_line(p) == f"[astra-bench] sweep finished: 2 ok, 1 failed (method=tp devices=5), 1 skipped (already " \
                           f"measured) | results: {store}"
    df = load(store)
    failed = df[df["status"] == "failed"].iloc[0]
    assert (failed["method"], failed["devices"], failed["repeats"]) == ("tp", 5, 0)  # asked for 5; ran none
    assert json.loads(failed["settings"])["devices"] == 5 and "at most 4 devices" in failed["error"]
    assert len(df) == 3 and sorted(df["status"]) == ["failed", "ok", "ok"]
    # the progress lines name each point as the user would: no knobs of other methods
    assert "++" not in p.stderr

    again = sweep(tmp_path, "method=tp,single", "devices=2,5", "results.allow_failures=true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert last_line(again).startswith("[astra-bench] sweep finished: 0 ok, 1 failed (method=tp devices=5), 3 skipped")


@pytest.mark.slow
def test_a_clean_sweep_exits_0_with_its_summary(tmp_path):
    p = sweep(tmp_path, "method=single,sp", "devices=2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert last_line(p).startswith("[astra-bench] sweep finished: 2 ok, 0 failed, 0 skipped")
    # the jobs' rows waited as parts and were folded into the store file once, at the sweep's end
    store = tmp_path / "r.parquet"
    assert not pending_dir(store).exists() and len(pd.read_parquet(store)) == 2
    assert "1 repeat)" in p.stderr and "1 repeats" not in p.stderr


def test_progress_shows_a_point_as_the_user_names_it():
    from harness.sweep.progress import shown

    task = ["method=sp", "++method.groups=1", "++method.codebook_size=1024", "network.bandwidth_mbps=10"]
    assert shown(task, {"method": {"name": "sp"}}) == ["method=sp", "network.bandwidth_mbps=10"]
    task[0] = "method=astra"
    assert shown(task, {"method": {"name": "astra"}}) == \
        ["method=astra", "method.groups=1", "method.codebook_size=1024", "network.bandwidth_mbps=10"]


def test_sweep_tally_counts_and_sets_the_exit_status():
    from harness.sweep.progress import Tally

    t = Tally()
    assert t.exit_status() == 0  # not a sweep
    t.start("r.parquet", allow_failures=False)
    t.add({"status": "ok"}, ["tokens=8", "method=sp", "devices=4"])
    t.add({"status": "ok", "skipped": True}, ["tokens=8", "method=single", "devices=4"])
    assert t.exit_status() == 0
    t.add({"status": "failed"}, ["tokens=8", "method=tp", "devices=5"])
    t.add(None, ["tokens=8", "method=astra", "devices=4"])  # a job that returned nothing failed too
    assert t.exit_status() == 1
    # failed points named by what sets them apart (tokens=8 is every point's)
    assert t.line() == ("[astra-bench] sweep finished: 1 ok, 2 failed (method=tp devices=5; method=astra "
                        "devices=4), 1 skipped (already measured) | results: r.parquet")
    t.start("r.parquet", allow_failures=True)
    t.add({"status": "failed"}, ["method=tp", "devices=5"])
    assert t.exit_status() == 0 and t.line().startswith("[astra-bench] sweep finished: 0 ok, 1 failed (method=tp")
