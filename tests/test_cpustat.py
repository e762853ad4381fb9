"""The per-rank CPU signals (harness/cpustat.py): a busy loop shows up as CPU time, deltas of unreadable signals
are None, and a cgroup cpu.stat file is parsed in both cgroup versions."""

from __future__ import annotations

import time

from harness.emulation.cpustat import Probe, Sample, throttled_seconds


def test_busy_loop_is_cpu_time():
    p = Probe()
    a = p.read()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.2:
        pass
    d = p.delta(a, p.read())
    assert 0.1 < d.cpu_s < 1.0
    assert d.wait_s is None or d.wait_s >= 0


def test_delta_of_unreadable_signals_is_none():
    d = Probe.delta(Sample(1.0, None, 2.0), Sample(1.5, 3.0, None))
    assert d.cpu_s == 0.5 and d.wait_s is None and d.throttled_s is None


def test_cpu_stat_parsing(tmp_path):
    v1 = tmp_path / "v1.stat"
    v1.write_text("nr_periods 10\nnr_throttled 2\nthrottled_time 1500000000\n")
    v2 = tmp_path / "v2.stat"
    v2.write_text("usage_usec 5\nthrottled_usec 250000\n")
    assert throttled_seconds(v1) == 1.5 and throttled_seconds(v2) == 0.25
    assert throttled_seconds(tmp_path / "missing") is None and throttled_seconds(None) is None
    from harness.emulation.cpustat import throttled_from_text

    assert throttled_from_text("nr_periods 3\nthrottled_time 2000000\n") == 0.002
    assert throttled_from_text("usage_usec 5\n") is None and throttled_from_text("not a stat file") is None
