"""``network=mininet``: the ranks run inside Mininet hosts whose links are shaped with HTB, over a real TCP stack.

What it does for a point:
- builds the topology (``topologies/star.py``: star on a Linux bridge, or a full mesh of direct links; no
  controller, no Open vSwitch), with ``CPULimitedHost`` hosts holding each device's CPU budget;
- shapes every link direction with one HTB class at ``network.bandwidth_mbps``. Unlike stock Mininet (fixed 15 kB
  burst, default cburst) we set ``ceil`` = rate and ``burst`` = ``cburst`` = max(2 frames, rate × ``htb_burst_ms``):
  the small default cburst is what costs stock Mininet 5-13 % of the configured rate, and a 15 kB burst lets short
  messages through at line rate (12 ms worth at 10 Mbit/s). Under that class, small packets (pure ACKs) have a
  priority leaf of their own ahead of the data (``htb_ack_class``; ``shaping.py`` says why);
- sets reno and no slow-start-after-idle in every host (bbr is erratic under HTB);
- starts one persistent worker per host (``python -m harness.rank.worker --serve``) with the gloo environment
  (``GLOO_SOCKET_IFNAME=<host>-eth0``), sends it the point, collects its report, and reads the hosts' interface tx
  counters around every timed inference for ``wire_bytes``.

Hosts and workers stay up across the points of a sweep with the same topology, device count and CPU budget
(bandwidth changes are applied live with ``tc class change``), so Python/torch start-up is paid once per session.
Everything is torn down on every exit path: normal end, a failed or hung rank (the session is discarded), SIGINT,
SIGTERM (turned into SystemExit) and interpreter exit. All our objects carry the ``astr`` prefix (hosts ``astrh1..``,
bridge ``astrs1``, cgroups of the same names); PIDs of host shells are kept in a state file so a later run can
remove what a SIGKILLed controller left behind — by PID, after checking the process is one of ours.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import time
from pathlib import Path

from harness.emulation import dilation
from harness.emulation.dilation import check_links
from harness.errors import ConfigError
from harness.network.base import Backend, Result, register
from harness.network.mininet.conditions import TraceFollower, netem_available
from harness.network.mininet.host_state import acquire_lock  # noqa: F401
from harness.network.mininet.session import (
    MAX_BW,
    MininetOptions,
    Session,
    bandwidths,
    check_environment,
    close_session,
    current,
    keep,
)
from harness.network.mininet.trace import build as build_trace
from harness.network.mininet.trace import mean_rates

atexit.register(close_session)


@register
class MininetBackend(Backend):
    name = "mininet"
    Options = MininetOptions
    uses_topology = True
    enforces_cores = True

    @classmethod
    def identity(cls, spec) -> dict:
        ident = super().identity(spec)
        trace = ident.get("trace")
        if not trace:  # no trace: its knobs do not matter (and points stored before them keep their keys)
            for k in ("trace", "trace_states", "trace_step_s"):
                ident.pop(k, None)
        elif trace != "markov":  # a CSV trace is its content, wherever the file lies
            import hashlib

            try:
                ident["trace"] = {"csv": hashlib.sha256(Path(trace).read_bytes()).hexdigest()[:16]}
            except OSError:
                ident["trace"] = {"csv": str(trace)}
            ident.pop("trace_states")
            ident.pop("trace_step_s")
        if not ident.get("htb_ack_class") or ident.get("htb_stock"):  # one FIFO, as before the option: old keys
            ident.pop("htb_ack_class", None)
        for k in ("port", "reuse"):  # how the session is run, not what is measured
            ident.pop(k)
        return ident

    def __init__(self, spec):
        net = spec.network
        self.bw = bandwidths(net, spec.devices)
        if net.loss_pct is not None and net.loss_pct >= 100:
            raise ConfigError(f"network.loss_pct={net.loss_pct:g} would drop every packet: use a loss in [0, 100)")
        if net.loss_pct and not shutil.which("nft"):
            raise ConfigError("network.loss_pct needs nftables (nft): apt-get install nftables (scripts/setup.sh "
                              "does), or remove the option")
        impaired = {k: getattr(net, k) for k in ("delay_ms", "max_queue") if getattr(net, k) not in (None, 0)}
        if impaired and not netem_available():
            names = ", ".join(f"network.{k}={v}" for k, v in impaired.items())
            raise ConfigError(f"{names} needs the netem qdisc, which this kernel does not have: remove the option(s) "
                              "(a link must never come up different from its config) or use network=analytic")
        if net.trace and not spec.stream_s:
            raise ConfigError(f"network.trace={net.trace} changes the links during a request stream: set "
                              "stream_s=<seconds> (e.g. stream_s=60)")
        self.trace = build_trace(net, spec.devices, spec.stream_s or 0.0, spec.seed, MAX_BW) if net.trace else None
        # every rate the links will be shaped at (÷ k), which HTB must handle
        self.link_rates = self.trace.all_rates() if self.trace is not None else self.bw
        if self.trace is not None:
            self.bw = mean_rates(self.trace, spec.stream_s)  # the row's bandwidth: each host's mean over the stream
        if spec.dilation is not None and spec.method_class.communicates:
            check_links(spec.dilation, self.link_rates)
        check_environment()
        super().__init__(spec)
        self.setup_s = 0.0

    def bandwidths(self) -> list[float]:
        return self.bw

    def run(self, spec, workdir: Path) -> Result:
        acquire_lock()
        net, dev = spec.network, spec.device
        # everything the session fixes when it is built: a change of any of it builds a new one
        quotas = tuple(round(q, 6) for q in spec.quotas) if spec.quotas else round(spec.quota_cores, 6)
        pinned = dilation.pinned_cpus(dev)
        key = (spec.topology.name, spec.devices, quotas, int(dev.threads), dev.cfs_period_us,
               pinned and pinned[0], tuple(spec.cores_of_ranks or ()), spec.idle_poll, spec.tick_us, net.htb_burst_ms,
               net.htb_stock, net.htb_ack_class, net.offloads, net.delay_ms or None, net.loss_pct or None,
               net.max_queue or None, dev.compute == "replay" and dev.replay_sched == "fifo")
        self.setup_s = 0.0
        session = current(key if net.reuse else None)
        if session is None:
            sess_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"astra-mininet-{os.getpid()}-{time.monotonic_ns()}"
            sess_dir.mkdir(parents=True)
            session = keep(Session(key[0], spec.devices, list(spec.quotas) or spec.quota_cores, key[3], net,
                                   sess_dir, period_us=dev.cfs_period_us, key=key, cpus=pinned and pinned[0],
                                   idle_poll=spec.idle_poll, spread=spec.cores_of_ranks, tick_us=spec.tick_us,
                                   realtime=key[-1]))
            self.setup_s = session.setup_s
        measured: dict = {}
        try:
            k = spec.dilation
            if k is None:  # reference mode: k from this device's measured single-device latency
                single_ms = reference_single_ms(session, spec)
                k = single_ms / spec.device.reference_ms
                measured = {"dilation": k, "reference_single_real_ms": single_ms}
                if spec.method_class.communicates:
                    check_links(k, self.link_rates)
            follow = self.trace is not None and spec.method_class.communicates
            links = [b / k for b in (self.trace.rates[0] if follow else self.bw)]
            session.apply(net, links)
            follower = None
            if spec.stream_s:
                start = session.workdir / f"stream{session.jobs + 1}.start"
                spec = spec.replace(stream_real_s=spec.stream_s * k, stream_start_file=str(start))
                if follow:
                    follower = TraceFollower(session, net, self.trace, k, start, spec.stream_s)
            reports = session.run(spec, net.port, follower=follower)
        except BaseException:
            close_session()  # a failed or interrupted point leaves nothing behind
            raise
        r0 = reports[0]
        inferences = r0.get("warmups", 0) + len(r0["latency_s"]) + spec.verify
        throttled = session.throttled_per_inference_ms(inferences)
        dropped = session.dropped_per_inference(inferences)
        if not net.reuse:
            close_session()
        measured.update({"setup_s": round(self.setup_s, 3), "throttled_ms": throttled, "dropped_packets": dropped,
                         "link_real_mbps": min(links) if spec.method_class.communicates else None})
        if follower is not None:
            measured.update({"trace": self.trace.name, "trace_changes": len(follower.applied),
                             "trace_lag_ms": max((1e3 * lag for _, lag, _ in follower.applied), default=None)})
            # the links changed under the collectives: no single shaped rate to hold goodput against
            return Result(reports, measured, None, self.trace)
        return Result(reports, measured, links if spec.method_class.communicates else None)


_REFERENCE: dict[str, float] = {}  # single-device real latency (ms) on a quota, per model/input/quota


def reference_single_ms(session: Session, spec) -> float:
    """The real single-device latency of ``spec``'s model and inputs on one host of ``session`` (its quota), in
    ms: median of 3 timed inferences after one warm-up. Measured once per model, inputs and quota."""
    from harness.parallel import METHODS

    single = next(n for n, cls in METHODS.items() if cls.is_baseline)
    calib = spec.replace(method=METHODS[single].Options(name=single), devices=1, warmup=1, repeats=3, verify=False,
                         budget_s=None, solo_repeats=0, fault=type(spec.fault)(), outputs_dir=None, dilation=1.0,
                         stream_s=None)
    key = json.dumps([spec.model.to_dict(), spec.tokens, spec.batch, spec.seed, spec.device.threads,
                      round(spec.quota_cores, 6), spec.device.cfs_period_us, spec.device.pin_cores, spec.idle_poll,
                      spec.tick_us,
                      spec.model_state,
                      spec.inputs_path],
                     sort_keys=True, default=str)
    if key not in _REFERENCE:
        rep = session.run(calib, spec.network.port, ranks=1)[0]
        _REFERENCE[key] = 1e3 * sorted(rep["latency_s"])[1]
    return _REFERENCE[key]
