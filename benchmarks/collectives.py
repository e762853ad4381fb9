"""Collectives benchmark (needs root + Mininet): how busy each collective implementation keeps the emulated links.

Builds a star of ``--hosts`` Mininet hosts (HTB-shaped as in ``network=mininet``, 10 ms burst, reno, CPU quotas as
for one-core devices dilated to fit), starts one gloo process per host and times ``DistComm``'s all-gather and
all-reduce for every implementation (``p2p``, ``ring``, ``auto``, ``gloo``), message size and link rate, alternating
the implementations so that drift hits them alike. Prints, per cell, the median time over repeats (the slowest
rank's) and the efficiency: the bytes each rank must send ((N-1) shards for an all-gather, 2(N-1)/N of the tensor
for an all-reduce), framed as TCP/IP frames (1514 bytes per 1448 of payload), ÷ what the link carries in that time.
1.0 means the link never idled and nothing but framing was added.

    python benchmarks/collectives.py                               # 4 hosts, 100 and 10 Mbit/s dilated by 2.29
    python benchmarks/collectives.py --hosts 8 --rates 21.9 --impls p2p,ring
    python benchmarks/collectives.py --rates 4.37 --impls ring --queues ack,fifo   # the ACK class against one FIFO
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

FRAME = 1514 / 1448  # wire bytes per payload byte of full-size TCP segments (timestamps on)


def rank_main(cfg: dict) -> None:
    """One host's process: every (impl, op, size) cell ``repeats`` times, implementations interleaved."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from harness.comm.collectives import DistComm

    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=cfg["timeout_s"]))
    try:
        comms = {impl: DistComm(impl) for impl in cfg["impls"]}
        out = []
        for op, nbytes in cfg["ops"]:
            t = torch.ones(nbytes // 4)
            for rep in range(cfg["repeats"] + 1):  # the first round warms the connections up
                for impl, comm in comms.items():
                    dist.barrier()
                    t0 = time.perf_counter()
                    if op == "all_gather":
                        comm._all_gather(t)
                    else:
                        comm._all_reduce(t.clone())
                    if rep:
                        out.append({"impl": impl, "op": op, "bytes": nbytes, "rep": rep,
                                    "s": time.perf_counter() - t0})
        Path(cfg["out"]).write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def sent_bytes(op: str, nbytes: int, n: int) -> float:
    return (n - 1) * nbytes if op == "all_gather" else 2 * (n - 1) / n * nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--rates", default="43.7,4.37", help="real link rates, Mbit/s (emulated rate ÷ dilation)")
    ap.add_argument("--impls", default="p2p,ring,auto,gloo")
    ap.add_argument("--ops", default="all_gather:320,all_gather:65536,all_gather:786432,all_reduce:196608,"
                                     "all_reduce:3145728",
                    help="op:bytes (an all-gather's shard, an all-reduce's tensor); the defaults are ASTRA's index "
                         "shard, SP's and TP's messages of ViT-Base at 1024 tokens on 4 devices, and smaller ones")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--queues", default="ack", help="the hosts' queueing, one session each, alternated per rate: ack "
                                                    "(small packets in a priority class, network=mininet's default), "
                                                    "fifo (one FIFO per link direction), or ack,fifo")
    ap.add_argument("--cores", type=float, default=None, help="each host's real CPU quota (default: fit the hosts "
                                                             "in the machine minus 0.25 cores)")
    ap.add_argument("--rank", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank:
        rank_main(json.loads(args.rank))
        return

    import os

    import pandas as pd

    from harness.launch import rank_env
    from harness.network.mininet.session import MininetOptions, open_session

    n = args.hosts
    rates = [float(x) for x in args.rates.split(",")]
    ops = [(o.split(":")[0], int(o.split(":")[1])) for o in args.ops.split(",")]
    impls = args.impls.split(",")
    cores = args.cores or min(1.0, ((os.cpu_count() or 1) - 0.25) / n)
    queues = args.queues.split(",")
    if not set(queues) <= {"ack", "fifo"}:
        raise SystemExit(f"--queues {args.queues}: give ack, fifo or ack,fifo")
    rows = []
    for i, bw in enumerate(rates):
        for q, queue in enumerate(queues):  # alternated per rate, so that drift hits both alike
            opts = MininetOptions(bandwidth_mbps=bw, htb_burst_ms=10, htb_ack_class=queue == "ack")
            with tempfile.TemporaryDirectory(prefix="astra-collectives-") as wd, \
                    open_session("star", n, cores, 1, opts, Path(wd), workers=False) as session:
                procs = []
                for r, h in enumerate(session.hosts):
                    env = rank_env(r, n, session.hosts[0].IP(), 29700 + 2 * i + q, f"{h.name}-eth0", 1)
                    cfg = {"impls": impls, "ops": ops, "repeats": args.repeats, "out": f"{wd}/r{r}.json",
                           "timeout_s": 900}
                    procs.append(h.popen([sys.executable, __file__, "--rank", json.dumps(cfg)], env=env))
                for p in procs:  # ours, by handle
                    try:
                        p.wait(timeout=1800)
                    except Exception:
                        p.kill()
                        p.wait()
                        raise
                for r in range(n):
                    rows += [dict(x, rank=r, mbps=bw, queue=queue)
                             for x in json.loads(Path(f"{wd}/r{r}.json").read_text())]
    df = pd.DataFrame(rows).groupby(["mbps", "queue", "op", "bytes", "impl", "rep"], as_index=False)["s"].max()
    df["efficiency"] = [sent_bytes(o, b, n) * FRAME / (m * 1e6 / 8) / s
                        for o, b, m, s in zip(df.op, df.bytes, df.mbps, df.s)]
    cells = df.groupby(["mbps", "queue", "op", "bytes", "impl"]).agg(
        ms=("s", lambda s: 1e3 * statistics.median(s)), efficiency=("efficiency", "median"),
        eff_min=("efficiency", "min"), eff_max=("efficiency", "max")).reset_index()
    print(f"## {n} hosts, star; efficiency = framed bytes each rank sends ÷ (link rate × time), median "
          f"[min, max] of {args.repeats}\n")
    cells["cell"] = [f"{e:.3f} [{lo:.2f}, {hi:.2f}] ({ms:.0f} ms)"
                     for e, lo, hi, ms in zip(cells.efficiency, cells.eff_min, cells.eff_max, cells.ms)]
    print(cells.pivot(index=["mbps", "op", "bytes", "queue"], columns="impl", values="cell").to_markdown())


if __name__ == "__main__":
    main()
