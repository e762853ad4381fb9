"""An in-process group of N ranks on threads, for fast exactness tests of the parallel plans (torch releases the GIL
inside kernels, and each rank runs its plan in its own thread). The real gloo path is covered by the loopback tests."""

from __future__ import annotations

import threading

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
