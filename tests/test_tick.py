"""The finer scheduling tick (harness.emulation.tick): how device.tick_us resolves and is refused, the ticker's
threads, and that it never outlives its controller."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.emulation import dilation
from harness.errors import ConfigError


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


@pytest.mark.slow
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


@pytest.mark.slow
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
