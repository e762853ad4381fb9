"""A scheduling tick finer than the kernel's, for emulated devices that share cores.

The kernel charges a running task's CPU time to its cgroup's CFS quota, and reconsiders which task runs, at
scheduling events and at the timer tick. This VM's kernel ticks at 250 Hz (``CONFIG_HZ=250``), so a device that
computes without pause overruns its quota by up to 4 ms and then stays throttled until the debt is paid: its CPU
arrives in bursts of about 4 ms on and 5 ms off whatever ``cfs_period_us`` is. Compute averages out; a message
does not. A device that ends its compute in debt cannot send or answer until its next burst, and a peer's woken
communication thread waits for the device computing on its core. A 320-byte all-gather right after compute took
5-7 ms of real time between 4 such devices (``benchmarks/exchange.py``), where the same exchange between idle hosts
takes 0.3 ms.

A real-time thread per core that wakes every ``interval_us`` forces a scheduling event at that rate: the running
task's time is charged (so its quota is enforced within one interval), and the fair scheduler picks again (so a
woken thread with its share left runs within one interval). We use ``cyclictest`` (rt-tests), the standard tool for
exactly such periodic real-time wake-ups, at SCHED_FIFO priority 1, one thread pinned to each core the devices use.
Each wake-up costs about 20 µs of CPU on this VM (a timer exit to the hypervisor): about 4 % of each core at 500 µs,
taken from ``device.reserve_cores`` (or, with ``device.pin_cores``, from the pinned cores' idle time). cyclictest's
own PM QoS request is switched off (``--default-system``): ``device.idle_poll`` decides that. It is started under
``setpriv --pdeathsig`` so that it dies with the thread that started it (the controller's main thread), and its
PID goes into the Mininet state file, so a run after a SIGKILLed controller stops an orphan.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

TICK_MARK = "astra-tick-"  # the statistics folder's prefix, on every ticker's command line (host_state finds orphans)
DEFAULT_US = 500  # device.tick_us=auto: measured best on this VM (docs/devices.md, the finer tick; docs/measurements.md)
MIN_US, MAX_US = 100, 100_000
PRIORITY = 1  # the lowest real-time priority: above every fair-class task, below the kernel's own RT threads


def binary() -> str | None:
    return shutil.which("cyclictest")


def command(cpus: list[int], interval_us: int, json_path: str, loops: int | None = None) -> list[str]:
    """cyclictest's command line: one thread per CPU, pinned in order, all at ``PRIORITY``, every ``interval_us``
    (``--distance=0``: no per-thread offset), statistics to ``json_path`` at exit, no PM QoS request of its own."""
    cmd = [binary() or "cyclictest", f"--affinity={','.join(map(str, cpus))}", f"--threads={len(cpus)}",
           f"--priority={PRIORITY}", f"--interval={interval_us}", "--distance=0", "--quiet", "--default-system",
           f"--json={json_path}"]
    return cmd + ([f"--loops={loops}"] if loops else [])


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether a ticker can run here: cyclictest is installed and takes our options, and it may take a real-time
    priority (root, and a cgroup with real-time runtime). Probed once per process with a one-loop run of the same
    command line."""
    if binary() is None or os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory(prefix=TICK_MARK) as d:
        try:
            out = subprocess.run(command([min(os.sched_getaffinity(0))], 1000, f"{d}/probe.json", loops=1),
                                 capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return out.returncode == 0 and Path(f"{d}/probe.json").is_file()


class Ticker:
    """cyclictest waking one SCHED_FIFO thread on each of ``cpus`` every ``interval_us``, from ``start()`` (or
    ``with``) until ``close()``. ``stats`` after close: per CPU, the wake-ups and their average and worst lateness
    in µs (how fine the tick really was)."""

    def __init__(self, cpus: list[int], interval_us: int = DEFAULT_US):
        if not cpus:
            raise ValueError("a ticker needs at least one CPU")
        if not MIN_US <= interval_us <= MAX_US:
            raise ValueError(f"interval_us={interval_us} is outside {MIN_US}..{MAX_US}")
        self.cpus, self.interval_us = list(cpus), int(interval_us)
        self.proc: subprocess.Popen | None = None
        self.stats: dict[int, dict] | None = None
        self._dir: str | None = None

    def start(self, timeout_s: float = 5.0) -> "Ticker":
        """Starts cyclictest and returns once each of its measuring threads holds its real-time priority; a
        RuntimeError (nothing left running) if it cannot."""
        if self.running:
            return self
        self.close()  # a ticker that died since: its statistics and folder go, a new one starts
        if binary() is None:
            raise RuntimeError("cyclictest is not installed (package rt-tests; scripts/setup.sh installs it)")
        try:
            self._launch(timeout_s)
        except OSError as exc:
            self.close()
            raise RuntimeError(f"cyclictest could not be started: {exc}") from None
        except BaseException:
            self.close()
            raise
        return self

    def _launch(self, timeout_s: float) -> None:
        self._dir = tempfile.mkdtemp(prefix=TICK_MARK)
        cmd = command(self.cpus, self.interval_us, f"{self._dir}/stats.json")
        setpriv = shutil.which("setpriv")  # util-linux: the death signal is set after fork, with no Python in between
        if setpriv:
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        with open(f"{self._dir}/stderr", "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:  # an early exit is a refusal: say why in one line
                msg = Path(f"{self._dir}/stderr").read_text(errors="replace").strip().splitlines()
                raise RuntimeError(f"cyclictest exited at start: {msg[-1] if msg else 'no message'}")
            if len(self._fifo_threads()) >= len(self.cpus):
                return
            time.sleep(0.01)
        raise RuntimeError(f"cyclictest did not start its {len(self.cpus)} real-time threads within {timeout_s:g} s")

    def _fifo_threads(self) -> list[int]:
        """The measuring threads holding the real-time priority (not the main thread, which takes it briefly while
        checking its privileges)."""
        out = []
        try:
            tids = os.listdir(f"/proc/{self.proc.pid}/task")
        except OSError:
            return out
        for tid in tids:
            if int(tid) == self.proc.pid:
                continue
            try:
                if os.sched_getscheduler(int(tid)) == os.SCHED_FIFO:
                    out.append(int(tid))
            except OSError:
                continue
        return out

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Stops the ticker (SIGINT: cyclictest writes its statistics and exits) and reads its statistics."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self._dir is not None:
            try:
                data = json.loads(Path(f"{self._dir}/stats.json").read_text())
                self.stats = {int(t["cpu"]): {"cycles": int(t["cycles"]), "avg_us": float(t["avg"]),
                                              "max_us": float(t["max"])} for t in data["thread"].values()}
            except (OSError, ValueError, KeyError, TypeError):
                self.stats = None
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> "Ticker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
