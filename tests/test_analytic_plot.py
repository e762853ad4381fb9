"""The analytic backend, sweep bookkeeping (progress count, point keys, skip-existing) and astra-plot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.comm.cost import charge_seconds
from harness.spec.build import build_spec, compose
from harness.spec.identity import point_key as spec_key
from harness.store.results import load
from harness.sweep.progress import count_points

REPO = Path(__file__).resolve().parents[1]


def point_key(cfg, in_sweep=False):
    return spec_key(build_spec(cfg, in_sweep=in_sweep))


def cfg(*overrides):
    return compose(list(overrides))


def test_charge_models():
    mb = 1_000_000
    # ring all-gather: (N-1) shards per rank; 1 MB shard, 4 ranks, 8 Mbit/s -> 3 s
    assert charge_seconds("all_gather", mb, 4, 8, 1e6, "ring", 1.0) == pytest.approx(3.0)
    # ring all-reduce: 2(N-1)/N of the tensor
    assert charge_seconds("all_reduce", mb, 4, 8, 1e6, "ring", 1.0) == pytest.approx(1.5)
    # the paper's simulator: one send of the own payload; all-reduce charged 1/N of the tensor
    assert charge_seconds("all_gather", mb, 4, 8, 1e6, "paper", 1.0) == pytest.approx(1.0)
    assert charge_seconds("all_reduce", mb, 4, 8, 1e6, "paper", 1.0) == pytest.approx(0.25)
    assert charge_seconds("all_gather", mb, 4, 8, 2**20, "paper", 1.0) == pytest.approx(1e6 / 2**20)
    assert charge_seconds("all_gather", mb, 1, 8, 1e6, "ring", 1.0) == 0


def test_count_points_and_point_keys():
    assert count_points(["method=single,tp,sp,astra", "devices=2", "network.bandwidth_mbps=10,100,1000"]) == 12
    assert count_points(["devices=2,4", "devices=3"]) == 1  # a later override of the same key wins
    single10 = point_key(cfg("method=single", "network=analytic", "network.bandwidth_mbps=10", "devices=4"))
    single100 = point_key(cfg("method=single", "network=analytic", "network.bandwidth_mbps=100", "devices=2"))
    assert single10 == single100  # one device: bandwidth and device count do not matter
    # inside a sweep over methods, ASTRA's knobs are dropped from sp's points, so they do not change them
    sp_g1 = point_key(cfg("method=sp", "++method.groups=1"), in_sweep=True)
    sp_g16 = point_key(cfg("method=sp", "++method.groups=16"), in_sweep=True)
    assert sp_g1 == sp_g16 == point_key(cfg("method=sp"))
    assert point_key(cfg("method=astra", "method.groups=1")) != point_key(cfg("method=astra", "method.groups=16"))
    assert point_key(cfg("method=sp", "network=analytic", "network.bandwidth_mbps=10")) != point_key(
        cfg("method=sp", "network=analytic", "network.bandwidth_mbps=100"))


@pytest.mark.slow
def test_analytic_sweep_then_plot(tmp_path):
    store = tmp_path / "runs"  # a dataset: one part per job (results.is_dataset), read back as one table
    args = [sys.executable, "-m", "harness.bench", "-m", f"results.path={store}", f"cache_dir={tmp_path / 'c'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", "model=gpt2_tiny", "tokens=96", "network=analytic",
            "method=single,sp,astra", "network.bandwidth_mbps=10,1000", "devices=2", "repeats=2", "warmup=1",
            "method.codebook_size=64"]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep of 6 points" in proc.stderr and "point 6/6" in proc.stderr and "ETA" in proc.stderr
    assert proc.stderr.count("[astra-bench] skipped") == 1  # single at 1000 Mbit/s is the same point as at 10
    assert "sweep finished: 5 ok, 0 failed, 1 skipped" in proc.stderr
    df = load(store)
    assert len(df) == 5 and (df["status"] == "ok").all()
    assert len(list(store.glob("part-*.parquet"))) == 5  # a skipped point writes no part
    sp = df[df.method == "sp"].set_index("bandwidth_mbps").sort_index()  # a dataset's parts come in name order
    # analytic comm is payload bits / bandwidth: 100x the bandwidth, 1/100 the communication time
    assert sp.loc[10.0, "comm_ms"] == pytest.approx(100 * sp.loc[1000.0, "comm_ms"], rel=1e-6)
    assert sp.loc[10.0, "comm_ms"] == pytest.approx(sp.loc[10.0, "payload_bytes"] * 8 / 10e6 * 1e3, rel=1e-6)
    # the ranks' compute is profiled once per point and reused across bandwidths: no noise posing as bandwidth
    assert sp.loc[10.0, "compute_ms"] == pytest.approx(sp.loc[1000.0, "compute_ms"], rel=1e-9)
    assert list(sp["profile_reused"]) == [False, True]
    assert df["fidelity"].isna().all()  # nothing is emulated on the analytic backend
    astra = df[df.method == "astra"].set_index("bandwidth_mbps")
    assert astra.loc[10.0, "speedup"] > sp.loc[10.0, "speedup"]
    # a second run of the same sweep skips every point
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr.count("[astra-bench] skipped") == 6
    assert len(load(store)) == 5 and len(list(store.glob("part-*.parquet"))) == 5

    plots = tmp_path / "plots"
    out = subprocess.run([sys.executable, "-m", "harness.report.plot", str(store), "--out", str(plots)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| model" in out.stdout and "speedup" in out.stdout
    for stem in ("speedup_vs_bandwidth", "latency_breakdown", "bytes_per_method"):
        for ext in ("png", "pdf"):
            f = plots / f"{stem}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
    assert not (plots / "speedup_vs_devices.png").exists(), "one device count is not a curve"

    # a store without the single-device baseline: say why there is no speedup plot, still draw the rest
    nobase = tmp_path / "nobase.parquet"
    load(store).query("method != 'single'").drop(columns=["single_latency_ms", "speedup"]).to_parquet(nobase)
    out2 = subprocess.run([sys.executable, "-m", "harness.report.plot", str(nobase), "--out", str(tmp_path / "p2")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out2.returncode == 0, out2.stderr
    assert "no single-device baseline" in out2.stderr
    assert (tmp_path / "p2" / "latency_breakdown.png").is_file() and (tmp_path / "p2" / "bytes_per_method.png").is_file()
    assert not (tmp_path / "p2" / "speedup_vs_bandwidth.png").exists()


@pytest.mark.slow
def test_plot_bad_input(tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness.report.plot", str(tmp_path / "missing.parquet")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "no results" in lines[0]


@pytest.mark.slow
def test_analytic_bad_bandwidth(tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness.bench", "network=analytic", "network.bandwidth_mbps=0",
                          "method=sp", f"results.path={tmp_path / 'r.parquet'}"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "bandwidth_mbps=0" in lines[0]
    assert not (tmp_path / "r.parquet").exists()


@pytest.mark.slow
def test_calibrate_bad_rate():
    out = subprocess.run([sys.executable, "-m", "harness.calibrate", "--rates", "0,10"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "rates" in out.stderr
