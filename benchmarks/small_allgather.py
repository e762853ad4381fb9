"""How long a small all-gather takes between sleeping ranks (what a replayed ASTRA layer does), on loopback:

    python benchmarks/small_allgather.py [--devices 4,8,16,32] [--impls p2p,bruck] [--sched other,fifo]
                                         [--sleep-ms 3] [--bytes 320] [--repeats 200]

N gloo processes each sleep ``--sleep-ms`` (±5 %, so they arrive unevenly, as replayed ranks do), then all-gather
``--bytes`` through ``DistComm`` (``collectives=<impl>``), ``--repeats`` times after 20 warm-ups; rank 0's median and
90th percentile per setting. ``--sched fifo`` runs the ranks, and the gloo threads they start, at SCHED_FIFO priority 1
(root), as ``device.replay_sched=fifo`` does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.multiprocessing as mp

from harness.launch import free_port


def _rank(rank: int, world: int, port: int, impl: str, sched: str, sleep_ms: float, nbytes: int, repeats: int,
          out) -> None:
    import torch.distributed as dist

    from harness.comm.collectives import DistComm
    from harness.rank.worker import realtime

    if sched == "fifo" and not realtime(True):
        raise SystemExit("--sched fifo needs root")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        comm = DistComm(impl)
        t = torch.zeros(nbytes, dtype=torch.uint8)
        for _ in range(20):
            comm.all_gather(t)
        dist.barrier()
        took = []
        for i in range(repeats):
            time.sleep(sleep_ms / 1e3 * (1 + 0.05 * ((i + rank) % 3)))
            t0 = time.perf_counter()
            comm.all_gather(t)
            took.append(time.perf_counter() - t0)
        if rank == 0:
            out[(impl, sched)] = sorted(took)
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="4,8,16,32")
    ap.add_argument("--impls", default="p2p,bruck")
    ap.add_argument("--sched", default="other,fifo")
    ap.add_argument("--sleep-ms", type=float, default=3.0)
    ap.add_argument("--bytes", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    print("| devices | collectives | scheduling | median ms | p90 ms |\n|---|---|---|---|---|")
    for n in (int(x) for x in args.devices.split(",")):
        for sched in args.sched.split(","):
            for impl in args.impls.split(","):
                with mp.Manager() as manager:
                    out = manager.dict()
                    mp.start_processes(_rank, args=(n, free_port(), impl, sched, args.sleep_ms, args.bytes,
                                                    args.repeats, out), nprocs=n, start_method="spawn")
                    took = out[(impl, sched)]
                print(f"| {n} | {impl} | {sched} | {1e3 * statistics.median(took):.2f} | "
                      f"{1e3 * took[int(0.9 * len(took))]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
