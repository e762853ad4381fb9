"""Measure one rank's compute alone: the rank runs its real plan in this process with ``SimulatedComm``
(collectives return local copies), so its wall time is its compute time. Used by the compute benchmark and by
backends that charge communication analytically."""

from __future__ import annotations

from .comm import SimulatedComm
from .worker import run_rank


def profile_ranks(spec: dict, ranks: list[int] | None = None) -> list[dict]:
    """Reports (as ``worker.run_rank`` returns them) for the given ranks of ``spec``, measured one at a time.

    ``latency_s - comm_s`` per repeat is the rank's compute time; ``comm_s`` here is only the time to copy the
    simulated shards, and ``payload_bytes`` is exactly what the real rank would hand to its collectives.
    """
    world = int(spec["devices"])
    spec = {**spec, "verify": False, "fault": {}}
    return [run_rank(spec, SimulatedComm(r, world)) for r in (ranks if ranks is not None else range(world))]


def compute_ms(report: dict) -> float:
    """Median compute time of a profiled rank, in ms."""
    vals = sorted(a - b for a, b in zip(report["latency_s"], report["comm_s"]))
    return 1e3 * vals[len(vals) // 2]
