"""``network=analytic``: the paper's own methodology, with our real compute.

Each rank's compute is measured for real in a fresh process (``harness.profile``: the rank runs its actual plan;
collectives are answered locally), with the device's thread budget — all ranks at once when the machine has the
cores (so co-located devices contend for memory as they do on Mininet), one at a time when it does not. Communication is charged as
bits ÷ bandwidth for every collective the rank issued, and added to compute — with no overlap for the collectives a
rank waits for, while a collective a method starts and waits for later (``ring_attn``, ``galaxy``) runs during the
compute up to its wait, on a link that carries one transfer at a time (``harness.comm.cost.timeline``: per tile or
ring step the longer of compute and transfer, plus the pipeline's fill and drain):

- ``collective_model=ring`` (default): a ring all-gather sends (N-1) shards per rank, a ring all-reduce
  2(N-1)/N of the tensor, an all-to-all the (N-1)/N of its input meant for others; on a star every host has its own link, so these run in parallel across hosts and the
  slowest link (the smallest bandwidth) sets the pace.
- ``collective_model=paper``: what the paper's simulator appears to charge (the paper's latency model): one send of the rank's
  own payload per collective (all-gather: its shard; all-reduce: 1/N of the tensor; all-to-all: its input).

``compute=predicted`` takes each rank's compute from the multiply-adds its own code does (``harness.rank.work``)
at the paper's device speed — one parameter, the paper's single device at 1024 tokens (111.5 ms) over our single
device's multiply-adds — and charges the collectives the method predicts (``Method.traffic``) without running
anything: a prediction of the paper's figures. ``compute=fitted`` takes instead the compute that best fits each of
the paper's curves (``results/paper/compute_profile.csv``, ``harness.network.paper``: 54 values fitted to 260
cells), which checks the traffic accounting, not the compute. Both only for the paper's latency model (ViT-Base
shape); ``fitted`` only at the points the figures cover.

``mbps_unit`` is 10^6 bit/s by default (the paper appears to use 2^20). ``wire_overhead`` scales payload bits to
account for framing (1.0 = none, as in the paper). No root needed; any number of devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.comm.cost import blocking_seconds, charge_seconds, overlapped, share_of_core
from harness.errors import ConfigError, atomic_write
from harness.launch import REPO_ROOT, ProcessHandle, rank_env, read_reports, stop_processes, supervise
from harness.network.base import Backend, Result, ShapedOptions, device_bandwidths, register
from harness.options import opt


@dataclass
class AnalyticOptions(ShapedOptions):
    name: str = opt("analytic", "the backend")
    mbps_unit: float = opt(1e6, "bit/s per Mbps; the paper's simulator appears to use 1048576 (2^20)", above=0)
    collective_model: str = opt("ring", "ring: ring all-gather (N-1)/N x total, all-reduce 2(N-1)/N x size per "
                                "rank; paper: one send of the rank's own payload per collective",
                                choices=("ring", "paper"))
    wire_overhead: float = opt(1.0, "multiply payload bits by this (e.g. 1.046 for TCP/IPv4/Ethernet framing)",
                               above=0)
    compute: str = opt("measured", "measured: profile each rank's compute on this machine; predicted: each rank's "
                       "multiply-adds at the paper's device speed (1 parameter, from its single device), nothing run; "
                       "fitted: the per-device compute that fits each of the paper's curves "
                       "(results/paper/compute_profile.csv), a consistency check of the traffic accounting",
                       choices=("measured", "predicted", "fitted"))


def paper_compute_ms(spec) -> float:
    from harness.network.paper import compute_ms

    o = spec.method
    return compute_ms(o.name, getattr(o, "groups", None), getattr(o, "retained", None), spec.devices, spec.tokens)


_PROFILES: dict[str, list[dict]] = {}  # rank reports of profiled points, by point identity without the network


@register
class AnalyticBackend(Backend):
    name = "analytic"
    Options = AnalyticOptions
    emulates = False  # compute is profiled and communication is a formula

    def __init__(self, spec):
        super().__init__(spec)
        if spec.stream_s:
            raise ConfigError(f"stream_s={spec.stream_s:g} runs requests back to back, which needs ranks that really "
                              "run: use network=mininet or network=loopback")
        self.bw = device_bandwidths(spec.network.bandwidth_mbps, spec.devices)
        self.budget = {**self.budget, "oversubscribed": False}  # ranks are profiled, never co-scheduled over cores
        self.runs_ranks = spec.network.compute == "measured" and spec.device.compute == "real"
        mode = spec.network.compute
        if spec.device.compute == "replay" and mode != "measured":
            raise ConfigError(f"network.compute={mode} and device.compute=replay both give the compute: use one")
        self.reused = False
        if mode in ("fitted", "predicted"):
            if getattr(spec.method_class, "overlaps", False):
                raise ConfigError(f"network.compute={mode} is the paper's latency model, which knows no overlap of "
                                  f"communication with compute; method={spec.method.name} overlaps them: use "
                                  "network.compute=measured")
            m = spec.model
            if (m.kind, m.layers, m.hidden) != ("vit", 12, 768):
                raise ConfigError(f"network.compute={mode} is the paper's latency model (a 12-layer, 768-wide ViT); "
                                  f"model={m.name} is {m.kind} {m.layers}x{m.hidden}: use model=vit_base or "
                                  "network.compute=measured")
            if spec.batch != 1:
                raise ConfigError(f"network.compute={mode} times one request (batch 1), not batch={spec.batch}: "
                                  "drop batch or use network.compute=measured")
            if mode == "fitted":
                self.paper_compute_s = [1e-3 * paper_compute_ms(spec)] * spec.devices
            else:
                from harness.network.paper import predicted_compute_ms

                self.paper_compute_s = [1e-3 * ms for ms in predicted_compute_ms(spec)]

    def bandwidths(self) -> list[float]:
        return self.bw

    @classmethod
    def identity(cls, spec) -> dict:
        ident = super().identity(spec)
        if spec.device.cpu_ns_per_byte:  # absent when 0: older keys stay valid
            ident["cpu_ns_per_byte"] = spec.device.cpu_ns_per_byte
        if spec.network.compute == "fitted":  # a re-derived profile is a different measurement
            import hashlib

            from harness.network.paper import PROFILE

            ident["compute_profile_sha"] = hashlib.sha256(PROFILE.read_bytes()).hexdigest()[:16] if PROFILE.is_file() \
                else None
        return ident

    @classmethod
    def identity_alone(cls, spec) -> dict:
        """A single device's compute differs between the sources of compute (absent when measured: older keys stay
        valid)."""
        ident = super().identity_alone(spec)
        if spec.network.compute != "measured":
            ident["compute"] = spec.network.compute
            if spec.network.compute == "fitted":
                ident["compute_profile_sha"] = cls.identity(spec).get("compute_profile_sha")
        return ident

    def cached_profile(self, spec, workdir: Path) -> list[dict]:
        """``profile``, measured once per point minus its network in this process: the ranks' compute does not
        depend on the bandwidth, so the points of a bandwidth sweep share one measurement and the curve shows no
        machine noise as a bandwidth effect. The row says whether its profile was reused."""
        import dataclasses

        point = dataclasses.asdict(spec)
        for k in ("network", "config", "results", "fault", "tracking", "outputs_dir", "timeout_s"):  # not profiled
            point.pop(k)
        key = json.dumps(point, sort_keys=True, default=str)
        self.reused = key in _PROFILES
        if not self.reused:
            _PROFILES[key] = self.profile(spec, workdir)
        return _PROFILES[key]

    def profile(self, spec, workdir: Path) -> list[dict]:
        """Every rank's report, measured in fresh worker-like processes (``python -m harness.profile``). When the
        machine has the cores for all ranks' threads, the ranks are profiled at the same time, one process each, so
        they contend for memory and caches as real co-located devices do; otherwise one at a time, in one process."""
        world, threads = spec.devices, spec.device.threads
        spec_path = atomic_write(workdir / "spec.json", spec.to_json())
        together = world * threads <= (os.cpu_count() or 1)
        groups = [[r] for r in range(world)] if together else [list(range(world))]
        procs, logs, outs, names = [], [], [], []
        env = rank_env(0, 1, "127.0.0.1", 0, "lo", threads)
        try:
            for i, ranks in enumerate(groups):
                logs.append(workdir / f"profile{i}.log")
                outs.append(workdir / f"profile{i}.json")
                names.append(f"rank {ranks[0]}" if len(ranks) == 1 else f"profiling of ranks {ranks}")
                with open(logs[-1], "wb") as fh:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "harness.rank.profile", "--spec", str(spec_path), "--report", str(outs[-1]),
                         "--ranks", ",".join(map(str, ranks))],
                        env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT))
            handles = [ProcessHandle(n, p, lg) for n, p, lg in zip(names, procs, logs)]
            supervise(handles, spec.timeout_s * (1 if together else world))
        finally:
            stop_processes(procs)
        reports = [rep for group in read_reports(outs, logs, names) for rep in group]
        return sorted(reports, key=lambda r: r["rank"])

    def paper_reports(self, spec) -> list[dict]:
        """Rank reports as the paper's simulator would time them: the fitted or predicted compute of each rank, and
        the collectives the method issues (predicted from shapes), answered in no time."""
        out = []
        for r in range(spec.devices):
            records = [[op, tag, nbytes, 0.0, None] for op, tag, nbytes in spec.method_class.traffic(spec, r)]
            out.append({"rank": r, "world": spec.devices, "latency_s": [self.paper_compute_s[r]], "comm_s": [0.0],
                        "records": records, "payload_bytes": sum(rec[2] for rec in records), "max_abs_err": None,
                        "wire_bytes": None, "warmups": 0})
        return out

    def run(self, spec, workdir: Path) -> Result:
        net, world = spec.network, spec.devices
        out = []
        if spec.device.compute == "replay":  # the same profile a replay would sleep through
            from harness.comm.profile import load, reports as profile_reports

            reports = profile_reports(load(spec.profile_path))
        else:
            reports = self.cached_profile(spec, workdir) if self.runs_ranks else self.paper_reports(spec)
        for rep in reports:
            r = rep["rank"]
            bw = min(self.bw) if net.collective_model == "ring" else self.bw[r % len(self.bw)]

            def charge(op, nbytes, bw=bw):
                return charge_seconds(op, nbytes, world, bw, net.mbps_unit, net.collective_model, net.wire_overhead)

            compute = [a - c for a, c in zip(rep["latency_s"], rep["comm_s"])]
            share = share_of_core(spec.device.cpu_ns_per_byte, bw, net.mbps_unit, net.wire_overhead)
            comm, hidden = overlapped(rep, charge, share)
            if comm is None:  # every collective blocks: compute + the sum of the charges, the paper's model
                comm = blocking_seconds((charge(op, b) for op, _tag, b, *_ in rep["records"]), share)
                hidden = 0.0
            out.append({**rep, "latency_s": [c + comm for c in compute], "comm_s": [comm] * len(compute),
                        "comm_hidden_s": [hidden] * len(compute)})
        replay = spec.device.compute == "replay"
        return Result(out, {"profile_reused": self.reused if self.runs_ranks and not replay else None,
                            "compute_source": "profile" if replay else net.compute})
