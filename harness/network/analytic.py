"""``network=analytic``: the paper's own methodology, with our real compute.

Each rank's compute is measured for real in a fresh process (``harness.profile``: the rank runs its actual plan;
collectives are answered locally), with the device's thread budget — all ranks at once when the machine has the
cores (so co-located devices contend for memory as they do on Mininet), one at a time when it does not. Communication is charged as
bits ÷ bandwidth for every collective the rank issued, and added to compute with no overlap:

- ``collective_model=ring`` (default): a ring all-gather sends (N-1) shards per rank, a ring all-reduce
  2(N-1)/N of the tensor; on a star every host has its own link, so these run in parallel across hosts and the
  slowest link (the smallest bandwidth) sets the pace.
- ``collective_model=paper``: what the paper's simulator appears to charge (paper.md §5.2): one send of the rank's
  own payload per collective (all-gather: its shard; all-reduce: 1/N of the tensor).

``mbps_unit`` is 10^6 bit/s by default (the paper appears to use 2^20). ``wire_overhead`` scales payload bits to
account for framing (1.0 = none, as in the paper). No root needed; any number of devices.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, bandwidth_columns, cpu_budget, effective_devices, parse_bandwidths


def charge_seconds(op: str, nbytes: int, world: int, bw_mbps: float, unit: float, model: str, overhead: float) -> float:
    if world <= 1 or nbytes == 0:
        return 0.0
    if model == "paper":
        volume = nbytes if op == "all_gather" else nbytes / world
    elif op == "all_gather":
        volume = (world - 1) * nbytes
    else:
        volume = 2 * (world - 1) / world * nbytes
    return volume * 8 * overhead / (bw_mbps * unit)


class AnalyticBackend:
    name = "analytic"

    def __init__(self, cfg):
        net = cfg.network
        self.n = effective_devices(cfg)
        self.bw = parse_bandwidths(net.bandwidth_mbps, self.n)
        self.unit = float(net.get("mbps_unit", 1e6))
        self.model = str(net.get("collective_model", "ring"))
        if self.model not in ("ring", "paper"):
            raise ConfigError(f"network.collective_model={self.model} is unknown: use ring or paper")
        self.overhead = float(net.get("wire_overhead", 1.0))
        if self.unit <= 0 or self.overhead <= 0:
            raise ConfigError("network.mbps_unit and network.wire_overhead must be > 0")
        self.budget = {**cpu_budget(cfg, enforced_cores=False), "oversubscribed": False}

    def describe(self) -> dict:
        return {"network": self.name, **bandwidth_columns(self.bw, self.n), "wire_bytes": None, **self.budget}

    def profile(self, spec: dict, workdir: Path) -> list[dict]:
        """Every rank's report, measured in fresh worker-like processes (``python -m harness.profile``). When the
        machine has the cores for all ranks' threads, the ranks are profiled at the same time, one process each, so
        they contend for memory and caches as real co-located devices do; otherwise one at a time."""
        import json
        import os
        import subprocess
        import sys

        from .loopback import REPO_ROOT, STARTUP_GRACE_S, RunFailed, last_error_line, rank_env, stop_processes

        world, threads = int(spec["devices"]), int(spec["threads"])
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        groups = [list(range(world))] if world * threads > (os.cpu_count() or 1) else [[r] for r in range(world)]
        procs, logs, outs = [], [], []
        env = rank_env(0, 1, "127.0.0.1", 0, "lo", threads)
        try:
            for i, ranks in enumerate(groups):
                logs.append(workdir / f"profile{i}.log")
                outs.append(workdir / f"profile{i}.json")
                with open(logs[-1], "wb") as fh:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "harness.profile", "--spec", str(spec_path), "--report", str(outs[-1]),
                         "--ranks", ",".join(map(str, ranks))],
                        env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT))
            per_process = float(spec["timeout_s"]) * (world if len(groups) == 1 else 1) + STARTUP_GRACE_S
            for p, log in zip(procs, logs):
                try:
                    code = p.wait(timeout=per_process)
                except subprocess.TimeoutExpired:
                    raise RunFailed(f"profiling did not finish within timeout_s={spec['timeout_s']:g} per rank") from None
                if code != 0:
                    raise RunFailed(f"profiling failed (exit code {code}): {last_error_line(log)}")
        finally:
            stop_processes(procs)
        reports = [rep for out in outs for rep in json.loads(out.read_text())]
        return sorted(reports, key=lambda r: r["rank"])

    def run(self, spec: dict, workdir: Path) -> list[dict]:
        world = int(spec["devices"])
        out = []
        for rep in self.profile(spec, workdir):
            r = rep["rank"]
            bw = min(self.bw) if self.model == "ring" else self.bw[r % len(self.bw)]
            comm = sum(charge_seconds(op, b, world, bw, self.unit, self.model, self.overhead)
                       for op, _tag, b in rep["records"])
            compute = [a - c for a, c in zip(rep["latency_s"], rep["comm_s"])]
            out.append({**rep, "latency_s": [c + comm for c in compute], "comm_s": [comm] * len(compute)})
        return out
