"""Measure one rank's compute alone: the rank runs its real plan in this process with ``SimulatedComm``
(collectives return local copies), so its wall time is its compute time. Used by the compute benchmark and by
backends that charge communication analytically."""

from __future__ import annotations

from harness.comm.collectives import SimulatedComm
from harness.rank.worker import run_rank


def profile_ranks(spec, ranks: list[int] | None = None) -> list[dict]:
    """Reports (as ``worker.run_rank`` returns them) for the given ranks of ``spec``, measured one at a time.

    ``latency_s - comm_s`` per repeat is the rank's compute time; ``comm_s`` here is only the time to copy the
    simulated shards, and ``payload_bytes`` is exactly what the real rank would hand to its collectives.
    """
    from harness.spec.schema import FaultOptions

    world = spec.devices
    spec = spec.replace(verify=False, fault=FaultOptions(), solo_repeats=0, budget_s=None, interleave=False)
    return [run_rank(spec, SimulatedComm(r, world)) for r in (ranks if ranks is not None else range(world))]


def compute_ms(report: dict) -> float:
    """Median compute time of a profiled rank, in ms."""
    vals = sorted(a - b for a, b in zip(report["latency_s"], report["comm_s"]))
    return 1e3 * vals[len(vals) // 2]


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.profile --spec S --report R``: profile every rank of a spec in a fresh process (so the
    thread budget and allocator state are those of a real worker), one rank at a time; write the reports."""
    import argparse
    import json
    from pathlib import Path

    from harness.errors import atomic_write
    from harness.spec.schema import RunSpec

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--ranks", default=None, help="comma-separated ranks to profile (default: all)")
    args = ap.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")] if args.ranks else None
    reports = profile_ranks(RunSpec.from_json(Path(args.spec).read_text()), ranks)
    atomic_write(args.report, json.dumps(reports))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
