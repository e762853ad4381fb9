"""Exchange benchmark (needs root + Mininet): how long a small all-gather takes right after compute on dilated devices.

ASTRA's blocks end with an all-gather of a few hundred bytes of codeword indices. On a real device it takes a round
trip; on devices that time-share this machine's cores under CFS quotas it can wait for the CPU: the last rank to
arrive may have overrun its quota (the kernel enforces it at its timer tick) and sit throttled, and a peer's woken
communication thread may wait behind the device computing on its core. This benchmark isolates that. It builds a
Mininet star of ``--hosts`` hosts with the quota and core placement ``device.dilation=auto`` and ``device.spread``
give them (idle CPUs polling where possible, as ``device.idle_poll`` does), and runs ranks that repeatedly compute
for ``--compute-ms`` of CPU (matmuls, plus a random 0-10 ms so arrivals differ) and then all-gather a 320-byte shard
with ``DistComm``'s direct exchange, once per tick setting in ``--ticks`` (``device.tick_us``; 0: the kernel's tick
alone). ``--compute-ms 0`` sleeps instead: the same exchange between idle hosts. ``--shard-bytes`` sets the shard
(320 by default); with a large one (megabytes) the last column is what moving a byte costs a device's core — the CPU
its process used in the exchange over the bytes it sent and received: the ``device.cpu_ns_per_byte`` of the
emulated hosts (``benchmarks/overlap.py`` passes it to the model).

Per setting it prints the exchange's real time from the last rank's arrival to the last rank's departure (median and
p90 over repeats), and for the last rank to arrive: how often its host's cgroup was throttled inside the exchange,
for how long on average, and the CPU its process used there.

    python benchmarks/exchange.py                         # 4 hosts, ticks 0 and 500 µs, 40 exchanges each
    python benchmarks/exchange.py --ticks 0,250,500,1000 --compute-ms 0,60
    python benchmarks/exchange.py --hosts 2 --ticks 500 --compute-ms 0 --mbps 1000 --shard-bytes 4000000 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

SHARD_FLOATS = 80  # 320 bytes: ASTRA's index shard of ViT-Base at 1024 tokens on 4 devices


def rank_main(cfg: dict) -> None:
    """One host's process: ``repeats`` rounds of compute (or sleep) then one all-gather, timed with its cgroup's
    throttling (``cpu.stat`` through a descriptor the controller passed: the host's mount namespace hides it)."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from harness.comm.collectives import DistComm
    from harness.emulation.cpustat import throttled_from_text

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=300))
    comm = DistComm("p2p")
    fd = cfg["stat_fds"][comm.rank]

    def throttled_s() -> float:
        return throttled_from_text(os.pread(fd, 4096, 0).decode()) or 0.0

    a, shard, out = torch.randn(256, 256), torch.ones(cfg["shard_floats"]), []
    rng = random.Random(comm.rank)
    try:
        comm._all_gather(shard)  # connections up before anything is timed
        for i in range(cfg["repeats"]):
            work = (cfg["compute_ms"] + rng.uniform(0, 10)) / 1e3
            if cfg["compute_ms"]:
                until = time.thread_time() + work
                while time.thread_time() < until:
                    a @ a
            else:
                time.sleep(work)
            thr0, cpu0 = throttled_s(), time.process_time()
            t0 = time.perf_counter()
            comm._all_gather(shard)
            t1 = time.perf_counter()
            out.append({"i": i, "t0": t0, "t1": t1, "throttled": throttled_s() - thr0,
                        "cpu": time.process_time() - cpu0})
        Path(cfg["out"]).write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def summarize(per_rank: list[list[dict]]) -> dict:
    """Exchange windows and the last arrival's throttling, over repeats."""
    windows, throttled, cpu = [], [], []
    for rounds in zip(*per_rank):
        last_in = max(r["t0"] for r in rounds)
        windows.append(1e3 * (max(r["t1"] for r in rounds) - last_in))
        last = max(rounds, key=lambda r: r["t0"])
        throttled.append(1e3 * last["throttled"])
        cpu.append(1e3 * last["cpu"])
    windows.sort()
    return {"median_ms": statistics.median(windows), "p90_ms": windows[int(0.9 * (len(windows) - 1))],
            "throttled_frac": sum(t > 0 for t in throttled) / len(throttled),
            "throttled_ms": statistics.mean(throttled), "cpu_ms": statistics.mean(cpu)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--ticks", default="0,500", help="device.tick_us settings to compare (comma list; 0: off)")
    ap.add_argument("--compute-ms", default="60", help="CPU ms of compute before each exchange (comma list; 0: sleep)")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--mbps", type=float, default=10.0, help="emulated link rate (shaped at rate / k)")
    ap.add_argument("--shard-bytes", type=int, default=4 * SHARD_FLOATS, help="bytes each rank contributes")
    ap.add_argument("--rank", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rank:
        rank_main(json.loads(args.rank))
        return 0
    try:
        ticks = [int(t) for t in args.ticks.split(",")]
        computes = [float(c) for c in args.compute_ms.split(",")]
    except ValueError:
        ap.error("--ticks and --compute-ms take comma lists of numbers, e.g. --ticks 0,500 --compute-ms 0,60")
    from harness.emulation import dilation, idle, tick

    if args.hosts < 2 or args.repeats < 2:
        ap.error("--hosts and --repeats must be at least 2")
    if args.shard_bytes < 4:
        ap.error("--shard-bytes must be at least 4 (one fp32 value)")
    bad = [t for t in ticks if t and not tick.MIN_US <= t <= tick.MAX_US]
    if bad or any(c < 0 for c in computes):
        ap.error(f"--ticks takes 0 (off) or {tick.MIN_US}..{tick.MAX_US} µs, --compute-ms numbers >= 0")
    if os.geteuid() != 0:
        print("exchange.py: needs root (Mininet): run it with sudo", file=sys.stderr)
        return 2

    from harness.launch import rank_env
    from harness.network.mininet.session import CGROUP_CPU, MininetOptions, open_session
    from harness.spec.schema import DeviceOptions

    if any(ticks) and not tick.available():
        print("exchange.py: ticks other than 0 need cyclictest (package rt-tests) with a real-time priority",
              file=sys.stderr)
        return 2
    dev = DeviceOptions()
    k = dilation.factor(dev, args.hosts, True)
    quota = dev.cores / k
    spread = dilation.placement([quota] * args.hosts, dilation.machine_cores())
    results, fds = [], []
    opts = MininetOptions(bandwidth_mbps=args.mbps / k, htb_burst_ms=10)
    with tempfile.TemporaryDirectory(prefix="astra-exchange-") as wd, \
            open_session("star", args.hosts, quota, 1, opts, Path(wd), workers=False, period_us=dev.cfs_period_us,
                         idle_poll=idle.available(), spread=spread) as session:
        try:
            session.apply(opts, [args.mbps / k] * args.hosts)
            fds = [os.open(f"{CGROUP_CPU}/{h.name}/cpu.stat", os.O_RDONLY) for h in session.hosts]
            for n, (compute, every) in enumerate([(c, t) for c in computes for t in ticks]):
                ticker = tick.Ticker(dilation.cpuset_cpus(None), every) if every else None
                procs = []
                try:
                    if ticker is not None:
                        try:
                            ticker.start()
                        except RuntimeError as exc:
                            raise SystemExit(f"exchange.py: {exc}") from None
                    for r, h in enumerate(session.hosts):
                        env = rank_env(r, args.hosts, session.hosts[0].IP(), 29800 + n, f"{h.name}-eth0", 1)
                        cfg = {"repeats": args.repeats, "compute_ms": compute, "stat_fds": fds,
                               "shard_floats": args.shard_bytes // 4,
                               "out": f"{wd}/r{r}-{n}.json"}
                        with open(f"{wd}/r{r}-{n}.log", "wb") as log:
                            procs.append(h.popen([sys.executable, __file__, "--rank", json.dumps(cfg)], env=env,
                                                 pass_fds=fds, stdout=log, stderr=log))
                    for r, p in enumerate(procs):
                        if p.wait(timeout=600):
                            tail = Path(f"{wd}/r{r}-{n}.log").read_text(errors="replace").strip().splitlines()
                            raise SystemExit(f"exchange.py: rank {r} failed: {tail[-1] if tail else 'no output'}")
                    if ticker is not None and not ticker.running:
                        raise SystemExit(f"exchange.py: the {every} µs ticker stopped during its measurement")
                finally:
                    for p in procs:  # ours, by handle: none outlives a failure
                        if p.poll() is None:
                            p.kill()
                            p.wait()
                    if ticker is not None:
                        ticker.close()
                per_rank = [json.loads(Path(f"{wd}/r{r}-{n}.json").read_text()) for r in range(args.hosts)]
                results.append({"compute_ms": compute, "tick_us": every, **summarize(per_rank)})
        finally:
            for fd in fds:
                os.close(fd)
    print(f"## {args.hosts} hosts, k = {k:.2f} ({quota:.3f} real cores each, spread {spread}), "
          f"{args.mbps:g} Mbit/s emulated; {4 * (args.shard_bytes // 4)}-byte all-gather, {args.repeats} repeats "
          "per row\n")
    moved = 2 * (args.hosts - 1) * 4 * (args.shard_bytes // 4)  # bytes the rank sent and received
    print("| compute before (CPU ms) | tick µs | exchange ms: median | p90 | last arrival throttled in it | "
          "its throttled ms (mean) | its CPU ms (mean) | its CPU ns per byte moved |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['compute_ms']:g} | {r['tick_us'] or 'off'} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
              f"{r['throttled_frac']:.0%} | {r['throttled_ms']:.2f} | {r['cpu_ms']:.2f} | "
              f"{1e6 * r['cpu_ms'] / moved:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
