"""Where a rank's time goes, read from Linux around each timed inference: the CPU time its process used (all
threads), the time its threads waited runnable for a CPU (run-queue wait, ``/proc/self/task/*/schedstat``), and
the time its CPU cgroup was throttled by its quota (``cpu.stat``; a Mininet host's CFS quota). Each is None where the
kernel does not offer it. These are the raw signals of a device's fidelity: a rank that waits for a CPU, or is
throttled beyond its budget, does not run at the stated speed."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Sample:
    cpu_s: float
    wait_s: float | None
    throttled_s: float | None


def _schedstat_wait() -> float | None:
    total, seen = 0, False
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            fields = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        total += int(fields[1])
        seen = True
    return total / 1e9 if seen else None


def cpu_stat_file() -> Path | None:
    """This process's CPU cgroup ``cpu.stat`` (cgroup v1 ``cpu`` controller, else the v2 unified group)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    v2 = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            for mount in (f"/sys/fs/cgroup/{controllers}", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
                f = Path(mount + path) / "cpu.stat"
                if f.is_file():
                    return f
        if controllers == "":
            v2 = Path("/sys/fs/cgroup" + path) / "cpu.stat"
    return v2 if v2 is not None and v2.is_file() else None


def throttled_seconds(path: Path | None) -> float | None:
    """Throttled time so far recorded in a cgroup ``cpu.stat`` file, in seconds (None if unreadable)."""
    if path is None:
        return None
    try:
        return throttled_from_text(path.read_text())
    except OSError:
        return None


def throttled_from_text(text: str) -> float | None:
    """Throttled time in a ``cpu.stat`` file's text, in seconds (v1 ``throttled_time`` in ns, v2 ``throttled_usec``);
    None if it has neither or does not parse."""
    try:
        stats = dict(line.split() for line in text.splitlines() if line.strip())
    except ValueError:
        return None
    if "throttled_time" in stats:  # v1: ns
        return int(stats["throttled_time"]) / 1e9
    if "throttled_usec" in stats:  # v2
        return int(stats["throttled_usec"]) / 1e6
    return None


class Probe:
    """``read()`` a Sample now; ``delta(a, b)`` the Sample of what happened between two reads."""

    def __init__(self):
        self.stat = cpu_stat_file()

    def read(self) -> Sample:
        return Sample(time.process_time(), _schedstat_wait(), throttled_seconds(self.stat))

    @staticmethod
    def delta(a: Sample, b: Sample) -> Sample:
        def d(x, y):
            return None if x is None or y is None else y - x

        return Sample(b.cpu_s - a.cpu_s, d(a.wait_s, b.wait_s), d(a.throttled_s, b.throttled_s))
