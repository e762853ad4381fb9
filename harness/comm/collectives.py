"""The only place collectives are called. Every call records its op, a tag, payload bytes and wall time.

``payload_bytes`` is what this rank hands to the collective (its input tensor's bytes): for an all-gather its own
shard, for an all-reduce the whole tensor. What the transport then moves (ring steps, TCP/IP headers) is measured
elsewhere (interface counters on emulated networks) or modelled (analytic backend).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.comm.wire import decode_rows, encode_rows, row_bytes, row_ranges


def tx_counters(ifaces: list[str]) -> list[int]:
    """Bytes sent so far on each of these interfaces (this network namespace's own sysfs)."""
    return [int(Path(f"/sys/class/net/{i}/statistics/tx_bytes").read_text()) for i in ifaces]


@dataclass
class CommRecord:
    op: str
    tag: str
    payload_bytes: int
    seconds: float
    wire_bytes: int | None = None  # what this rank's busiest interface sent meanwhile (``wire_ifaces`` set)
    start: float | None = None  # time.perf_counter() when the rank entered it: CLOCK_MONOTONIC, one clock for every
    # process of a machine (network namespaces share it), so the ranks of a Mininet point can be lined up
    # A collective started without waiting (``Comm.start_*``): ``seconds`` is the time the rank spent posting it and
    # waiting for it; ``posted`` when the post returned, ``wait_start`` when the rank began to wait, ``hidden`` how
    # long the transfer ran before the wait (from the post to the earlier of its end and the wait; the rank may have
    # been waiting for another collective meanwhile: ``Comm.hidden_seconds`` takes that out). No wire bytes: other
    # collectives run in the same window.
    posted: float | None = None
    wait_start: float | None = None
    hidden: float = 0.0

    def busy(self) -> list[tuple[float, float]]:
        """The intervals the rank spent inside this collective (empty without a start time)."""
        if self.start is None:
            return []
        if self.wait_start is None:
            return [(self.start, self.start + self.seconds)]
        return [(self.start, self.posted), (self.wait_start, self.wait_start + self.seconds - (self.posted - self.start))]

    def row(self) -> list:
        """As rank reports carry it: op, tag, payload bytes, seconds, wire bytes, start, wait start, posted,
        hidden (the last three None/0 for a blocking collective)."""
        return [self.op, self.tag, self.payload_bytes, self.seconds, self.wire_bytes, self.start, self.wait_start,
                self.posted, self.hidden]


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Disjoint sorted intervals covering ``spans``."""
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _finished(run: Callable):
    """Run a started collective on the communication thread; its result and when it finished."""
    return run(), time.perf_counter()


class Pending:
    """A collective started with ``Comm.start_*``: its transfer runs (on the group's communication thread) while
    the rank goes on computing; ``wait()`` blocks until it is done and returns its result, once. Every pending
    collective is waited for, at the latest by the next blocking collective of its group."""

    def __init__(self, comm: Comm, op: str, tag: str, nbytes: int, t0: float, future: Future | None, value=None):
        self.comm, self.op, self.tag, self.nbytes, self.t0 = comm, op, tag, nbytes, t0
        self.future, self.value, self.done = future, value, False
        self.number: int | None = None  # its number in the inference, where a recording comm notes it
        self.posted = time.perf_counter()
        # recorded when posted (records keep the order collectives were issued in), completed by ``wait``
        self.record = CommRecord(op, tag, nbytes if comm.world > 1 else 0, self.posted - t0, None, t0, self.posted)
        comm.records.append(self.record)

    def wait(self):
        if self.done:
            return self.value
        comm = self.comm
        comm._waiting(self)
        w0 = time.perf_counter()
        if self.future is not None:
            self.value, finished = self.future.result()
        else:
            finished = self.posted
        w1 = time.perf_counter()
        self.done = True
        comm._pending.remove(self)
        rec = self.record
        rec.seconds, rec.wait_start = (self.posted - self.t0) + (w1 - w0), w0
        rec.hidden = max(0.0, min(finished, w0) - self.posted) if self.future is not None else 0.0
        comm._waited(self)
        return self.value


class Comm:
    """Base class: a rank's view of its group. Subclasses implement ``_all_gather`` / ``_all_reduce``."""

    def __init__(self, rank: int, world: int):
        self.rank = rank
        self.world = world
        self.records: list[CommRecord] = []
        self.local = False  # answer collectives locally (this rank alone: see SimulatedComm)
        self.wire_ifaces: list[str] = []  # interfaces whose tx counters each collective reads (Mininet hosts)
        self._pending: list[Pending] = []  # started, not yet waited for (in the order they were started)
        self._executor: ThreadPoolExecutor | None = None  # the communication thread, made on the first start

    # -- public API -------------------------------------------------------------------------------------------
    def all_gather(self, t: torch.Tensor, tag: str = "") -> list[torch.Tensor]:
        """Gather equal-shaped tensors from all ranks (rank order). Pad uneven shards before calling."""
        t = t.contiguous()
        self.drain()
        tx0 = self._tx()
        t0 = time.perf_counter()
        if self.world == 1:
            out = [t]
        elif self.local:
            out = [t.clone() for _ in range(self.world)]
        else:
            out = self._all_gather(t)
        self._record("all_gather", tag, t.numel() * t.element_size(), t0, tx0)
        return out

    def all_reduce(self, t: torch.Tensor, tag: str = "", wire: str = "fp32") -> torch.Tensor:
        """Sum ``t`` over ranks, in place; returns ``t``. ``wire`` other than fp32 (``harness.wire``) sends every
        value in that format, by rows of the last dimension: a reduce-scatter of row ranges (each rank sums its
        range in fp32, in rank order) and an all-gather of the summed ranges, both encoded — so every rank ends
        with identical values, and the payload is the encoded tensor."""
        self.drain()
        tx0 = self._tx()
        t0 = time.perf_counter()
        nbytes = t.numel() * t.element_size()
        if wire != "fp32":
            rows = t.reshape(-1, t.shape[-1])
            nbytes = rows.shape[0] * row_bytes(rows.shape[1], wire)
        if self.world == 1:
            pass
        elif wire == "fp32":
            if not self.local:
                self._all_reduce(t)
        elif self.local:  # the same work on this rank's own values
            rows.copy_(decode_rows(encode_rows(rows, wire), rows.shape[0], rows.shape[1], wire))
        else:
            self._all_reduce_wire(rows, wire)
        self._record("all_reduce", tag, nbytes, t0, tx0)
        return t

    def all_to_all(self, parts: list[torch.Tensor], recv_shapes: list[tuple[int, ...]], tag: str = "") -> list[torch.Tensor]:
        """Send ``parts[j]`` to rank j and receive a tensor of shape ``recv_shapes[j]`` (same dtype) from each rank j;
        slot ``rank`` of the result is ``parts[rank]`` itself. The payload is the bytes of all parts (the rank's
        input), of which (N-1)/N leave the rank when the parts are equal."""
        parts = [p.contiguous() for p in parts]
        self.drain()
        tx0 = self._tx()
        t0 = time.perf_counter()
        if self.world == 1:
            out = [parts[0]]
        elif self.local:
            out = [parts[j] if j == self.rank else parts[self.rank].new_zeros(recv_shapes[j])
                   for j in range(self.world)]
        else:
            out = self._all_to_all(parts, recv_shapes)
        self._record("all_to_all", tag, sum(p.numel() * p.element_size() for p in parts), t0, tx0)
        return out

    def reduce_scatter(self, parts: list[torch.Tensor], tag: str = "") -> torch.Tensor:
        """``parts[j]`` is this rank's contribution to rank j's result (equal shapes over j on every rank); returns
        the sum over ranks of their ``parts[rank]`` (summed once, by this rank). The payload is the bytes of all
        parts, of which (N-1)/N leave the rank."""
        self.drain()
        return self.start_reduce_scatter(parts, tag).wait()

    # -- started now, waited for later: the transfer overlaps what the rank computes meanwhile ---------------------
    def start_all_gather(self, t: torch.Tensor, tag: str = "") -> Pending:
        """``all_gather`` started without waiting; ``.wait()`` returns the list of shards."""
        t = t.contiguous()
        return self._start("all_gather", tag, t.numel() * t.element_size(), lambda: self._all_gather(t),
                           lambda: [t.clone() for _ in range(self.world)], (t,))

    def start_reduce_scatter(self, parts: list[torch.Tensor], tag: str = "") -> Pending:
        """``reduce_scatter`` started without waiting; ``.wait()`` returns this rank's sum."""
        parts = [p.contiguous() for p in parts]
        return self._start("reduce_scatter", tag, sum(p.numel() * p.element_size() for p in parts),
                           lambda: self._reduce_scatter(parts), lambda: parts[self.rank].clone(), (parts,))

    def start_shift(self, t: torch.Tensor, tag: str = "") -> Pending:
        """One step round the ring of ranks: send ``t`` to rank+1 and receive a tensor of the same shape and dtype
        from rank-1 (``.wait()`` returns it). The payload is ``t``'s bytes."""
        t = t.contiguous()
        return self._start("shift", tag, t.numel() * t.element_size(), lambda: self._shift(t), lambda: t.clone(),
                           (t,))

    def _start(self, op: str, tag: str, nbytes: int, run: Callable, alone: Callable, args: tuple) -> Pending:
        """Post ``run`` (the collective, on this group's communication thread, in posting order) or, for a rank
        alone (one rank, ``local``), answer with ``alone()`` at once."""
        self._posting(op, tag, args)
        t0 = time.perf_counter()
        if self.world == 1 or self.local:
            p = Pending(self, op, tag, nbytes, t0, None, alone())
        else:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"comm{self.rank}")
            p = Pending(self, op, tag, nbytes, t0, self._executor.submit(_finished, run))
        self._pending.append(p)
        self._posted(p)
        return p

    def close(self) -> None:
        """Stop the communication thread (a failed rank: transfers not yet begun are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def drain(self) -> None:
        """Wait for every collective started and not yet waited for, in the order they were started."""
        while self._pending:
            self._pending[0].wait()

    # hooks for a comm that notes what its rank does (``harness.comm.profile.RecordingComm``)
    def _posting(self, op: str, tag: str, args: tuple) -> None:
        pass

    def _posted(self, p: Pending) -> None:
        pass

    def _waiting(self, p: Pending) -> None:
        pass

    def _waited(self, p: Pending) -> None:
        pass

    def agree_max(self, value: float) -> float:
        """The largest ``value`` over ranks (not recorded): how ranks take one decision, e.g. to stop repeating."""
        return value

    def barrier(self) -> None:
        """Synchronise ranks; not recorded (used between timed repeats)."""

    def reset(self) -> None:
        self.drain()
        self.records.clear()

    @property
    def payload_bytes(self) -> int:
        return sum(r.payload_bytes for r in self.records)

    @property
    def seconds(self) -> float:
        """Time the rank spent in collectives (waiting for them; a started one's transfer while it computed is not
        counted: see ``hidden_seconds``)."""
        return sum(r.seconds for r in self.records)

    @property
    def hidden_seconds(self) -> float:
        """Time during which at least one started collective was transferring while its rank computed: the union of
        the started collectives' transfers up to their waits, less the time the rank spent in any collective
        (posting, waiting, a blocking one). Two transfers in flight at once count once."""
        flight = _union([(r.posted, r.posted + r.hidden) for r in self.records if r.hidden > 0])
        busy = _union([iv for r in self.records for iv in r.busy()])
        total = 0.0
        for a, b in flight:
            total += b - a - sum(max(0.0, min(b, d) - max(a, c)) for c, d in busy)
        return total

    # -- internals --------------------------------------------------------------------------------------------
    def _tx(self) -> list[int] | None:
        if not self.wire_ifaces or self.local:
            return None
        return tx_counters(self.wire_ifaces)

    def _record(self, op: str, tag: str, nbytes: int, t0: float, tx0: list[int] | None = None) -> None:
        took = time.perf_counter() - t0
        nbytes = nbytes if self.world > 1 else 0
        wire = None
        if tx0 is not None:
            wire = max(b - a for a, b in zip(tx0, self._tx()))
        self.records.append(CommRecord(op, tag, nbytes, took, wire, t0))

    def _all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def _all_reduce(self, t: torch.Tensor) -> None:
        raise NotImplementedError

    def _all_to_all(self, parts: list[torch.Tensor], recv_shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        raise NotImplementedError

    def _reduce_scatter(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Default: every rank's ``parts[j]`` to rank j (all-to-all), summed in rank order."""
        got = self._all_to_all(parts, [tuple(parts[self.rank].shape)] * self.world)
        total = got[0].clone()
        for g in got[1:]:
            total += g
        return total

    def _shift(self, t: torch.Tensor) -> torch.Tensor:
        """Default: an all-to-all in which only the successor gets ``t`` (empty parts elsewhere)."""
        w, r = self.world, self.rank
        empty = t.new_empty(0)
        parts = [t if j == (r + 1) % w else empty for j in range(w)]
        return self._all_to_all(parts, [tuple(t.shape) if j == (r - 1) % w else (0,) for j in range(w)])[(r - 1) % w]

    def _all_reduce_wire(self, rows: torch.Tensor, wire: str) -> None:
        """``all_reduce`` in a wire format, from the group's all-to-all and all-gather (unrecorded)."""
        dim = rows.shape[1]
        ranges = row_ranges(rows.shape[0], self.world)
        s, e = ranges[self.rank]
        send = [encode_rows(rows[a:b], wire) for a, b in ranges]
        got = self._all_to_all(send, [tuple(send[self.rank].shape)] * self.world)
        total = decode_rows(got[0], e - s, dim, wire)
        for g in got[1:]:
            total += decode_rows(g, e - s, dim, wire)
        mine = encode_rows(total, wire)
        longest = max(len(x) for x in send)
        padded = torch.cat([mine, mine.new_zeros(longest - mine.numel())]) if mine.numel() < longest else mine
        shards = self._all_gather(padded)
        rows.copy_(torch.cat([decode_rows(sh, b - a, dim, wire) for sh, (a, b) in zip(shards, ranges)]))


class LocalComm(Comm):
    """A group of one: collectives are no-ops (the single-device baseline)."""

    def __init__(self):
        super().__init__(0, 1)


IMPLS = ("auto", "p2p", "ring", "bruck", "gloo")
RING_MIN_BYTES = 64 * 1024  # `auto`: a collective whose steps move at least this much goes round the ring


class DistComm(Comm):
    """torch.distributed over gloo (CPU) — the real thing, on loopback or across emulated hosts.

    ``impl`` chooses how collectives are built from point-to-point sends:

    - ``p2p``: direct exchange. All-gather = every rank sends its shard straight to every peer ((N-1) shards up,
      (N-1) down, all at once); all-reduce = direct reduce-scatter then all-gather of 1/N chunks (2(N-1)/N of the
      tensor each way, in two rounds). One round trip, but N-1 TCP flows share each link and finish unevenly.
    - ``ring``: N-1 steps in which every rank sends one block to its successor and receives one from its
      predecessor (all-reduce: a ring reduce-scatter, then a ring all-gather of the reduced chunks). The same bytes
      as p2p; each link carries one flow at a time, so it stays busy to the end of the collective, at the price of
      N-1 sequential steps.
    - ``bruck``: all-gather in ceil(log2 N) rounds (Bruck et al., 1997): in round s every rank sends the blocks it
      has so far (at most 2^s) to rank r - 2^s and receives as many from rank r + 2^s. The same (N-1) shards up and
      down as p2p and ring, in N log2 N messages instead of N(N-1): what MPI libraries use for short all-gathers
      among many ranks. All-reduce as p2p. On this project's 2-vCPU VM (``benchmarks/small_allgather.py``: a 320 B
      shard between 3 ms sleeps, real-time ranks on loopback) it took 2.4 / 6.5 / 18.0 ms at 8 / 16 / 32 ranks
      against p2p's 1.3 / 4.4 / 16.6 ms: on a shared CPU each round's wake-ups cost more than the messages it
      saves, so ``auto`` keeps p2p.
    - ``auto`` (default): ring when a step moves at least ``RING_MIN_BYTES``, p2p below (small messages are
      latency-bound, large ones bandwidth-bound, the choice MPI libraries make by message size).
    - ``gloo``: gloo's own collectives, for comparison.

    Measured on Mininet (star, 4 hosts, ``benchmarks/collectives.py``): all-gather of 768 kB shards at 4.37 and
    43.7 Mbit/s (10 and 100 Mbit/s dilated by 2.29) kept the links 0.84 and 0.93 busy with p2p, 0.94 and 0.98 with
    the ring; a 3 MB all-reduce 0.87 and 0.89 with p2p, 0.94 and 0.98 with the ring. At 2 hosts both are the same
    exchange; gloo's own all-gather of a 1.5 MB shard took 1.95 s against 1.31 s for the direct exchange at 10 Mbit/s (its pipeline leaves the link idle part of the time).
    Every rank gets identical bits from every implementation (each reduced chunk is summed once, by its owner).
    """

    def __init__(self, impl: str = "auto"):
        import torch.distributed as dist

        if impl not in IMPLS:
            raise ValueError(f"collectives={impl!r} is unknown: use one of {', '.join(IMPLS)}")
        self.dist = dist
        self.impl = impl
        super().__init__(dist.get_rank(), dist.get_world_size())
        self.peers = [j for j in range(self.world) if j != self.rank]

    def _exchange(self, send: list[torch.Tensor | None], recv: list[torch.Tensor | None]) -> None:
        """Post every send (``send[j]`` to rank j) and receive (``recv[j]`` from rank j) at once; wait for all."""
        reqs = []
        for j in self.peers:
            reqs.append(self.dist.irecv(recv[j], j))
        for j in self.peers:
            reqs.append(self.dist.isend(send[j], j))
        for q in reqs:
            q.wait()

    def _ring(self, step_bytes: int) -> bool:
        """Whether a collective whose steps move ``step_bytes`` each goes round the ring."""
        return self.world > 2 and (self.impl == "ring" or (self.impl == "auto" and step_bytes >= RING_MIN_BYTES))

    def _ring_step(self, send: torch.Tensor, recv: torch.Tensor) -> None:
        """One ring step: ``send`` to the successor while ``recv`` fills from the predecessor; wait for both."""
        w, r = self.world, self.rank
        reqs = [self.dist.irecv(recv, (r - 1) % w), self.dist.isend(send, (r + 1) % w)]
        for q in reqs:
            q.wait()

    def _bruck(self) -> bool:
        """Whether a small all-gather (one below the ring's threshold) takes Bruck's rounds."""
        return self.world > 2 and self.impl == "bruck"

    def _bruck_all_gather(self, out: list[torch.Tensor]) -> None:
        """Fill ``out`` (``out[rank]`` ours, every block the same shape) in ceil(log2 N) rounds: before round s a
        rank holds the blocks of ranks r, r+1, ..., r+2^s-1; it sends the first min(2^s, N-2^s) of them to rank
        r-2^s and receives the next ones, those of ranks r+2^s, ..., from rank r+2^s (which holds them first)."""
        w, r = self.world, self.rank
        shape, n = out[r].shape, out[r].numel()
        have, k = 1, 1
        while have < w:
            cnt = min(k, w - have)
            send = torch.cat([out[(r + i) % w].reshape(-1) for i in range(cnt)])
            recv = send.new_empty(cnt * n)
            reqs = [self.dist.irecv(recv, (r + k) % w), self.dist.isend(send, (r - k) % w)]
            for q in reqs:
                q.wait()
            for i in range(cnt):
                out[(r + have + i) % w] = recv[i * n:(i + 1) * n].view(shape)
            have += cnt
            k *= 2

    def _ring_all_gather(self, out: list[torch.Tensor]) -> None:
        """Fill ``out`` (``out[j]`` sized for rank j's block, ``out[rank]`` already ours) in N-1 ring steps: at step
        s every rank forwards the block it got at step s-1 (its own at s = 0) and receives the next one."""
        w, r = self.world, self.rank
        for s in range(w - 1):
            self._ring_step(out[(r - s) % w], out[(r - s - 1) % w])

    def _all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(t) for _ in range(self.world)]
        if self.impl == "gloo":
            self.dist.all_gather(out, t)
            return out
        out[self.rank] = t
        if self._ring(t.numel() * t.element_size()):
            self._ring_all_gather(out)
        elif self._bruck():
            self._bruck_all_gather(out)
        else:
            self._exchange([t] * self.world, out)
        return out

    def _all_reduce(self, t: torch.Tensor) -> None:
        if self.impl == "gloo":
            self.dist.all_reduce(t)
            return
        flat = t.view(-1)
        bounds = [round(i * flat.numel() / self.world) for i in range(self.world + 1)]
        chunks = [flat[bounds[i]:bounds[i + 1]].contiguous() for i in range(self.world)]
        if self._ring(chunks[0].numel() * chunks[0].element_size()):
            self._ring_all_reduce(flat, chunks)
            return
        mine = chunks[self.rank]
        parts: list = [None] * self.world
        for j in self.peers:
            parts[j] = torch.empty_like(mine)
        parts[self.rank] = mine
        self._exchange(chunks, parts)  # reduce-scatter: everyone sends me their copy of my chunk
        total = parts[0].clone()
        for p in parts[1:]:
            total += p
        done = [total if j == self.rank else torch.empty_like(chunks[j]) for j in range(self.world)]
        self._exchange([total] * self.world, done)  # all-gather of the reduced chunks
        flat.copy_(torch.cat(done))

    def _reduce_scatter(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if self._ring(parts[0].numel() * parts[0].element_size()):
            return self._ring_reduce_scatter(parts)[self.rank]
        mine = parts[self.rank]
        got = [mine if j == self.rank else torch.empty_like(mine) for j in range(self.world)]
        self._exchange(parts, got)  # everyone sends me their part of my share
        total = got[0].clone()
        for g in got[1:]:
            total += g
        return total

    def _ring_reduce_scatter(self, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Ring reduce-scatter: at step s rank r passes its partial sum of chunk r-s-1 on and adds its own copy to
        the partial of chunk r-s-2 it receives; after N-1 steps slot r holds the full sum of chunk r."""
        w, r = self.world, self.rank
        partial = [c.clone() for c in chunks]
        for s in range(w - 1):
            send_c, recv_c = (r - s - 1) % w, (r - s - 2) % w
            got = torch.empty_like(chunks[recv_c])
            self._ring_step(partial[send_c], got)
            partial[recv_c] = got.add_(chunks[recv_c])
        return partial

    def _shift(self, t: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(t)
        self._ring_step(t, out)
        return out

    def _ring_all_reduce(self, flat: torch.Tensor, chunks: list[torch.Tensor]) -> None:
        """A ring reduce-scatter, then a ring all-gather of the reduced chunks."""
        partial = self._ring_reduce_scatter(chunks)
        self._ring_all_gather(partial)
        flat.copy_(torch.cat(partial))

    def _all_to_all(self, parts: list[torch.Tensor], recv_shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        # direct exchange for every impl (every pair at once, like the all-gather above)
        out = [parts[j] if j == self.rank else parts[self.rank].new_empty(recv_shapes[j]) for j in range(self.world)]
        self._exchange(parts, out)
        return out

    def barrier(self) -> None:
        self.drain()
        self.dist.barrier()

    def agree_max(self, value: float) -> float:
        self.drain()
        t = torch.tensor([float(value)], dtype=torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return float(t.item())


class SimulatedComm(Comm):
    """Pretends to be rank ``rank`` of ``world`` inside one process, for measuring that rank's compute alone.

    All-gather returns copies of the caller's own shard in every slot and all-reduce leaves the tensor as it is:
    values are wrong but shapes, dtypes, payload accounting and therefore the compute work are exactly those of
    the real run. Time spent here is (near) zero, so the rank's measured time is its compute time. A real group
    does the same while its ``local`` flag is set (the solo runs of the compute-inflation check).
    """

    def __init__(self, rank: int, world: int):
        super().__init__(rank, world)
        self.local = True
