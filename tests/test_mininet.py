"""The Mininet backend end to end: shaping in force, wire bytes, clean teardown on every path, refusals.

These need root and Mininet (CI runs as root and installs it); elsewhere they skip with the reason. Each case runs
``astra-bench`` as a subprocess, one at a time (the emulated network is one per machine). Speed *targets* live in
benchmarks/; the bounds here are loose enough for a busy 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.network.mininet.host_state import our_objects
from harness.store.results import cpu_list

REPO = Path(__file__).resolve().parents[1]

needs_mininet = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mnexec") or not shutil.which("brctl"),
    reason="needs root, mnexec and brctl (apt-get install mininet bridge-utils; scripts/setup.sh does)",
)
pytestmark = [needs_mininet, pytest.mark.mininet]

# A point with enough traffic per block that 10 Mbit/s shaping dominates sp (2 blocks x 64 kB per rank).
MODEL = ["model=vit_tiny", "model.hidden=128", "model.heads=4", "tokens=256"]


def bench(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    multirun = [a for a in args if a == "-m"]  # Hydra's flag goes before the overrides
    cmd = [sys.executable, "-m", "harness.bench", *multirun, f"results.path={tmp_path / 'r.parquet'}",
           f"cache_dir={tmp_path / 'cache'}", "repeats=3", "warmup=1", *[a for a in args if a != "-m"]]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def row_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rows_of(proc: subprocess.CompletedProcess) -> list[dict]:
    """The rows of a ``-m`` sweep, in point order."""
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]


def worker_pids() -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"harness.rank.worker" in argv:
                out.add(int(d.name))
    return out


def ticker_pids() -> set[int]:
    """Our device.tick_us tickers: cyclictest processes writing their statistics into an astra-tick- folder."""
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"cyclictest" in argv and b"astra-tick-" in argv:
                out.add(int(d.name))
    return out


def assert_nothing_left(before_workers: set[int]) -> None:
    assert not ticker_pids(), "ticker (cyclictest) left running"
    left = our_objects()
    assert left["interfaces"] == [], f"interfaces left behind: {left['interfaces']}"
    assert left["host_shells"] == [], f"host shells (namespaces) left behind: {left['host_shells']}"
    assert not (worker_pids() - before_workers), "worker processes left behind"
    assert not any(Path("/sys/fs/cgroup/cpu").glob("astrh*")), "cgroups left behind"


def test_shaping_in_force_and_astra_far_faster(tmp_path):
    before = worker_pids()
    net = ["network=mininet", "network.bandwidth_mbps=10", "devices=2"]
    sp = row_of(bench(tmp_path, *MODEL, *net, "method=sp", "verify=true"))
    astra = row_of(bench(tmp_path, *MODEL, *net, "method=astra", "method.codebook_size=256"))
    ideal_ms = sp["payload_bytes"] * 8 / 10e6 * 1e3
    assert sp["comm_ms"] >= 0.8 * ideal_ms, (sp["comm_ms"], ideal_ms)
    assert sp["max_abs_err"] <= 1e-4
    assert astra["latency_ms"] * 3 < sp["latency_ms"], (astra["latency_ms"], sp["latency_ms"])
    for row in (sp, astra):
        assert row["network"] == "mininet" and row["bandwidth_mbps"] == 10.0
        assert row["wire_bytes"] is not None and row["wire_bytes"] >= row["payload_bytes"]
        assert row["cpu_per_device"] == 1.0 and row["oversubscribed"] is False
        assert row["cpu_ms"] > 0 and row["runqueue_wait_ms"] >= 0 and row["throttled_ms"] >= 0
        assert row["cpus"] == cpu_list(sorted(os.sched_getaffinity(0)))  # not pinned: every CPU
    assert_nothing_left(before)


def test_analytic_and_mininet_rows_for_the_same_point(tmp_path):
    # ++: a sweep composes its primary config with the default network (loopback), which has no bandwidth
    sweep = rows_of(bench(tmp_path, "-m", *MODEL, "network=mininet,analytic", "++network.bandwidth_mbps=10",
                          "devices=2", "method=single,sp"))
    rows = {(r["network"], r["method"]): r for r in sweep}
    assert len(rows) == 4
    for net in ("mininet", "analytic"):
        assert rows[net, "sp"]["payload_bytes"] == rows["mininet", "sp"]["payload_bytes"]
        assert rows[net, "sp"]["comm_ms"] > 0 and rows[net, "single"]["comm_ms"] == 0
    # Communication dominates sp at 10 Mbit/s: the two backends must tell the same story (loose: noisy machine).
    a, m = rows["analytic", "sp"]["comm_ms"], rows["mininet", "sp"]["comm_ms"]
    assert 0.5 < m / a < 2.0, (m, a)
    from harness.store.results import load

    df = load(tmp_path / "r.parquet")
    assert set(df["network"]) == {"mininet", "analytic"}
    assert df["speedup"].notna().all()


def test_mesh_topology_and_bandwidth_sweep_reuses_hosts(tmp_path):
    before = worker_pids()
    proc = subprocess.run(
        [sys.executable, "-m", "harness.bench", "-m", f"results.path={tmp_path / 'r.parquet'}",
         f"cache_dir={tmp_path / 'cache'}", "repeats=2", "warmup=1", *MODEL, "network=mininet", "topology=mesh",
         "devices=2", "method=sp", "network.bandwidth_mbps=10,100"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert [r["bandwidth_mbps"] for r in rows] == [10.0, 100.0]
    assert all(r["status"] == "ok" and r["topology"] == "mesh" for r in rows)
    assert rows[0]["comm_ms"] > 2 * rows[1]["comm_ms"]  # the live bandwidth change took effect
    assert rows[1]["setup_s"] == 0  # second point reused hosts and workers
    assert_nothing_left(before)


def test_heterogeneous_bandwidth(tmp_path):
    row = row_of(bench(tmp_path, *MODEL, "network=mininet", "method=sp", "devices=2",
                       "network.bandwidth_mbps=[10,100]"))
    assert row["bandwidth_mbps"] == 10.0 and json.loads(row["bandwidth_per_device"]) == [10.0, 100.0]
    # the 10 Mbit/s host's upload is the bottleneck of the exchange
    assert row["comm_ms"] >= 0.8 * row["payload_bytes"] * 8 / 10e6 * 1e3


def _start(tmp_path, *args):
    cmd = [sys.executable, "-m", "harness.bench", f"results.path={tmp_path / 'r.parquet'}",
           f"cache_dir={tmp_path / 'cache'}", *MODEL, "network=mininet", "devices=2", "method=sp",
           "network.bandwidth_mbps=10", "repeats=500", "warmup=0", *args]
    # SIGINT back to its default in the child: a shell that starts the tests in the background (no job control)
    # ignores SIGINT, and Python then keeps ignoring it, so the SIGINT test would test nothing.
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_workers(before: set[int], n: int, proc, timeout: float = 90) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = sorted(worker_pids() - before)
        if len(new) >= n:
            time.sleep(3)  # let them get into the timed loop (not a measurement)
            return new
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    raise AssertionError("workers did not start")


def test_killed_rank_fails_cleanly(tmp_path):
    before = worker_pids()
    proc = _start(tmp_path)
    try:
        pids = _wait_for_workers(before, 2, proc)
        os.kill(pids[-1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1 and "was killed by signal 9 (SIGKILL)" in lines[0], err[-2000:]
    assert not (tmp_path / "r.parquet").exists()
    assert_nothing_left(before)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_controller_tears_down(tmp_path, sig):
    before = worker_pids()
    proc = _start(tmp_path)
    try:
        _wait_for_workers(before, 2, proc)
        proc.send_signal(sig)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert_nothing_left(before)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["network.bandwidth_mbps=0"], "bandwidth_mbps=0"),
        (["network.bandwidth_mbps=2000"], "bandwidth_mbps=2000"),
        (["network.bandwidth_mbps=[10,20,30]"], "lists 3 values"),
        (["topology=nope"], "unknown topology"),
        (["devices=4", "device=cpu1", "device.dilation=1"], "cores"),
        (["devices=8", "tokens=64", "network.bandwidth_mbps=0.5"], "HTB"),
        (["devices=8", "tokens=64", "device.cfs_period_us=1000"], "minimum"),
        (["network.loss_pct=100"], "loss_pct=100"),
    ],
)
def test_bad_network_input(tmp_path, args, needle):
    before = worker_pids()
    proc = bench(tmp_path, "network=mininet", "method=sp", "devices=2", *args, timeout=60)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "r.parquet").exists()
    assert_nothing_left(before)


def test_netem_options_refused_or_applied(tmp_path):
    from harness.network.mininet.conditions import netem_available

    proc = bench(tmp_path, *MODEL, "network=mininet", "method=sp", "devices=2", "network.delay_ms=5", timeout=120)
    if netem_available():
        assert proc.returncode == 0, proc.stderr
    else:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "netem" in lines[0], proc.stderr
        assert not (tmp_path / "r.parquet").exists()


def test_packet_loss_drops_on_our_links_and_tcp_recovers(tmp_path):
    """network.loss_pct: nftables drops packets at random in our hosts' namespaces (netem is absent here); TCP
    retransmits, so results stay exact while the drops are counted and cost time."""
    before = worker_pids()
    root_tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    rows = {pct: row_of(bench(tmp_path, *MODEL, "network=mininet", "network.bandwidth_mbps=100", "devices=2",
                              "method=sp", "verify=true", f"network.loss_pct={pct}"))
            for pct in (0, 5)}
    assert rows[0]["dropped_packets"] is None
    assert rows[5]["dropped_packets"] > 0
    assert rows[5]["max_abs_err"] <= 1e-4 and rows[5]["status"] == "ok"
    assert json.loads(rows[5]["settings"])["network"]["loss_pct"] == 5
    # the rules lived in the hosts' namespaces only: the machine's own ruleset is as it was
    assert subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout == root_tables
    assert_nothing_left(before)


def test_trace_changes_links_live_during_a_request_stream(tmp_path):
    """stream_s + network.trace: requests run back to back while the links drop from 100 to 4 Mbit/s at 3 s (in
    emulated time); the change is applied live (tc class change) and the requests after it are slower."""
    import pandas as pd

    before = worker_pids()
    trace = tmp_path / "drop.csv"
    trace.write_text("time_s,mbps\n0,100\n3,4\n")
    row = row_of(bench(tmp_path, *MODEL, "network=mininet", "devices=2", "method=sp", "stream_s=6",
                       f"network.trace={trace}", "warmup=1", timeout=240))
    assert row["status"] == "ok" and row["stream_s"] == 6 and row["requests"] >= 4
    assert row["trace_changes"] == 1 and row["trace_lag_ms"] < 100
    side = pd.read_parquet(tmp_path / "r.requests.parquet")
    req = side[side["kind"] == "request"].sort_values("time_s")
    assert len(req) >= row["requests"] and req["served"].sum() == row["requests"]
    assert (side[side["kind"] == "trace"]["mbps"].tolist()) == [100.0, 4.0]
    fast = req[req["time_s"] + req["latency_ms"] / 1e3 < 3]["latency_ms"]
    slow = req[req["time_s"] > 3.2]["latency_ms"]
    assert len(fast) and len(slow) and slow.median() > 5 * fast.median(), (fast.tolist(), slow.tolist())
    # the next point of the session runs at its own configured rate again
    fixed = row_of(bench(tmp_path, *MODEL, "network=mininet", "devices=2", "method=sp", "network.bandwidth_mbps=100",
                         "repeats=2"))
    assert fixed["latency_ms"] < 2 * fast.median()
    assert_nothing_left(before)


def test_heterogeneous_devices_with_proportional_split(tmp_path):
    """device.cores=[1,0.5]: each host gets its own quota; split=proportional gives the faster device twice the
    tokens, and the output stays exact."""
    before = worker_pids()
    rows = [row_of(bench(tmp_path, *MODEL, "network=mininet", "devices=2", f"method={m}", "device.cores=[1,0.5]",
                         "split=proportional", "verify=true", "network.bandwidth_mbps=100", *extra))
            for m, extra in (("sp", []), ("astra", ["method.vq=lossless"]))]
    for row in rows:
        assert row["status"] == "ok" and row["max_abs_err"] <= 1e-4
        assert row["cores_per_device"] == "[1.0, 0.5]" and json.loads(row["split"]) == [171, 85]
        assert row["fpar"] == pytest.approx((171 ** 2 + 85 ** 2) / 256 ** 2)
        assert row["cpu_per_device"] == 1.0 and row["dilation"] == 1.0
    assert_nothing_left(before)


def test_oversubscription_allowed_is_marked_and_pinned_devices(tmp_path):
    """Three 1-core devices pinned to one core without dilation: run, marked oversubscribed; every rank ran on the
    pinned core only (the machine's last)."""
    from harness.emulation.dilation import machine_cores

    row = row_of(bench(tmp_path, "network=mininet", "method=sp", "devices=3", "tokens=48", "device.dilation=1",
                       "device.allow_oversubscribe=true", "network.bandwidth_mbps=100", "device.pin_cores=1"))
    assert row["oversubscribed"] is True and row["status"] == "ok"
    assert "oversubscribed" in row["fidelity"]
    assert row["cpus"] == str(machine_cores() - 1)


def test_dilated_four_devices_and_reference_device(tmp_path):
    """Four 1-core devices on this machine: k is chosen so they fit beside the reserve, links are shaped at B/k,
    times are reported ÷ k with the real ones kept, and every row carries its fidelity verdict."""
    from harness.emulation import idle, tick
    from harness.emulation.dilation import machine_cores

    before = worker_pids()
    k = max(1.0, 4 / (machine_cores() - 0.25))
    net = ["network=mininet", "network.bandwidth_mbps=10", "devices=4"]
    by = {r["method"]: r for r in rows_of(bench(tmp_path, "-m", *MODEL, *net, "method=astra,single",
                                                "method.codebook_size=256", "budget_s=30"))}
    astra, single = by["astra"], by["single"]
    for row in (astra, single):
        assert row["dilation"] == pytest.approx(k)
        assert row["cpu_real_per_device"] == pytest.approx(1 / k) and row["oversubscribed"] is False
        assert row["latency_ms"] == pytest.approx(row["latency_real_ms"] / k)
        assert row["compute_ms"] == pytest.approx(row["compute_real_ms"] / k)
        assert isinstance(row["fidelity"], str) and row["fidelity"]
        assert row["idle_poll"] is idle.available()  # device.idle_poll=auto: held wherever it can be
        assert row["tick_us"] == (tick.DEFAULT_US if tick.available() else 0)  # device.tick_us=auto likewise
    assert idle.current_limit_us() != 0  # the session's polling request ended with it
    # device.spread=auto: every device pinned to one core, two per core, and the baseline to one
    assert astra["spread"] is True and single["spread"] is True and single["cpus"] == "0"
    assert astra["link_real_mbps"] == pytest.approx(10 / k)
    assert astra["compute_inflation"] is not None and astra["compute_inflation"] > 0
    assert astra["baseline_key"] == single["timing_key"]  # the baseline ran on the same dilated device
    assert 1 <= astra["repeats"] <= 3
    # Reference mode: k from the measured single-device latency, so single reports (about) the reference. The
    # reference is a device 4x slower than the auto quota's, so each inference spans several CFS periods (a
    # one-period inference is bimodal: it fits in one quota burst or waits out a throttle).
    target = round(single["latency_real_ms"] / 4, 3)
    ref = row_of(bench(tmp_path, *MODEL, *net, "method=single", f"device.reference_ms={target}"))
    assert ref["dilation"] == pytest.approx(ref["reference_single_real_ms"] / target)
    assert 0.5 * target < ref["latency_ms"] < 2 * target, (ref["latency_ms"], target)
    assert_nothing_left(before)
