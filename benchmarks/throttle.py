"""Throttle benchmark: what a dilated device's CPU quota costs the work it runs, on this machine.

Time dilation holds a device of one virtual core to 1/k of a real core with a CFS quota, and reports real time ÷ k.
That is exact only if a unit of work costs the same CPU time whether the thread runs unthrottled or in slices of its
quota with gaps between them. This benchmark checks it: one single-thread torch worker (by default the MLP matmuls
of a ViT-Base block at 1024 tokens; ``--kind``) sits in a cgroup of its own whose quota is switched between "none"
and the quota each device count gets from ``device.dilation=auto`` (``harness.dilation``, the cpu1 device, this
machine's cores), in shuffled order round after round, and each run's CPU time is read with ``thread_time``.
Rounds pair the configurations minutes apart at most, so the machine's drift cancels in the per-round ratios.

    sudo python benchmarks/throttle.py                          # 2, 4, 8 devices; 8 rounds (~3 min on 2 cores)
    sudo python benchmarks/throttle.py --devices 4 --rounds 12 --scaled-period   # also the period scaled with k
    sudo python benchmarks/throttle.py --rounds 6 --poll-idle   # also each config with idle CPUs polling
    sudo python benchmarks/throttle.py --poll-idle --share-core --kind attention   # beside peers on one core
    sudo python benchmarks/throttle.py --poll-idle --tick     # also each config with the finer tick (device.tick_us)

A ratio above 1 means the emulated device is slower than the core it claims to be, by that factor: speedups over
``single`` (same k) cancel it, absolute latencies and the compute-to-network ratio do not. ``device.reference_ms``
absorbs it (k is then set from the single-device latency measured on the quota). On a VM whose idle vCPUs halt, most
of it is the halting: ``--poll-idle`` shows what ``device.idle_poll`` (on by default as root) leaves of it.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness.emulation import dilation, idle, tick
from harness.spec.schema import DeviceOptions

WORKER = r"""
import sys, time, torch
torch.set_num_threads(1)
if sys.argv[1] == "mlp":  # a ViT-Base block's MLP matmuls at 1024 tokens: weights streamed from memory
    x = torch.randn(1024, 768)
    w1 = [torch.randn(768, 3072) for _ in range(4)]
    w2 = [torch.randn(3072, 768) for _ in range(4)]
    def work():
        for a, b in zip(w1, w2):
            (x @ a).relu_() @ b
else:  # attention of 256 queries over 1024 keys, 12 heads: K, V and the scores (~7 MB) stay in the caches
    q, k, v = torch.randn(12, 256, 64), torch.randn(12, 1024, 64), torch.randn(12, 1024, 64)
    def work():
        for _ in range(40):
            torch.softmax(q @ k.transpose(1, 2) / 8, -1) @ v
work()
print("ready", flush=True)
for line in sys.stdin:
    c0, t0 = time.thread_time(), time.perf_counter()
    for _ in range(int(line)):
        work()
    print(time.thread_time() - c0, time.perf_counter() - t0, flush=True)
"""

# --keepers: one process per core that never lets the core idle but gives way at once (SCHED_IDLE, yielding)
KEEPER = r"""
import os
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
while True:
    os.sched_yield()
"""


def configs(devices: list[int], period_us: int, scaled: bool, cores: int | None = None) -> list[tuple]:
    """(label, k, period_us, quota_us or None) for the unthrottled worker and each device count's auto quota."""
    dev = DeviceOptions()
    out = [("unthrottled", 1.0, period_us, None)]
    for n in devices:
        k = dilation.factor(dev, n, True, cores=cores)
        if k <= 1.0:
            continue
        out.append((f"N={n}", k, period_us, round(period_us / k)))
        if scaled:
            out.append((f"N={n}, period x k", k, round(period_us * k), period_us))
    return out


def share_configs(table: list[tuple], cores: int) -> dict[str, int]:
    """--share-core: for every device count's quota a config where the worker shares its core with peers, the
    number of devices per core the auto quota packs (round(N / cores); counts that leave every device a core of its
    own have none): label -> workers on the core."""
    out = {}
    for label, _k, _period, quota in table:
        if quota and label.startswith("N=") and "period" not in label and round(int(label[2:]) / cores) >= 2:
            out[f"{label}, {round(int(label[2:]) / cores)} on one core"] = round(int(label[2:]) / cores)
    return out


def start_worker(kind: str = "mlp") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def summarize(cpu: dict[str, list[float]], base: str = "unthrottled",
              share: dict[str, list[float]] | None = None) -> list[dict]:
    """Per configuration: median CPU seconds, its range, the median of the per-round ratios to ``base``, and
    (``share``: each run's CPU time ÷ (wall time × its quota's share of a core)) the median share it got."""
    rows = []
    for label, vals in cpu.items():
        ratios = [v / b for v, b in zip(vals, cpu[base])]
        rows.append({"config": label, "median_ms": 1e3 * statistics.median(vals), "min_ms": 1e3 * min(vals),
                     "max_ms": 1e3 * max(vals), "ratio": statistics.median(ratios),
                     "ratio_lo": min(ratios), "ratio_hi": max(ratios),
                     "share": statistics.median(share[label]) if share else None})
    return rows


class Cgroup:
    """A cpu cgroup of our own (v1 ``cpu`` controller or v2 ``cpu.max``), removed on close."""

    def __init__(self, suffix: str = ""):
        name = f"astra-throttle-{os.getpid()}{suffix}"
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        if v2.exists() and "cpu" in v2.read_text().split():
            self.path, self.v2 = Path("/sys/fs/cgroup") / name, True
        elif Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").exists():
            self.path, self.v2 = Path("/sys/fs/cgroup/cpu") / name, False
        else:
            raise SystemExit("throttle.py: no cpu cgroup controller under /sys/fs/cgroup: run it where Mininet's "
                             "CPULimitedHost works")
        self.path.mkdir()

    def add(self, pid: int) -> None:
        (self.path / ("cgroup.procs" if self.v2 else "tasks")).write_text(str(pid))

    def limit(self, period_us: int, quota_us: int | None, burst_us: int = 0) -> None:
        burst_us = burst_us if quota_us else 0
        burst = self.path / ("cpu.max.burst" if self.v2 else "cpu.cfs_burst_us")  # kernels >= 5.14
        if not burst.exists() and burst_us:
            raise SystemExit(f"throttle.py: --burst-pct needs {burst.name}, which this kernel does not have")
        if burst.exists():
            burst.write_text("0")  # the burst may not exceed the quota being replaced
        if self.v2:
            (self.path / "cpu.max").write_text(f"{quota_us or 'max'} {period_us}")
        else:
            (self.path / "cpu.cfs_quota_us").write_text("-1")  # a period below the current quota is refused otherwise
            (self.path / "cpu.cfs_period_us").write_text(str(period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota_us or -1))
        if burst_us:
            burst.write_text(str(burst_us))

    def close(self) -> None:
        for _ in range(50):  # the worker's exit reaches the cgroup a moment later
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        print(f"throttle.py: could not remove {self.path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="2,4,8", help="device counts whose auto quota to test (comma list)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--work", type=int, default=3,
                    help="units of work per run (see --kind)")
    ap.add_argument("--kind", choices=("mlp", "attention"), default="mlp",
                    help="the work: mlp streams a ViT-Base MLP's weights from memory (~0.4 s a unit here); attention "
                         "works in the caches (12 heads, 256 queries x 1024 keys, 40 times: ~0.6 s a unit)")
    ap.add_argument("--period-us", type=int, default=DeviceOptions().cfs_period_us)
    ap.add_argument("--scaled-period", action="store_true", help="also each quota with the period scaled by k")
    ap.add_argument("--poll-idle", action="store_true",
                    help="also each config with the CPUs held in the polling idle state (harness.idle), same rounds")
    ap.add_argument("--tick", action="store_true",
                    help=f"also each config with a real-time wake-up per core every {tick.DEFAULT_US} µs "
                         "(harness.tick, device.tick_us=auto), same rounds")
    ap.add_argument("--share-core", action="store_true",
                    help="pin to one core and also run each quota beside round(N / cores) - 1 peers doing the same "
                         "work in quota groups of their own on that core, as N devices time-share this machine")
    ap.add_argument("--burst-pct", type=float, default=0.0,
                    help="let each quota group carry this %% of its quota of unused time into the next period "
                         "(the CFS burst, cpu.cfs_burst_us)")
    ap.add_argument("--keepers", action="store_true",
                    help="keep every core busy with a yielding SCHED_IDLE process (is it the cores' idling?)")
    args = ap.parse_args(argv)
    try:
        devices = [int(d) for d in args.devices.split(",")]
    except ValueError:
        ap.error(f"--devices {args.devices}: give a comma list of device counts, e.g. 2,4,8")
    if args.rounds < 1 or args.work < 1:
        ap.error("--rounds and --work must be at least 1")
    if os.geteuid() != 0:
        print("throttle.py: needs root (it creates a cpu cgroup): run it with sudo", file=sys.stderr)
        return 2
    table = configs(devices, args.period_us, args.scaled_period)
    if len(table) == 1:
        ap.error(f"--devices {args.devices}: every count fits this machine undilated (k = 1); nothing to compare")
    sharers = share_configs(table, os.cpu_count() or 1) if args.share_core else {}
    quota_of = {label: rest for label, *rest in table}
    table += [(label, *quota_of[label.split(",")[0]]) for label in sharers]  # "N=4, 2 on one core": N=4's quota
    if args.poll_idle:
        if not idle.available():
            print(f"throttle.py: --poll-idle needs {idle.QOS}, which this kernel does not offer", file=sys.stderr)
            return 2
        sharers.update({f"{label} + poll": sharers[label] for label in list(sharers)})
        table += [(f"{label} + poll", k, period, quota) for label, k, period, quota in table]
    if args.tick:
        if not tick.available():
            print("throttle.py: --tick needs cyclictest (package rt-tests) with a real-time priority",
                  file=sys.stderr)
            return 2
        sharers.update({f"{label} + tick": sharers[label] for label in list(sharers)})
        table += [(f"{label} + tick", k, period, quota) for label, k, period, quota in table]
    poll = idle.PollIdle()
    ticker = tick.Ticker(dilation.cpuset_cpus(None))
    cpu: dict[str, list[float]] = {label: [] for label, *_ in table}
    share: dict[str, list[float]] = {label: [] for label, *_ in table}
    keepers, worker, peers, peer_groups = [], None, [], []
    cg = Cgroup()
    try:  # from here on the cgroups, the workers and the keepers are removed whatever happens
        worker = start_worker(args.kind)
        for core in range(os.cpu_count() or 1) if args.keepers else ():
            keepers.append(subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", KEEPER]))
        cg.add(worker.pid)
        for i in range(max(sharers.values(), default=1) - 1):
            peer_groups.append(Cgroup(f"-peer{i + 1}"))
            peers.append(start_worker(args.kind))
            peer_groups[-1].add(peers[-1].pid)
        if sharers:
            for proc in (worker, *peers):  # the last core: all on one
                os.sched_setaffinity(proc.pid, {(os.cpu_count() or 1) - 1})
        for proc in (worker, *peers):
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("throttle.py: a torch worker did not start")
        for r in range(args.rounds):
            order = table[:]
            random.shuffle(order)
            for label, _k, period, quota in order:
                poll.open() if " + poll" in label else poll.close()
                if label.endswith(" + tick"):
                    try:
                        ticker.start()
                    except RuntimeError as exc:
                        raise SystemExit(f"throttle.py: {exc}") from None
                else:
                    ticker.close()
                busy = peers[:sharers.get(label, 1) - 1]
                burst = round(quota * args.burst_pct / 100) if quota else 0
                cg.limit(period, quota, burst)
                for group in peer_groups[:len(busy)]:
                    group.limit(period, quota, burst)
                for proc in (*busy, worker):
                    proc.stdin.write(f"{args.work}\n")
                    proc.stdin.flush()
                used, wall = map(float, worker.stdout.readline().split())
                for proc in busy:
                    proc.stdout.readline()
                if label.endswith(" + tick") and not ticker.running:
                    raise SystemExit(f"throttle.py: the ticker stopped during {label!r}")
                cpu[label].append(used)
                share[label].append(used / (wall * (quota / period if quota else 1.0)))
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    finally:
        poll.close()
        ticker.close()
        for k in keepers:  # ours, by PID
            k.kill()
            k.wait()
        for proc, group in zip((worker, *peers), (cg, *peer_groups)):
            if proc is not None:
                group.limit(args.period_us, None)
                proc.stdin.close()
                proc.wait(timeout=30)
        for group in (cg, *peer_groups):
            group.close()
    print(f"CPU time of {args.work} units of single-thread work per run, {args.rounds} shuffled rounds, "
          f"{os.cpu_count()} cores{', cores kept busy by yielding SCHED_IDLE keepers' if keepers else ''}"
          f"{', all on the last core (--share-core)' if sharers else ''}")
    print("| config | k | period us | quota us | CPU ms median [min-max] | ÷ unthrottled (per round) | share got |")
    print("|---|---|---|---|---|---|---|")
    rows = {r["config"]: r for r in summarize(cpu, share=share)}
    for label, k, period, quota in table:
        r = rows[label]
        print(f"| {label} | {k:.2f} | {period} | {quota if quota else 'none'} | {r['median_ms']:.0f} "
              f"[{r['min_ms']:.0f}-{r['max_ms']:.0f}] | {r['ratio']:.3f} [{r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}] | "
              f"{r['share']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
