"""Time dilation arithmetic, the refused cases, adaptive repeats, and the fidelity invariants — no network needed."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import pytest

from harness.emulation import dilation, fidelity
from harness.errors import ConfigError
from harness.spec.schema import DeviceOptions


def dev(**kw) -> DeviceOptions:
    return DeviceOptions(**kw)


# ------------------------------------------------------------------------------------------------------ dilation
def test_auto_fits_devices_beside_the_reserve():
    d = dev(cores=1.0, reserve_cores=0.4)
    assert dilation.factor(d, 4, True, cores=2) == pytest.approx(4 / 1.6)
    assert dilation.factor(d, 8, True, cores=2) == pytest.approx(8 / 1.6)
    assert dilation.factor(d, 1, True, cores=2) == 1.0  # one device fits: no dilation
    assert dilation.factor(dev(cores=0.5, reserve_cores=0.4), 2, True, cores=2) == 1.0
    assert dilation.factor(d, 4, True, cores=16) == 1.0
    # whatever the machine, the devices' real quotas plus the reserve fit it
    for n in (2, 3, 4, 8):
        k = dilation.factor(d, n, True, cores=2)
        assert n * 1.0 / k <= 2 - 0.4 + 1e-9
        assert dilation.check_fit(d, n, k, cores=2)["oversubscribed"] is False


def test_fixed_and_reference_dilation():
    assert dilation.factor(dev(dilation=3.0), 2, True, cores=2) == 3.0
    assert dilation.factor(dev(reference_ms=111.5), 4, True, cores=2) is None  # measured at run time
    assert dilation.reference_quota(dev(reference_ms=111.5, reserve_cores=0.4), 4, cores=2) == pytest.approx(0.4)
    assert dilation.reference_quota(dev(reference_ms=111.5, reserve_cores=0.4), 1, cores=2) == 1.0


def test_pinned_devices_fit_their_cores():
    """device.pin_cores: the devices share the machine's last cores and auto k fits them there; the other cores
    are the reserve."""
    assert dilation.pinned_cpus(dev(), cores=2) is None
    assert dilation.pinned_cpus(dev(pin_cores=1), cores=2) == ("1", 1)
    assert dilation.pinned_cpus(dev(pin_cores=2), cores=8) == ("6-7", 2)
    d = dev(cores=1.0, pin_cores=1, reserve_cores=0.25)
    assert dilation.factor(d, 2, True, cores=2) == 2.0  # not 2 / 1.75: the reserve is the unpinned core
    assert dilation.factor(d, 4, True, cores=2) == 4.0
    assert dilation.factor(d, 1, True, cores=2) == 1.0
    assert dilation.factor(dev(cores=1.0, pin_cores=2), 4, True, cores=8) == 2.0
    assert dilation.check_fit(d, 4, 4.0, cores=2)["oversubscribed"] is False
    with pytest.raises(ConfigError, match="pin_cores=1 gives them 1"):  # 4 devices at k=2 need 2 cores, not 1
        dilation.check_fit(dev(cores=1.0, pin_cores=1, dilation=2.0), 4, 2.0, cores=2)
    assert dilation.reference_quota(dev(reference_ms=111.5, pin_cores=1), 4, cores=2) == 0.25


@pytest.mark.parametrize("kw, enforced, needle", [
    (dict(pin_cores=3), True, "pin_cores=3 is not between 1 and this machine's 2 cores"),
    (dict(pin_cores=1), False, "network=mininet"),
    (dict(dilation=2.0), False, "network=mininet"),
    (dict(reference_ms=100.0), False, "network=mininet"),
    (dict(reference_ms=100.0, dilation=2.0), True, "remove one"),
    (dict(reserve_cores=2.0), True, "reserve_cores"),
])
def test_dilation_refusals(kw, enforced, needle):
    with pytest.raises(ConfigError, match=needle):
        dilation.factor(dev(**kw), 4, enforced, cores=2)


def test_devices_that_cannot_fit_even_dilated():
    d = dev(cores=1.0, cfs_period_us=10000)
    with pytest.raises(ConfigError, match="minimum"):  # 32 devices: 0.05 core = 500 us per 10 ms period
        dilation.check_fit(d, 32, dilation.factor(d, 32, True, cores=2), cores=2)
    with pytest.raises(ConfigError, match="dilation=auto"):  # a hand-set k too small to fit
        dilation.check_fit(dev(dilation=1.0), 4, 1.0, cores=2)
    cols = dilation.check_fit(dev(dilation=1.0, allow_oversubscribe=True), 4, 1.0, cores=2)
    assert cols == {"cpu_per_device": 1.0, "cpu_real_per_device": 1.0, "oversubscribed": True}


def test_links_shaped_at_bandwidth_over_k_within_htb_range():
    assert dilation.check_links(2.5, [10.0, 100.0]) == [4.0, 40.0]
    with pytest.raises(ConfigError, match="HTB"):
        dilation.check_links(60, [10.0])  # 0.17 Mbit/s
    with pytest.raises(ConfigError, match="1000"):
        dilation.check_links(0.5, [1000.0])  # a reference device slower than ours compresses time


def test_reported_times_are_real_over_k():
    row = {"latency_ms": 250.0, "latency_p90_ms": 300.0, "compute_ms": 200.0, "comm_ms": 50.0, "cpu_ms": 190.0}
    out = dilation.scale_row(row, 2.5)
    assert out["latency_ms"] == 100.0 and out["latency_real_ms"] == 250.0
    assert out["compute_ms"] == 80.0 and out["comm_ms"] == 20.0 and out["latency_p90_real_ms"] == 300.0
    assert "cpu_ms" not in out and out["dilation"] == 2.5  # CPU time is not dilated


def test_build_spec_gives_single_its_sweeps_device(monkeypatch):
    """The single-device baseline of a 4-device Mininet point runs on the same dilated device."""
    from harness.spec.build import build_spec, compose
    from harness.spec.identity import baseline_key, timing_key

    monkeypatch.setattr(dilation, "machine_cores", lambda: 2)
    specs = {m: build_spec(compose(["network=mininet", f"method={m}", "devices=4", "model=vit_tiny"]))
             for m in ("single", "sp")}
    assert specs["single"].devices == 1
    reserve = specs["sp"].device.reserve_cores
    assert specs["single"].dilation == specs["sp"].dilation == pytest.approx(4 / (2 - reserve))
    assert specs["sp"].quota_cores == pytest.approx((2 - reserve) / 4)
    assert baseline_key(specs["sp"]) == timing_key(specs["single"])
    two = build_spec(compose(["network=mininet", "method=sp", "devices=2", "model=vit_tiny"]))
    assert two.dilation == pytest.approx(2 / (2 - reserve)) and baseline_key(two) != timing_key(specs["single"])


# ------------------------------------------------------------------------------------------------ adaptive repeats
class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakePlan:
    def __init__(self, clock, seconds):
        self.clock, self.seconds, self.calls = clock, seconds, 0

    def forward(self, inputs, **kw):
        self.calls += 1
        self.clock.t += self.seconds


@pytest.mark.parametrize("method, seconds, budget, warmup, repeats, want", [
    ("sp", 2.0, 1.0, 2, 5, (0, 1)),      # longer than the budget: timed once, no warm-up
    ("sp", 0.01, 1.0, 2, 5, (2, 5)),     # short: the full warm-up and repeats
    ("sp", 0.3, 1.0, 2, 5, (1, 2)),      # warm-ups fit half the budget, repeats the rest
    ("sp", 0.6, 1.0, 2, 5, (1, 1)),      # at least one timed repeat
    ("sp", 0.2, None, 3, 4, (3, 4)),     # no budget: warmup + repeats
    ("single", 2.0, 1.0, 2, 5, (2, 5)),  # the baseline every speedup divides: always warmup + repeats
])
def test_adaptive_repeats(monkeypatch, method, seconds, budget, warmup, repeats, want):
    from harness.comm.collectives import LocalComm
    from harness.rank import worker
    from harness.spec.build import build_spec, compose

    clock = FakeClock()
    monkeypatch.setattr(worker.time, "perf_counter", clock)
    spec = build_spec(compose(["model=vit_tiny", f"method={method}", "solo_repeats=0"])).replace(
        budget_s=budget, warmup=warmup, repeats=repeats)
    plan = FakePlan(clock, seconds)
    t = worker.Timing(spec, LocalComm(), plan, None)
    t.run()
    rep = t.report()
    assert (rep["warmups"], len(rep["latency_s"])) == want
    assert plan.calls == sum(want)
    assert all(x == pytest.approx(seconds) for x in rep["latency_s"])


# ---------------------------------------------------------------------------------------------------- fidelity
def report(rank, lat, comm, solo=None, idle=None, records=()):
    return {"rank": rank, "latency_s": lat, "comm_s": comm, "solo_compute_s": solo, "idle_cores": idle,
            "records": [list(r) for r in records]}


def test_compute_inflation_pools_the_ranks():
    reps = [report(0, [1.0, 1.2, 1.1], [0.1, 0.1, 0.1], solo=[1.0]),   # inside 1.0, alone 1.0
            report(1, [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], solo=[0.4])]   # inside 0.5, alone 0.4
    assert fidelity.compute_inflation(reps) == pytest.approx(1.5 / 1.4)
    assert fidelity.compute_inflation([report(0, [1.0], [0.0])]) is None
    assert fidelity.compute_inflation([reps[0], report(1, [1.0], [0.0])]) is None  # a rank without its solo


def test_paired_solo_samples_are_held_against_their_own_repeats():
    # the machine slows down by half between repeats 0 and 2; each repeat's solo sample slows down with it
    reps = [dict(report(0, [1.0, 1.2, 1.5], [0.0, 0.1, 0.0]), solo_paired_s=[1.0, None, 1.5]),
            dict(report(1, [1.0, 1.2, 1.5], [0.0, 0.0, 0.0]), solo_paired_s=[None, 1.1, None])]
    assert fidelity.compute_inflation(reps) == pytest.approx((1.0 + 1.2 + 1.5) / (1.0 + 1.1 + 1.5))
    assert fidelity.solo_medians(reps) == pytest.approx([1.25, 1.1])
    # a rank whose turn never came (fewer repeats than ranks) gets the pooled median of the others' samples
    reps.append(dict(report(2, [1.0], [0.0]), solo_paired_s=[None]))
    assert fidelity.solo_medians(reps)[2] == pytest.approx(1.1)
    assert fidelity.solo_compute_ms(reps) == pytest.approx(1250.0)
    # without paired samples the solo runs after the point decide, as before
    assert fidelity.solo_medians([report(0, [1.0], [0.0], solo=[0.5])]) == [0.5]
    assert fidelity.solo_medians([dict(report(0, [1.0], [0.0]), solo_paired_s=[None])]) is None


def test_goodput_counts_bulk_collectives_only():
    rate = 8.0  # Mbit/s = 1e6 bytes/s
    bulk = ("all_gather", "b0", 900_000, 1.0, 1_000_000)  # 1 MB in 1 s: exactly the rate
    slow = ("all_gather", "b1", 900_000, 2.0, 1_000_000)  # half the rate on this rank...
    tiny = ("all_gather", "b2", 100, 0.5, 200)  # not a bulk transfer: ignored
    reps = [report(0, [3.5], [3.5], records=[bulk, slow, tiny]),
            report(1, [3.5], [3.5], records=[("all_gather", "b0", 900_000, 1.25, 1_000_000),
                                            ("all_gather", "b1", 900_000, 1.0, 1_000_000), tiny])]
    # per collective the best rank: b0 -> 1.0, b1 -> 1.0 (rank 1 was not waiting)
    assert fidelity.goodput_ratio(reps, [rate, rate]) == pytest.approx(1.0)
    reps[1]["records"][1][3] = 2.0
    assert fidelity.goodput_ratio(reps, [rate]) == pytest.approx(0.75)
    assert fidelity.goodput_ratio(reps, None) is None
    assert fidelity.goodput_ratio([report(0, [1], [1], records=[tiny])], [rate]) is None


def test_goodput_windows_run_from_each_arrival_to_the_last_departure():
    rate = 8.0  # 1e6 bytes/s: 1 MB is one second of link time
    # rank 1 computes until t = 10.5; both then move 1 MB and leave at 11.5: rank 1's link was busy throughout
    early = ("all_gather", "b0", 900_000, 1.5, 1_000_000, 10.0)
    late = ("all_gather", "b0", 900_000, 1.0, 1_000_000, 10.5)
    reps = [report(0, [2], [2], records=[early]), report(1, [2], [2], records=[late])]
    assert fidelity.goodput_ratio(reps, [rate]) == pytest.approx(1.0)
    # rank 0's last flow lands half a second after rank 1 is done: rank 1's 1 s of link time in a 1.5 s window
    reps[0]["records"][0][3] = 2.0
    assert fidelity.goodput_ratio(reps, [rate]) == pytest.approx(1 / 1.5)
    # a slower link (4 Mbit/s) on rank 1 needs 2 s for its megabyte: the busiest link decides
    reps[0]["records"][0][3] = 1.5
    reps[1]["records"][0][3] = 2.0
    assert fidelity.goodput_ratio(reps, [rate, rate / 2]) == pytest.approx(1.0)
    # bytes an early rank pushed while its peer was still computing do not count against the shorter span
    reps = [report(0, [2], [2], records=[("all_gather", "b0", 1, 1.2, 1_000_000, 0.0)]),
            report(1, [2], [2], records=[("all_gather", "b0", 1, 0.2, 200_000, 1.0)])]
    assert fidelity.goodput_ratio(reps, [rate]) == pytest.approx(1.0)
    reps[1]["records"][0][4] = 100_000  # rank 1's link idle half of its window, rank 0's 1 MB in 1.2 s
    assert fidelity.goodput_ratio(reps, [rate]) == pytest.approx(1 / 1.2)


def test_verdict_names_every_violation():
    assert fidelity.verdict({"compute_inflation": 1.05, "idle_cores": 0.5, "goodput_ratio": 0.97}) == "ok"
    assert fidelity.verdict({}) == "ok"
    v = fidelity.verdict({"compute_inflation": 1.2, "idle_cores": 0.02, "goodput_ratio": 0.6, "oversubscribed": True})
    assert "compute inflated +20%" in v and "saturated" in v and "goodput 0.60" in v and "oversubscribed" in v
    assert fidelity.verdict({"compute_inflation": 0.8}) == "compute inflated -20%"
    cols = fidelity.assess([report(0, [1.0], [0.0], solo=[0.5], idle=1.0)], False, None)
    assert cols == {"compute_inflation": 2.0, "idle_cores": 1.0, "goodput_ratio": None,
                    "fidelity": "compute inflated +100%", "solo_compute_ms": 500.0, "analytic_ms": None,
                    "analytic_wire_ms": None, "comm_skew_ms": None, "comm_collective_ms": None}  # one rank


def test_analytic_formula_fed_with_the_points_own_compute():
    # two ranks, each all-gathers a 1.25 MB shard at 10 Mbit/s: ring = (N-1) x 1.25 MB = 1 s; compute 0.5 s / k=2
    recs = [("all_gather", "b0", 1_250_000, 9.9, None)]
    reps = [dict(report(r, [3.0], [2.0], solo=[0.5, 0.5], records=recs), world=2) for r in (0, 1)]
    assert fidelity.analytic_ms(reps, 10.0, 2.0) == pytest.approx(1250.0)
    assert fidelity.analytic_ms(reps, None, 2.0) is None
    cols = fidelity.assess(reps, False, None, 2.0, 10.0)
    assert cols["solo_compute_ms"] == pytest.approx(250.0)
    # the frames on the wire: 1514 link bytes per 1448 of payload stretch the 1 s transfer, not the compute
    assert cols["analytic_ms"] == pytest.approx(1250.0)
    assert cols["analytic_wire_ms"] == pytest.approx(250.0 + 1000.0 * 1514 / 1448)


def test_interleaved_baseline_pairs_each_repeat():
    reps = [dict(report(0, [1.0, 2.0, 1.0], [0, 0, 0]), single_s=[3.0, 4.0, 3.3]),
            dict(report(1, [1.1, 1.0, 1.0], [0, 0, 0]), single_s=None)]
    out = fidelity.interleaved(reps, 2.0)
    assert out["single_interleaved_ms"] == pytest.approx(3300 / 2)
    assert out["speedup_interleaved"] == pytest.approx(statistics.median([3.0 / 1.1, 4.0 / 2.0, 3.3 / 1.0]))
    assert fidelity.interleaved([report(0, [1.0], [0.0])], 1.0) == {}


def test_interleave_runs_the_baseline_between_repeats(tmp_path):
    """On real ranks (loopback): rank 0 times the whole model after every repeat; the row pairs them."""
    from harness.launch import free_port, launch_local
    from harness.spec.build import make_spec, model_from_conf
    from harness.store.row import row

    mc = model_from_conf("vit_tiny", 32)
    spec = make_spec(mc, {"name": "sp"}, devices=2, tokens=32, repeats=3, warmup=1, interleave=True,
                     solo_repeats=0, results={"path": str(tmp_path / "r.parquet")})
    reports = launch_local(spec, tmp_path, free_port())
    assert len(reports[0]["single_s"]) == 3 and reports[1]["single_s"] is None
    r = row(spec, {"network": "loopback"}, reports)
    assert r["single_interleaved_ms"] > 0 and r["speedup_interleaved"] > 0
    (tmp_path / "b").mkdir()
    plain = launch_local(spec.replace(interleave=False), tmp_path / "b", free_port())
    assert plain[0]["single_s"] is None


def test_paired_solo_runs_one_rank_after_every_repeat(tmp_path):
    """On real ranks (loopback): after each timed repeat the ranks take turns running alone; the row's inflation
    pairs them, and the solo runs after the point are skipped."""
    from harness.launch import free_port, launch_local
    from harness.spec.build import make_spec, model_from_conf
    from harness.store.row import row

    mc = model_from_conf("vit_tiny", 32)
    spec = make_spec(mc, {"name": "sp"}, devices=2, tokens=32, repeats=3, warmup=1, solo_repeats=1,
                     solo_paired=True, results={"path": str(tmp_path / "r.parquet")})
    reports = launch_local(spec, tmp_path, free_port())
    turns = [[s is not None for s in r["solo_paired_s"]] for r in reports]
    assert turns == [[True, False, True], [False, True, False]]
    assert all(r["solo_compute_s"] is None for r in reports)
    r = row(spec, {"network": "loopback"}, reports)
    assert r["solo_compute_ms"] > 0
    (tmp_path / "b").mkdir()
    after = launch_local(spec.replace(solo_paired=False), tmp_path / "b", free_port())
    assert all(r["solo_paired_s"] is None and len(r["solo_compute_s"]) == 1 for r in after)


def test_every_rank_gets_a_paired_sample_when_repeats_are_fewer_than_ranks(tmp_path):
    """3 ranks, 2 repeats: rank 2's turn never comes in the repeats, so it runs alone after the last one, paired
    with it; the inflation then pools all three ranks."""
    from harness.launch import free_port, launch_local
    from harness.spec.build import make_spec, model_from_conf

    mc = model_from_conf("vit_tiny", 32)
    spec = make_spec(mc, {"name": "sp"}, devices=3, tokens=32, repeats=2, warmup=1, solo_repeats=1,
                     solo_paired=True, results={"path": str(tmp_path / "r.parquet")})
    reports = launch_local(spec, tmp_path, free_port())
    turns = [[s is not None for s in r["solo_paired_s"]] for r in reports]
    assert turns == [[True, False], [False, True], [False, True]]
    assert len(fidelity.paired(reports)) == 3


# ------------------------------------------------------------------------------------------------ idle polling
def test_idle_poll_resolution_and_refusals(monkeypatch):
    from harness.emulation import idle
    from harness.spec.build import build_spec, compose, resolve_idle_poll

    monkeypatch.setattr(idle, "available", lambda: True)
    assert resolve_idle_poll("auto", True) is True and resolve_idle_poll("auto", False) is False
    assert resolve_idle_poll(False, True) is False
    with pytest.raises(ConfigError, match="network=mininet"):
        resolve_idle_poll(True, False)
    spec = build_spec(compose(["network=mininet", "method=sp", "devices=2", "model=vit_tiny"]))
    off = build_spec(compose(["network=mininet", "method=sp", "devices=2", "model=vit_tiny", "device.idle_poll=false"]))
    assert spec.idle_poll is True and off.idle_poll is False
    from harness.spec.identity import point_key

    assert point_key(spec) != point_key(off)  # a point measured without it is another point
    monkeypatch.setattr(idle, "available", lambda: False)
    assert resolve_idle_poll("auto", True) is False
    with pytest.raises(ConfigError, match="cpu_dma_latency"):
        resolve_idle_poll(True, True)
    with pytest.raises(ConfigError, match="idle_poll=maybe"):
        build_spec(compose(["network=mininet", "device.idle_poll=maybe"]))


@pytest.mark.skipif(not __import__("harness.emulation.idle").emulation.idle.available(), reason="needs root and /dev/cpu_dma_latency")
def test_poll_idle_holds_and_releases_the_request():
    from harness.emulation import idle

    before = idle.current_limit_us()
    with idle.PollIdle() as p:
        assert p.held and idle.current_limit_us() == 0
    assert not p.held and idle.current_limit_us() == before != 0


# ------------------------------------------------------------------------------------------------ finer tick
def test_tick_resolution_and_refusals(monkeypatch):
    from harness.emulation import tick
    from harness.spec.build import build_spec, compose, resolve_tick
    from harness.spec.identity import identity, point_key

    monkeypatch.setattr(tick, "available", lambda: True)
    assert resolve_tick("auto", True) == tick.DEFAULT_US and resolve_tick("auto", False) == 0
    assert resolve_tick(0, True) == 0 and resolve_tick(0.0, False) == 0 and resolve_tick(250.0, True) == 250
    for bad in (50, 250.5, 100_001):
        with pytest.raises(ConfigError, match="whole µs from 100"):
            resolve_tick(bad, True)
    with pytest.raises(ConfigError, match="network=mininet"):
        resolve_tick(500, False)
    spec = build_spec(compose(["network=mininet", "method=sp", "devices=2", "model=vit_tiny"]))
    off = build_spec(compose(["network=mininet", "method=sp", "devices=2", "model=vit_tiny", "device.tick_us=0"]))
    assert spec.tick_us == tick.DEFAULT_US and off.tick_us == 0
    assert point_key(spec) != point_key(off)  # a point measured without it is another point
    assert "tick_us" not in identity(off)["device"]  # absent when off: keys measured before it stay valid
    assert build_spec(compose(["network=loopback"])).tick_us == 0
    monkeypatch.setattr(tick, "available", lambda: False)
    assert resolve_tick("auto", True) == 0
    with pytest.raises(ConfigError, match="rt-tests"):
        resolve_tick(500, True)
    with pytest.raises(ConfigError, match="device.tick_us=soon"):
        build_spec(compose(["network=mininet", "device.tick_us=soon"]))


def test_session_refuses_to_time_without_its_ticker():
    import types

    from harness.errors import RunFailed
    from harness.network.mininet import backend as mn

    session = mn.Session.__new__(mn.Session)  # the state a running session has, without building a network
    session.ticker = types.SimpleNamespace(running=False, interval_us=500)
    with pytest.raises(RunFailed, match="tick_us=500 ticker .* no longer running"):
        session.run(spec=None, port=None)


def test_ticker_refuses_bad_arguments():
    from harness.emulation import tick

    with pytest.raises(ValueError, match="at least one CPU"):
        tick.Ticker([], 500)
    with pytest.raises(ValueError, match="outside"):
        tick.Ticker([0], 50)


@pytest.mark.skipif(not __import__("harness.emulation.tick").emulation.tick.available(), reason="needs cyclictest (rt-tests) and root")
def test_ticker_runs_a_fifo_thread_per_cpu_and_stops():
    import os
    import signal
    import time

    from harness.emulation import tick

    cpus = list(range(min(2, dilation.machine_cores())))
    with tick.Ticker(cpus, 500) as t:
        tids = t._fifo_threads()
        assert len(tids) == len(cpus)
        assert sorted(min(os.sched_getaffinity(x)) for x in tids) == cpus  # one pinned thread per CPU
        assert all(os.sched_getparam(x).sched_priority == tick.PRIORITY for x in tids)
        pid, folder = t.proc.pid, t._dir
        time.sleep(0.3)
    assert not t.running and not os.path.exists(f"/proc/{pid}/status")  # reaped, nothing left running
    assert set(t.stats) == set(cpus)
    assert all(v["cycles"] >= 100 for v in t.stats.values())  # ~600 wake-ups in 0.3 s at 500 µs
    assert not os.path.exists(folder)  # its statistics folder is gone too
    with pytest.raises(RuntimeError, match="cyclictest exited at start"):
        tick.Ticker([dilation.machine_cores() + 5], 500).start()
    # a ticker killed from outside is seen as stopped, and start() runs a new one
    t = tick.Ticker(cpus[:1], 500).start()
    try:
        old = t.proc.pid
        os.kill(old, signal.SIGKILL)
        t.proc.wait()
        assert not t.running
        assert t.start().running and t.proc.pid != old
    finally:
        t.close()


@pytest.mark.skipif(not __import__("harness.emulation.tick").emulation.tick.available(), reason="needs cyclictest (rt-tests) and root")
def test_ticker_dies_with_the_process_that_started_it(tmp_path):
    import os
    import subprocess
    import sys
    import time

    # a controller that starts a ticker, says its PID and is then SIGKILLed (no cleanup of its own runs)
    code = ("import os, signal, sys; from harness.emulation import tick; t = tick.Ticker([0], 500).start(); "
            "print(t.proc.pid, t._dir, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(__file__).resolve().parents[1]))
    pid, folder = int(out.stdout.split()[0]), out.stdout.split()[1]
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(folder, ignore_errors=True)  # the SIGKILLed process could not remove it
    assert not os.path.exists(f"/proc/{pid}"), "the ticker outlived the process that started it"


# ------------------------------------------------------------------------------------------------ spread devices
def test_cpuset_cpus_reads_cpuset_strings():
    import os

    assert dilation.cpuset_cpus("3") == [3] and dilation.cpuset_cpus("2-3") == [2, 3]
    assert dilation.cpuset_cpus("0,2-4") == [0, 2, 3, 4]
    assert dilation.cpuset_cpus(None) == sorted(os.sched_getaffinity(0))


def test_placement_packs_devices_onto_cores():
    assert dilation.placement([0.4375] * 4, 2) == [0, 1, 0, 1]
    assert dilation.placement([0.875, 0.875], 2) == [0, 1]
    assert dilation.placement([0.6, 0.5, 0.3, 0.3], 2) == [0, 1, 1, 0]  # largest first, onto the emptiest core
    assert dilation.placement([0.5833] * 3, 2) is None  # two of them would overfill a core
    assert dilation.placement([1.5], 2) is None  # a device above one core cannot have one core
    assert dilation.placement([0.4375], 2) == [0]


def test_spread_resolution_and_refusals(monkeypatch):
    from harness.spec.build import build_spec, compose
    from harness.spec.identity import point_key

    monkeypatch.setattr(dilation, "machine_cores", lambda: 2)
    four = build_spec(compose(["network=mininet", "method=sp", "devices=4", "model=vit_tiny"]))
    assert four.cores_of_ranks == [0, 1, 0, 1]
    single = build_spec(compose(["network=mininet", "method=single", "devices=4", "model=vit_tiny"]))
    assert single.cores_of_ranks == [0]  # the baseline keeps one core, as each device does
    off = build_spec(compose(["network=mininet", "method=sp", "devices=4", "model=vit_tiny", "device.spread=false"]))
    assert off.cores_of_ranks is None and point_key(off) != point_key(four)
    assert build_spec(compose(["network=loopback", "method=sp", "devices=2", "model=vit_tiny"])).cores_of_ranks is None
    three = ["network=mininet", "method=sp", "devices=3", "model=vit_tiny"]
    assert build_spec(compose(three)).cores_of_ranks is None  # 3 x 0.58 cores cannot be packed on 2: they float
    for extra, needle in ((["device.spread=true"], "overfilling"),
                          (["device.spread=true", "device.pin_cores=1"], "pin_cores=1"),
                          (["device.spread=true", "device.reference_ms=100"], "reference_ms")):
        with pytest.raises(ConfigError, match=needle):
            build_spec(compose([*three, *extra]))
    with pytest.raises(ConfigError, match="network=mininet"):
        build_spec(compose(["network=loopback", "method=sp", "devices=2", "model=vit_tiny", "device.spread=true"]))


def test_comm_split_separates_waiting_for_peers_from_the_collective():
    # two collectives, two ranks: rank 1 enters each 3 s / 1 s after rank 0; both leave together
    r0 = {"rank": 0, "records": [["all_gather", "a", 8, 5.0, None, 0.0], ["all_gather", "b", 8, 2.0, None, 10.0]]}
    r1 = {"rank": 1, "records": [["all_gather", "a", 8, 2.0, None, 3.0], ["all_gather", "b", 8, 1.0, None, 11.0]]}
    wait, transfer = fidelity.comm_split([r0, r1])
    assert wait == pytest.approx((3 + 0) / 2 + (1 + 0) / 2)  # the mean rank waited 2 s in all
    assert transfer == pytest.approx(2.0 + 1.0)  # from the last entry to the last exit
    cols = fidelity.assess([{**r0, "latency_s": [6.0], "comm_s": [7.0]}, {**r1, "latency_s": [6.0],
                                                                           "comm_s": [3.0]}], False, None, k=2.0)
    assert cols["comm_skew_ms"] == pytest.approx(1000) and cols["comm_collective_ms"] == pytest.approx(1500)
    assert fidelity.comm_split([r0]) is None  # one rank: nothing to wait for
    assert fidelity.comm_split([r0, {"rank": 1, "records": r1["records"][:1]}]) is None  # mismatched sequences
    old = {"rank": 1, "records": [rec[:5] for rec in r1["records"]]}  # records without start times
    assert fidelity.comm_split([r0, old]) is None
