"""An in-process group of N ranks on threads, for fast exactness tests of the parallel plans (torch releases the GIL
inside kernels, and each rank runs its plan in its own thread); and ``run_gloo``, which starts N gloo ranks on
loopback for the tests of the real collectives."""

from __future__ import annotations

import copy
import socket
import threading
import time

import torch

from harness.comm.collectives import Comm


class ThreadGroup:
    def __init__(self, world: int):
        self.world = world
        self.barrier = threading.Barrier(world, timeout=60)
        self.slots: list[torch.Tensor | None] = [None] * world


class ThreadComm(Comm):
    def __init__(self, group: ThreadGroup, rank: int):
        super().__init__(rank, group.world)
        self.group = group

    def _exchange(self, t: torch.Tensor) -> list[torch.Tensor]:
        g = self.group
        g.barrier.wait()
        g.slots[self.rank] = t.clone()
        g.barrier.wait()
        out = list(g.slots)
        g.barrier.wait()
        return out

    def _all_gather(self, t):
        return self._exchange(t)

    def _all_reduce(self, t):
        parts = self._exchange(t)
        t.copy_(torch.stack(parts).sum(0))

    def _all_to_all(self, parts, recv_shapes):
        g = self.group
        g.barrier.wait()
        g.slots[self.rank] = [p.clone() for p in parts]
        g.barrier.wait()
        out = [g.slots[j][self.rank] for j in range(self.world)]
        g.barrier.wait()
        return out

    def barrier(self):
        self.group.barrier.wait()


def run_ranks(world: int, fn):
    """Run ``fn(comm)`` on ``world`` threads; return the per-rank results (re-raising the first error)."""
    group = ThreadGroup(world)
    results: list = [None] * world
    errors: list = []

    def target(r):
        try:
            results[r] = fn(ThreadComm(group, r))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    if errors:
        raise errors[0]
    return results


def run_method(model, inputs, method, world, opts=None, all_positions=True):
    """Run ``method`` on ``world`` thread ranks; return per-rank (Output, plan, records)."""
    from harness.parallel import METHODS

    def fn(comm):
        plan = METHODS[method](copy.deepcopy(model), comm, opts or {})
        comm.reset()
        out = plan.forward(inputs, all_positions=all_positions)
        return out, plan, list(comm.records)

    return run_ranks(world, fn)


def max_err(results, ref):
    """The largest difference of any rank's output (``run_method``'s results) from the single-device ``ref``."""
    errs = [(o.logits - p.reference_slice(ref, o)).abs().max().item() for o, p, _ in results if o.logits is not None]
    assert errs, "no rank produced an output"
    return max(errs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gloo(rank_fn, world: int, timeout_s: float = 120) -> dict:
    """Start ``rank_fn(rank, world, port, results)`` in ``world`` spawned processes (which join a gloo group on
    loopback at ``port`` and put what they found in ``results[rank]``); return the results. Processes still alive
    at the end are ours and are killed by handle."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        ctx = mp.start_processes(rank_fn, args=(world, free_port(), results), nprocs=world, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=5):  # True once every rank exited cleanly (raises if one failed)
                assert time.monotonic() < deadline, "ranks did not finish"
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        return dict(results)
