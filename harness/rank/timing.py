"""How a rank times a point: warm-ups and timed repeats (adaptive under ``budget_s``), what is read around each
timed inference (wire bytes, CPU, run-queue wait, throttling, idle cores), the interleaved single-device baseline and
the solo samples of the compute-inflation check (each rank alone, its collectives answered locally)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from harness.comm.collectives import Comm, tx_counters
from harness.emulation.cpustat import Probe
from harness.errors import atomic_write
from harness.spec.schema import RunSpec


def tx_bytes(ifaces: list[str]) -> int:
    """Bytes sent so far on this host's interfaces (this network namespace's own sysfs)."""
    return sum(tx_counters(ifaces))


def idle_seconds() -> tuple[float, float] | None:
    """(idle + iowait, total) CPU seconds of the whole machine so far (``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK")
    return (ticks[3] + ticks[4]) / hz, sum(ticks) / hz


class Timing:
    """The warm-ups and timed repeats of one rank, and what is read around each timed inference.

    Without ``budget_s``: ``warmup`` untimed inferences, then ``repeats`` timed ones. With it (adaptive repeats),
    ranks decide together (``Comm.agree_max``) after every inference: the first inference is timed; if it took
    the whole budget it is the point's only repeat (warm-up effects are negligible at that length); otherwise it
    was a warm-up, warm-ups continue while they fit in half the budget, and timed repeats while they fit in the
    rest, at least one. The single-device baseline ignores the budget: every speedup of its sweep divides its
    latency, so it always runs ``warmup`` + ``repeats``.
    """

    def __init__(self, spec: RunSpec, comm: Comm, plan, inputs, baseline=None):
        self.spec, self.comm, self.plan, self.inputs, self.baseline = spec, comm, plan, inputs, baseline
        self.interleave = spec.interleave and comm.world > 1 and not comm.local
        # paired solo samples: one rank alone after every timed repeat (not between a stream's requests)
        self.paired = bool(spec.solo_repeats and spec.solo_paired and comm.world > 1 and not comm.local)
        self.turn = 0  # solo samples so far: whose turn it is to run alone
        self.ifaces = list(spec.wire_ifaces)
        self.probe = Probe()
        self.cols: dict[str, list] = {k: [] for k in ("latency_s", "comm_s", "hidden_s", "wire_bytes", "cpu_s",
                                                      "runqueue_wait_s",
                                                      "throttled_s", "idle_cores", "single_s", "solo_s")}
        self.records: list = []
        self.records_t0: float | None = None  # when the inference of ``records`` started (perf_counter)
        self.warmups = 0
        self.out = None
        self.starts: list[float] = []  # stream mode: each request's start, real seconds after the stream began
        self.stream_t0: float | None = None

    def timed(self, pair: bool = True) -> float:
        """One timed inference, and (``pair``) what is paired with it: the interleaved baseline, a solo sample.
        Without ``pair`` the caller decides afterwards whether the inference is kept (``paired_runs``)."""
        comm, c = self.comm, self.cols
        comm.barrier()
        comm.reset()
        tx0 = tx_bytes(self.ifaces)
        s0, m0 = self.probe.read(), idle_seconds()
        t0 = time.perf_counter()
        self.out = self.plan.forward(self.inputs)
        took = time.perf_counter() - t0
        used, m1 = self.probe.delta(s0, self.probe.read()), idle_seconds()
        c["latency_s"].append(took)
        c["comm_s"].append(comm.seconds)
        c["hidden_s"].append(comm.hidden_seconds)
        if self.ifaces:
            # Once every rank is done, every byte sent has been received, so it has left its sender's interface:
            # a rank whose collectives end while its own last sends still wait in the link's queue would otherwise
            # count them in no repeat (the next one starts its count after them).
            comm.barrier()
        c["wire_bytes"].append(tx_bytes(self.ifaces) - tx0)
        c["cpu_s"].append(used.cpu_s)
        c["runqueue_wait_s"].append(used.wait_s)
        c["throttled_s"].append(used.throttled_s)
        c["idle_cores"].append(None if m0 is None or m1 is None else (m1[0] - m0[0], m1[1] - m0[1]))
        self.records = list(comm.records)
        self.records_t0 = t0
        c["single_s"].append(None)
        c["solo_s"].append(None)
        if pair:
            self.paired_runs()
        return took

    def paired_runs(self) -> None:
        """After the last timed inference: ``interleave``'s single-device baseline and ``solo_paired``'s sample."""
        c = self.cols
        c["single_s"][-1] = self.single() if self.interleave else None
        c["solo_s"][-1] = self.solo() if self.paired else None
        self.turn += 1

    def fill_solo(self) -> None:
        """After a point's last repeat: the ranks whose turn never came (fewer repeats than ranks, e.g. a
        comm-bound point timed once within its budget) take their solo sample now, paired with that last repeat,
        so that the point's compute inflation pools every rank instead of resting on one rank's one sample."""
        c = self.cols
        while self.paired and c["solo_s"] and self.turn < self.comm.world:
            took = self.solo()
            if took is not None:
                c["solo_s"][-1] = took
            self.turn += 1

    def solo(self) -> float | None:
        """``solo_paired``: the rank whose turn it is runs its share alone (``alone``) while the others wait;
        its compute on that rank, None on the others."""
        mine = self.turn % self.comm.world == self.comm.rank
        self.comm.barrier()
        took = alone(self.comm, self.plan, self.inputs, 1)[0] if mine else None
        self.comm.barrier()
        return took

    def single(self) -> float | None:
        """``interleave``: rank 0 runs the single-device baseline alone while the others wait; its time."""
        self.comm.barrier()
        took = None
        if self.baseline is not None:
            t0 = time.perf_counter()
            self.baseline.forward(self.inputs)
            took = time.perf_counter() - t0
        self.comm.barrier()
        return took

    def untimed(self) -> float:
        self.comm.barrier()
        t0 = time.perf_counter()
        self.plan.forward(self.inputs)
        self.warmups += 1
        return time.perf_counter() - t0

    def drop_last(self) -> None:
        for v in self.cols.values():
            v.pop()

    def run(self) -> None:
        self.repeat()
        self.fill_solo()

    def repeat(self) -> None:
        """Warm-ups and timed repeats, within the budget when there is one (see the class docstring)."""
        spec, budget, agree = self.spec, self.spec.budget_s, self.comm.agree_max
        if spec.method_class.is_baseline:
            budget = None  # every speedup of the sweep divides its latency: always warmup + repeats
        if budget is None:
            for _ in range(spec.warmup):
                self.untimed()
            for _ in range(spec.repeats):
                self.timed()
            return
        start = time.perf_counter()
        first = agree(self.timed(pair=False))
        if first >= budget:
            self.paired_runs()
            return
        self.drop_last()  # it was a warm-up (nothing paired with it)
        self.warmups, last = 1, first
        while self.warmups < spec.warmup and agree(time.perf_counter() - start) + last <= budget / 2:
            last = agree(self.untimed())
        while True:
            t0 = time.perf_counter()
            self.timed()
            last = agree(time.perf_counter() - t0)  # the repeat with its interleaved baseline and solo sample
            n = len(self.cols["latency_s"])
            if n >= spec.repeats or agree(time.perf_counter() - start) + last > budget:
                return

    def run_stream(self) -> None:
        """``stream_s``: after the warm-ups, requests back to back until ``stream_real_s`` have passed. Ranks agree
        before each request whether to start it (``agree_max``: any rank past the deadline stops them all), so the
        last request may end after the deadline; the controller counts the ones served within it. Rank 0 writes
        the stream's start (CLOCK_MONOTONIC, shared by the machine's namespaces) for the controller, which changes
        the links on the trace's schedule from then on."""
        spec, comm = self.spec, self.comm
        self.paired = False  # requests back to back: the solo runs follow the stream
        for _ in range(spec.warmup):
            self.untimed()
        comm.barrier()
        t0 = self.stream_t0 = time.monotonic()
        if comm.rank == 0 and spec.stream_start_file:
            atomic_write(spec.stream_start_file, repr(t0))
        while not comm.agree_max(float(time.monotonic() - t0 >= spec.stream_real_s)):
            self.starts.append(time.monotonic() - t0)
            self.timed()

    def report(self) -> dict:
        c = self.cols
        def kept(key):
            return c[key] if c[key] and None not in c[key] else None

        idle = None
        if kept("idle_cores"):  # over all timed repeats: /proc/stat counts in ticks (10 ms), too coarse for one
            spent = [sum(x) for x in zip(*c["idle_cores"])]
            if spent[1] >= 0.5:
                idle = spent[0] / spent[1] * (os.cpu_count() or 1)
        return {"latency_s": c["latency_s"], "comm_s": c["comm_s"],
                "comm_hidden_s": c["hidden_s"],  # time started collectives transferred while the rank computed
                "records_t0": self.records_t0, "wire_bytes": c["wire_bytes"] if self.ifaces else None,
                "cpu_s": c["cpu_s"],  # process CPU time per repeat (all threads; includes collectives' own work)
                "runqueue_wait_s": kept("runqueue_wait_s"), "throttled_s": kept("throttled_s"),
                "idle_cores": idle,  # the machine's idle cores during the timed repeats (None: too short to tell)
                "single_s": kept("single_s"),  # interleave: rank 0's single-device baseline after each repeat
                # solo_paired: this rank's compute alone right after each repeat (None: another rank's turn)
                "solo_paired_s": c["solo_s"] if self.paired else None,
                "warmups": self.warmups,
                "cpus": sorted(os.sched_getaffinity(0)),  # the CPUs this rank may run on (device.pin_cores)
                **({"request_start_s": self.starts, "stream_real_s": self.spec.stream_real_s}
                   if self.stream_t0 is not None else {})}


_SOLO: dict[str, list[float]] = {}  # a persistent worker's solo measurements, by point minus network and repeats


def solo_compute(spec: RunSpec, comm: Comm, plan, inputs) -> list[float]:
    """This rank's compute alone, on its own CPU budget: ranks take turns running their plan with collectives
    answered locally (``comm.local``) while the others wait in a barrier. The reference of the compute-inflation
    check (``harness.fidelity``): compute inside the emulation ÷ compute alone. It does not depend on the network,
    so a persistent worker measures it once per point of a sweep and reuses it across bandwidths."""
    from harness.spec.identity import identity

    ident = identity(spec)
    for k in ("network", "repeats", "warmup", "verify", "budget_s"):
        ident.pop(k, None)
    key = json.dumps([ident, spec.solo_repeats, comm.rank], sort_keys=True)
    if key in _SOLO:
        return _SOLO[key]
    mine: list[float] = []
    for r in range(comm.world):
        comm.barrier()
        if r == comm.rank:  # no warm-up: the rank has just run the point with this very plan
            mine = alone(comm, plan, inputs, spec.solo_repeats)
    comm.barrier()
    _SOLO[key] = mine
    return mine


def alone(comm: Comm, plan, inputs, n: int) -> list[float]:
    """This rank's compute in ``n`` inferences of its plan run alone: its collectives answered locally
    (``comm.local``), the time they took subtracted. The caller keeps the other ranks waiting."""
    out = []
    comm.local = True
    try:
        for _ in range(n):
            comm.reset()
            t0 = time.perf_counter()
            plan.forward(inputs)
            out.append(time.perf_counter() - t0 - comm.seconds)
    finally:
        comm.local = False
        comm.reset()
    return out
