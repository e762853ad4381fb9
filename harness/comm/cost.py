"""What a collective costs on a link, as the paper's simulator charges it (bits ÷ bandwidth), and a rank's timeline
when some collectives overlap its compute: the analytic backend's network model and the fidelity verdict's
expectation for an emulated point."""

from __future__ import annotations

from collections.abc import Callable

TCP_FRAMING = 1514 / 1448  # link bytes per payload byte in full-size TCP/IPv4 segments (timestamps on) in Ethernet
# frames: what HTB counts against a link's rate


def charge_seconds(op: str, nbytes: int, world: int, bw_mbps: float, unit: float, model: str, overhead: float) -> float:
    """Seconds a collective of ``nbytes`` payload (as ``Comm`` records it) keeps a rank's link busy. ``shift`` (one
    ring step) sends the payload once; ``reduce_scatter`` (N-1)/N of it (``model=paper``: the rank's 1/N share)."""
    if world <= 1 or nbytes == 0 or op == "wait":
        return 0.0
    if op == "shift":
        volume = nbytes
    elif model == "paper":
        volume = nbytes if op in ("all_gather", "all_to_all") else nbytes / world
    elif op == "all_gather":
        volume = (world - 1) * nbytes
    elif op in ("all_to_all", "reduce_scatter"):
        volume = (world - 1) / world * nbytes
    else:
        volume = 2 * (world - 1) / world * nbytes
    return volume * 8 * overhead / (bw_mbps * unit)


def share_of_core(cpu_ns_per_byte: float, bw_mbps: float, unit: float, overhead: float) -> float:
    """CPU seconds a transfer costs the device per second of link time: ``cpu_ns_per_byte`` for every payload byte
    it sends and every one it receives (a ring step or ring collective receives what it sends), on a link of
    ``bw_mbps`` × ``unit`` bit/s carrying payload × ``overhead``. 0: the device's compute never pays for its
    transfers (the paper's model; a NIC with offload)."""
    if cpu_ns_per_byte <= 0:
        return 0.0
    return 2 * cpu_ns_per_byte * 1e-9 * bw_mbps * unit / (8 * overhead)


def blocking_seconds(charges, share: float = 0.0) -> float:
    """The time a rank waits for collectives it blocks on, charged ``charges`` (seconds each): their sum, the paper's
    model, unless moving the bytes at the link's pace needs more than the whole core (``share`` > 1: the core is then
    the limit, as in ``timeline``)."""
    return max(1.0, share) * sum(charges)


def timeline(events: list, tail_s: float, charge: Callable[[str, int], float],
             share: float = 0.0) -> tuple[float, float, float]:
    """One rank's inference with its collectives charged by ``charge(op, payload bytes)``: (latency, the time it
    waited for collectives, the time started collectives transferred while it computed).

    ``events`` in the rank's order, each ``[compute before it, kind, number, op, payload bytes]``: ``call`` a
    blocking collective (it starts when the link is free and the rank waits for it), ``post`` a started one (it
    starts when the link is free, the rank goes on at once), ``wait`` the rank waits for started collective
    ``number``. The link carries one transfer at a time, in the order they were issued, so a pipeline of tiles or
    ring steps costs the longer of compute and transfer per step, plus its fill and drain. ``tail_s``: compute after
    the last event. With only blocking calls this is compute + Σ charges, the paper's model.

    ``share`` (``share_of_core``): the CPU a transfer needs per second of link time, from the core that computes. A
    transfer running under compute takes that much of the core, at most half of it (the scheduler's fair share
    between the computing thread and the one moving bytes): compute slows to 1 − that, and a transfer that would
    need more than half the core slows too. A transfer the rank waits for has the core to itself (it slows only if
    ``share`` > 1). 0: compute and transfers never meet on the core."""
    t = waited = hidden = 0.0
    queue: list = []  # transfers on the link, the first one moving: [number, link seconds left]
    hid: dict = {}  # link seconds each started transfer moved while the rank computed
    finished: set = set()
    comm_cpu = min(share, 0.5)
    rate_busy = comm_cpu / share if share > 0 else 1.0  # a transfer's pace (link seconds per second) under compute
    rate_alone = min(1.0, 1.0 / share) if share > 0 else 1.0
    compute_rate = 1.0 - comm_cpu

    def run(work: float, until=None) -> float:
        """Advance time by ``work`` seconds of compute (``until`` None) or until transfer ``until`` finished (the
        rank waits); the link moves its queue meanwhile. Returns the seconds the rank waited."""
        nonlocal t
        idle = 0.0
        while True:
            if until is None and work <= 1e-15:
                return idle
            if until is not None and until in finished:
                return idle
            if not queue:
                if until is not None:  # nothing on the link: the awaited transfer is already done
                    return idle
                t += work
                return idle
            number, left = queue[0]
            pace = rate_alone if until is not None else rate_busy
            to_move = left / pace
            if until is None:
                to_work = work / compute_rate
                step = min(to_move, to_work)
                work -= step * compute_rate
                hid[number] = hid.get(number, 0.0) + step * pace
            else:
                step = to_move
                idle += step
            t += step
            queue[0][1] -= step * pace
            if step >= to_move - 1e-15:
                queue.pop(0)
                finished.add(number)

    calls = 0
    for compute, kind, number, op, nbytes in events:
        run(compute)
        if kind == "wait":
            took = run(0.0, until=number)
            waited += took
            hidden += hid.pop(number, 0.0)
            finished.discard(number)
            continue
        took = charge(op, nbytes)
        key = number if kind == "post" else ("call", calls)
        calls += 1
        if took > 0:
            queue.append([key, took])
        else:
            finished.add(key)
        if kind != "post":
            waited += run(0.0, until=key)
            hid.pop(key, None)
            finished.discard(key)
    run(tail_s)
    return t, waited, hidden


def record_events(records: list, t0: float, latency_s: float) -> tuple[list, float] | None:
    """The events of ``timeline`` from a rank's recorded collectives (rows of ``CommRecord.row``: op, tag, payload,
    seconds, wire bytes, start, wait start, posted, hidden) in an inference that started at ``t0`` and took
    ``latency_s``: the compute before each is the time since the rank left the previous one. None without start
    times."""
    marks = []
    for i, rec in enumerate(records):
        if len(rec) < 6 or rec[5] is None:
            return None
        op, nbytes, seconds, start = rec[0], rec[2], rec[3], rec[5]
        wait_start = rec[6] if len(rec) > 6 else None
        if wait_start is None:
            marks.append((start, start + seconds, "call", i, op, nbytes))
        else:
            posted = rec[7]
            marks.append((start, posted, "post", i, op, nbytes))
            marks.append((wait_start, wait_start + seconds - (posted - start), "wait", i, op, 0))
    marks.sort(key=lambda m: m[0])
    events, mark = [], t0
    for begin, end, kind, i, op, nbytes in marks:
        events.append([max(0.0, begin - mark), kind, i, op, nbytes])
        mark = max(mark, end)
    return events, max(0.0, t0 + latency_s - mark)


def overlapped(rep: dict, charge, share: float = 0.0) -> tuple[float | None, float]:
    """A rank whose collectives overlap its compute (started ones, ``Comm.start_*``): (the time communication adds
    to its compute: its waits, plus the compute slowed under transfers when they take ``share`` of its core; the
    time they transfer hidden under compute) from its timeline (``harness.comm.cost.timeline``: a link carrying one
    transfer at a time, each started one overlapping the compute up to its wait). (None, 0) when every collective
    blocks."""
    if rep.get("events") is not None:  # a replay profile's calls
        events, tail = rep["events"], rep["tail_s"]
    else:
        recs = rep.get("records") or []
        if not any(len(rec) > 6 and rec[6] is not None for rec in recs) or rep.get("records_t0") is None:
            return None, 0.0
        got = record_events(recs, rep["records_t0"], rep["latency_s"][-1])
        if got is None:
            return None, 0.0
        events, tail = got
    if not any(e[1] == "post" for e in events):
        return None, 0.0
    latency, _waited, hidden = timeline(events, tail, charge, share)
    return max(0.0, latency - tail - sum(e[0] for e in events)), hidden
