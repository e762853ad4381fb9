"""The fidelity verdict of a point: the invariants that make an emulated measurement trustworthy, measured during
that point (after Mininet-HiFi, "Reproducible Network Experiments Using Container-Based Emulation", CoNEXT 2012,
which monitors that every host got its CPU share and every link its rate).

- ``compute_inflation``: the ranks' compute inside the emulation (each rank's time outside collectives) ÷ the same
  ranks' compute alone on the same CPU budget (the peers idle, collectives answered locally), pooled: by default
  each timed repeat is followed by one rank's solo run (``solo_paired``) and the repeats are paired with them;
  otherwise every rank runs alone after the point (``worker.solo_compute``) and medians are compared. 1.0 means
  co-running devices, the kernel's network work and the controller neither slowed the devices down nor let them
  run faster than their budget.
- ``idle_cores``: the machine's idle cores during the timed repeats (``/proc/stat`` summed over them; the least
  any rank saw; None when the repeats are too short for its 10 ms ticks). Near zero, something besides the
  devices' quotas is using the machine and the quotas can no longer be honoured.
- ``goodput_ratio``: during bulk transfers (collectives that keep a link busy for at least ``BULK_S`` at its
  rate), the bytes a host put on its link ÷ what its shaped rate (real, dilated) could carry from its arrival in
  the collective to the last rank's departure; the best host per collective, median over bulk collectives; None
  when a point moves no bulk data. Below 1: the links sat idle while the collective was still running (flows that
  finish unevenly, step latency, TCP recovering from a loss).
- ``oversubscribed``: the devices' real quotas exceed the machine.

``fidelity`` is ``ok`` or the violated invariants, ``;``-separated. A point that fails a check is still recorded.
Two more columns put the point beside its ideals: ``solo_compute_ms`` (the slowest rank's compute alone, ÷ k: the
compute-bound latency) and ``analytic_ms`` (the paper's size ÷ bandwidth formula fed with that same compute);
``analytic_wire_ms`` charges the bytes the links really carry, TCP/IP framing included (× 1514/1448): the
formula's prediction for this network, the one the emulation is held to. Two split the last timed inference's
time in collectives (÷ k): ``comm_skew_ms``, the mean time a rank waited for the last one to enter (imbalance, a
throttled or descheduled peer), and ``comm_collective_ms``, the time from the last entry to the last exit summed
over collectives (the transfers and their per-message costs) — what the formula's wire time should be held to.
"""

from __future__ import annotations

import statistics

from harness.comm.cost import TCP_FRAMING

INFLATION_TOL = 0.10  # |compute inflation - 1| above this is a violation
MIN_IDLE_CORES = 0.1  # fewer idle cores than this while timing: the machine is saturated
MIN_GOODPUT = 0.90  # a bulk transfer below this fraction of the shaped rate: the link is not what it claims
BULK_S = 0.05  # a collective is a bulk transfer when its bytes take at least this long at the link's rate


def paired(reports: list[dict]) -> list[tuple[float, float]]:
    """``solo_paired``: (compute inside the emulation, compute alone) for every repeat after which a rank ran
    alone, that rank's, seconds apart."""
    out = []
    for r in reports:
        for lat, comm, solo in zip(r["latency_s"], r["comm_s"], r.get("solo_paired_s") or []):
            if solo is not None:
                out.append((lat - comm, solo))
    return out


def compute_inflation(reports: list[dict]) -> float | None:
    """Compute inside the emulation ÷ compute alone, pooled, or None if not measured. Paired samples
    (``solo_paired``): the sum of the paired repeats' compute over the sum of their solo samples, so a drift of the
    machine's speed between the point and its reference cancels. Otherwise the sum of every rank's median compute
    over the sum of its solo medians (solo runs after the point). Pooling keeps one rank's noisy sample from
    deciding the verdict on a machine whose speed drifts by several percent from minute to minute."""
    pairs = paired(reports)
    if pairs:
        alone = sum(b for _, b in pairs)
        return sum(a for a, _ in pairs) / alone if alone > 0 else None
    inside = alone = 0.0
    for r in reports:
        solo = r.get("solo_compute_s")
        if not solo:
            return None
        inside += statistics.median(a - b for a, b in zip(r["latency_s"], r["comm_s"]))
        alone += statistics.median(solo)
    return inside / alone if reports and alone > 0 else None


def solo_medians(reports: list[dict]) -> list[float] | None:
    """Each rank's compute alone (median of its solo samples, seconds), or None if not measured. With paired
    samples a rank whose turn never came (fewer repeats than ranks) gets the median of all ranks' samples: the
    methods give every rank the same work, up to a class token or a rounding of the split."""
    if all(r.get("solo_compute_s") for r in reports):
        return [statistics.median(r["solo_compute_s"]) for r in reports] if reports else None
    pairs = paired(reports)
    if not pairs:
        return None
    pooled = statistics.median(b for _, b in pairs)
    out = []
    for r in reports:
        mine = [s for s in r.get("solo_paired_s") or [] if s is not None]
        out.append(statistics.median(mine) if mine else pooled)
    return out


def idle_cores(reports: list[dict]) -> float | None:
    vals = [r["idle_cores"] for r in reports if r.get("idle_cores") is not None]
    return min(vals) if vals else None


def goodput_ratio(reports: list[dict], link_mbps: list[float] | None) -> float | None:
    """How busy a bulk collective kept the links: median over bulk collectives of the best rank's link time (its
    interface's bytes ÷ its shaped rate) ÷ its window, which runs from the moment that rank entered the collective
    to the moment the last rank left it. A rank cannot have sent before it entered nor after the end, so the ratio
    cannot exceed 1 (beyond HTB's burst); a flow that finishes late and leaves links idle lowers it for every rank,
    the last to arrive included. Records without start times (older stores) fall back to each rank's own
    duration."""
    if not link_mbps:
        return None
    per_collective: dict[int, list[tuple]] = {}
    for r in reports:
        rate = link_mbps[r["rank"] % len(link_mbps)] * 1e6 / 8  # bytes per second
        for i, rec in enumerate(r.get("records") or []):
            if len(rec) < 5 or rec[4] is None or rec[3] <= 0:
                continue
            start = rec[5] if len(rec) > 5 else None
            per_collective.setdefault(i, []).append((rec[4] / rate, rec[3], start))
    ratios = []
    for ranks in per_collective.values():
        if max(busy for busy, _, _ in ranks) < BULK_S:
            continue
        if all(start is not None for _, _, start in ranks):
            end = max(start + took for _, took, start in ranks)
            ratios.append(max(busy / (end - start) for busy, _, start in ranks))
        else:
            ratios.append(max(busy / took for busy, took, _ in ranks))
    return statistics.median(ratios) if ratios else None


def comm_split(reports: list[dict]) -> tuple[float, float] | None:
    """Where the last timed inference's time in collectives went, in real seconds: (the mean over ranks of the time
    each waited for the last rank to enter a collective, the sum over collectives of the time from the last rank's
    entry to the last rank's exit). The first is skew between the ranks (compute imbalance, a throttled or
    descheduled peer); the second is the collective itself (transfers and per-message costs). None without start
    times or with one rank."""
    if len(reports) < 2:
        return None
    recs = [r.get("records") or [] for r in reports]
    count = len(recs[0])
    if count == 0 or any(len(rr) != count for rr in recs):
        return None
    if any(len(rec) > 6 and rec[6] is not None for rr in recs for rec in rr):
        return None  # overlapped collectives have no single entry and exit to line up
    wait, transfer = 0.0, 0.0
    for i in range(count):
        ranks = [rr[i] for rr in recs]
        if any(len(rec) < 6 or rec[5] is None for rec in ranks):
            return None
        last_in = max(rec[5] for rec in ranks)
        last_out = max(rec[5] + rec[3] for rec in ranks)
        wait += sum(last_in - rec[5] for rec in ranks) / len(ranks)
        transfer += max(0.0, last_out - last_in)
    return wait, transfer


def verdict(cols: dict) -> str:
    """``ok`` or the violated invariants of a row's fidelity columns."""
    bad = []
    infl = cols.get("compute_inflation")
    if infl is not None and abs(infl - 1) > INFLATION_TOL:
        bad.append(f"compute inflated {100 * (infl - 1):+.0f}%")
    idle = cols.get("idle_cores")
    if idle is not None and idle < MIN_IDLE_CORES:
        bad.append(f"machine saturated ({idle:.2f} idle cores)")
    good = cols.get("goodput_ratio")
    if good is not None and good < MIN_GOODPUT:
        bad.append(f"link goodput {good:.2f} of shaped rate")
    if cols.get("oversubscribed"):
        bad.append("oversubscribed")
    late = cols.get("wake_late_share")
    if late is not None and late > MAX_LATE_SHARE:
        bad.append(f"replay woke late ({100 * late:.1f}% of segments by more than {1e3 * LATE_S:g} ms or "
                   f"{100 * LATE_SHARE:g}%)")
    return "; ".join(bad) if bad else "ok"


LATE_S = 1e-3  # a replayed segment is late when its rank woke more than this after its end ...
LATE_SHARE = 0.02  # ... and more than this share of the segment
MAX_LATE_SHARE = 0.01  # a replay is flagged when more than this share of its segments were late


def wakeups(reports: list[dict]) -> dict | None:
    """A replay's wake-ups (``harness.rank.replay``): the median and 99th percentile of how late every rank woke
    after the end of each compute segment it slept through, and the share of segments late by more than 1 ms and
    2 % of the segment, and how the ranks were scheduled (``device.replay_sched``: fifo, other, or mixed where
    only some ranks got real-time priority); None for ranks that computed for real."""
    import numpy as np

    late = [x for r in reports for x in r.get("lateness_s") or ()]
    if not late:
        return None
    segs = [x for r in reports for x in r.get("segments_s") or ()]
    over = sum(1 for a, s in zip(late, segs) if a > max(LATE_S, LATE_SHARE * s))
    scheds = [r["sched"] for r in reports if "sched" in r]
    return {"wake_late_p50_ms": 1e3 * float(np.percentile(late, 50)),
            "wake_late_p99_ms": 1e3 * float(np.percentile(late, 99)), "wake_late_share": over / len(late),
            "replay_sched": (scheds[0] if len(set(scheds)) == 1 else "mixed") if scheds else None}


def solo_compute_ms(reports: list[dict]) -> float | None:
    """The slowest rank's compute alone (median of its solo runs), in real ms; None if not measured."""
    vals = solo_medians(reports)
    return 1e3 * max(vals) if vals else None


def analytic_ms(reports: list[dict], bandwidth_mbps: float | None, k: float, overhead: float = 1.0,
                cpu_ns_per_byte: float = 0.0) -> float | None:
    """The paper's cost model fed with this point's own per-rank compute: each rank's solo compute (÷ k) plus
    every collective it issued charged bits ÷ bandwidth (``network=analytic``'s ring model, 10^6 bit/s; payload
    bits × ``overhead``: 1.0 is the paper's formula, ``TCP_FRAMING`` the frames on the wire), the slowest rank.
    Beside ``latency_ms`` it shows what the emulated network adds to the formula. ``cpu_ns_per_byte``
    (``device.cpu_ns_per_byte``): the core a started transfer takes from the compute it overlaps."""
    from harness.comm.cost import blocking_seconds, charge_seconds, record_events, share_of_core, timeline

    solo = solo_medians(reports)
    if bandwidth_mbps is None or solo is None:
        return None
    share = share_of_core(cpu_ns_per_byte, bandwidth_mbps, 1e6, overhead)
    out = []
    for r, alone in zip(reports, solo):
        def charge(op, nbytes, world=r["world"]):
            return charge_seconds(op, nbytes, world, bandwidth_mbps, 1e6, "ring", overhead)

        got = None
        if any(len(rec) > 6 and rec[6] is not None for rec in r["records"]) and r.get("records_t0") is not None:
            got = record_events(r["records"], r["records_t0"], r["latency_s"][-1])
        if got is not None:  # overlapped collectives: the rank's own timeline, its compute scaled to its solo ÷ k
            events, tail = got
            scale = (alone / k) / max(sum(e[0] for e in events) + tail, 1e-12)
            latency, _, _ = timeline([[e[0] * scale, *e[1:]] for e in events], tail * scale, charge, share)
            out.append(latency)
            continue
        out.append(alone / k + blocking_seconds((charge(rec[0], rec[2]) for rec in r["records"]), share))
    return 1e3 * max(out)


def assess(reports: list[dict], oversubscribed: bool, link_mbps: list[float] | None, k: float = 1.0,
           bandwidth_mbps: float | None = None, cpu_ns_per_byte: float = 0.0) -> dict:
    """The fidelity columns of a point from its ranks' reports, the real (shaped) link rates, the dilation k, the
    (emulated) bottleneck bandwidth and the devices' CPU per byte moved (``analytic_wire_ms``'s timeline)."""
    solo = solo_compute_ms(reports)
    woke = wakeups(reports)  # a replay: how late its ranks woke, instead of how their compute was inflated
    cols = {"compute_inflation": None if woke else compute_inflation(reports), "idle_cores": idle_cores(reports),
            "goodput_ratio": goodput_ratio(reports, link_mbps), "oversubscribed": oversubscribed, **(woke or {})}
    cols["fidelity"] = verdict(cols)
    cols.pop("oversubscribed")
    cols["solo_compute_ms"] = None if solo is None else solo / k
    cols["analytic_ms"] = analytic_ms(reports, bandwidth_mbps, k)
    cols["analytic_wire_ms"] = analytic_ms(reports, bandwidth_mbps, k, TCP_FRAMING, cpu_ns_per_byte)
    split = comm_split(reports)
    cols["comm_skew_ms"] = None if split is None else 1e3 * split[0] / k
    cols["comm_collective_ms"] = None if split is None else 1e3 * split[1] / k
    return cols


def interleaved(reports: list[dict], k: float) -> dict:
    """``interleave=true``: the single-device baseline timed between the point's repeats (rank 0, peers idle) as
    ``single_interleaved_ms`` (median ÷ k), and ``speedup_interleaved``, the median over repeats of baseline ÷ the
    point's latency in the same repeat — a speedup whose two halves were measured seconds apart."""
    single = next((r.get("single_s") for r in reports if r.get("single_s")), None)
    if not single:
        return {}
    lat = [max(r["latency_s"][i] for r in reports) for i in range(len(single))]
    return {"single_interleaved_ms": 1e3 * statistics.median(single) / k,
            "speedup_interleaved": statistics.median(s / t for s, t in zip(single, lat))}
