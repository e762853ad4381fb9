"""Compute profiles: what a device computes between its collective calls, recorded once and replayed as timed waits.

A profile holds, for every rank of a point, the sequence of its collective calls in one inference — each with the
compute that preceded it (``compute_s``: from the end of the previous call, or the start of the inference, to this
call) and the call itself (``op``, ``tag`` and the exact shapes and dtypes of its buffers, so a replayed call moves
the same bytes) — and the compute after the last call (``tail_s``). Replaying it (``harness.rank.replay``) sleeps
until each segment's end and then issues the same call with buffers of those shapes, through the real collectives
and the real (emulated) network.

File format (JSON, ``FORMAT``)::

    {"format": "astra-profile/1",
     "point": {"model": "vit_base", "method": {...method options...}, "devices": 4, "tokens": 1024, "batch": 1,
               "shares": null},
     "device": {"name": "cpu1", "threads": 1, "host": ..., "cpu_model": ..., "torch": ..., "accelerator": "cpu"},
     "measured": {"repeats": 3, "warmup": 1, "scale": 1.0, "spread": 0.02, "probe_ms": 27.5, "probe_drift": 0.01},
     "ranks": [{"rank": 0, "tail_s": 0.012,
                "calls": [{"compute_s": 0.051, "op": "all_gather", "tag": "block0",
                           "args": {"shape": [1, 257, 768], "dtype": "float32"}}, ...]}, ...]}

``measured``: ``spread`` is the largest relative spread of a rank's recorded inferences; ``probe_ms`` this machine's
speed probe (``harness.rank.profile.speed_probe``) around the recording and ``probe_drift`` how far it moved (CPU
recordings only: a cached profile is used only while the probe still agrees). ``args`` per op: ``all_gather``: the rank's shard (``shape``, ``dtype``); ``all_reduce``: the tensor and its
``wire`` format; ``all_to_all``: the ``parts`` sent (a shape each), ``recv_shapes`` and the ``dtype``;
``reduce_scatter``: the ``parts`` and the ``dtype``; ``shift`` (one step round the ring): the tensor sent. A
collective started without waiting (``Comm.start_*``, the overlapped methods) carries ``"async": k`` (its number in
the inference), and the moment the rank waited for it is an entry of its own, ``{"op": "wait", "args": {"async":
k}}``, whose ``compute_s`` is the compute the transfer overlapped. A profile of
the single-device baseline has one rank and no calls: its whole inference is ``tail_s``.

Profiles are exchanged between machines (``astra-profile`` records one on any machine with torch, a GPU's with
CUDA timing), so reading one checks it whole and refuses it in one line.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from harness.comm.collectives import Comm, SimulatedComm
from harness.errors import ConfigError, atomic_write

FORMAT = "astra-profile/1"
OPS = ("all_gather", "all_reduce", "all_to_all", "reduce_scatter", "shift", "wait")


@dataclass
class Call:
    compute_s: float  # compute before this call
    op: str
    tag: str
    args: dict


@dataclass
class RankProfile:
    rank: int
    calls: list[Call] = field(default_factory=list)
    tail_s: float = 0.0  # compute after the last call

    @property
    def compute_s(self) -> float:
        return sum(c.compute_s for c in self.calls) + self.tail_s


@dataclass
class Profile:
    point: dict
    device: dict
    measured: dict
    ranks: list[RankProfile]

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1)

    def scaled(self, factor: float) -> "Profile":
        """Every compute segment × ``factor`` (a device that much slower); the calls are unchanged."""
        ranks = [RankProfile(r.rank, [Call(c.compute_s * factor, c.op, c.tag, c.args) for c in r.calls],
                             r.tail_s * factor) for r in self.ranks]
        return Profile(self.point, self.device, {**self.measured, "scale": self.measured.get("scale", 1.0) * factor},
                       ranks)

    def save(self, path: str | Path) -> Path:
        return atomic_write(path, self.to_json())


def load(path: str | Path, name: str = "device.profile") -> Profile:
    """A profile file, checked whole: one ConfigError line naming what is wrong otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{name}={path} does not exist: record one with astra-profile, or use "
                          f"{name}=measure") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{name}={path} is not a readable profile ({str(exc).splitlines()[0]}): record it again "
                          "with astra-profile") from None
    try:
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
        ranks = []
        for i, r in enumerate(data["ranks"]):
            calls = [Call(float(c["compute_s"]), str(c["op"]), str(c["tag"]), dict(c["args"])) for c in r["calls"]]
            for c in calls:
                if c.op not in OPS:
                    raise ValueError(f"rank {i} calls {c.op!r}")
                if c.compute_s < 0:
                    raise ValueError(f"rank {i} has a negative compute segment")
            if int(r["rank"]) != i or float(r["tail_s"]) < 0:
                raise ValueError(f"rank entry {i} is out of order or has a negative tail")
            ranks.append(RankProfile(i, calls, float(r["tail_s"])))
        if not ranks or len(ranks) != int(data["point"]["devices"]):
            raise ValueError(f"{len(ranks)} ranks for devices={data['point'].get('devices')}")
        return Profile(dict(data["point"]), dict(data["device"]), dict(data["measured"]), ranks)
    except (KeyError, TypeError, ValueError) as exc:
        what = exc.args[0] if isinstance(exc, ValueError) else f"no {exc}" if isinstance(exc, KeyError) else exc
        raise ConfigError(f"{name}={path} is not a valid profile ({what}): record it again with astra-profile") \
            from None


def check_matches(profile: Profile, point: dict, name: str = "device.profile") -> None:
    """Refuse a profile recorded for another point (model, method and its options, devices, tokens, batch, shares)."""
    for key in POINT_KEYS:
        if profile.point.get(key) != point.get(key):
            have, want = profile.point.get(key), point.get(key)
            if key == "method":
                have, want = have.get("name") if isinstance(have, dict) else have, want.get("name")
                if have == want:
                    have, want = "other options", "this point's"
            raise ConfigError(f"{name}: the profile was recorded for {key}={have}, this point has {key}={want}: "
                              "record a profile of this point (astra-profile), or use device.profile=measure")


def find(source: str | Path, point: dict, name: str = "device.profile") -> Path:
    """The profile file for ``point``: ``source`` itself (checked against the point), or the one file of the folder
    ``source`` recorded for it."""
    source = Path(source)
    if source.is_dir():
        for f in sorted(source.glob("*.json")):
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("format") == FORMAT and \
                    all(data.get("point", {}).get(k) == point.get(k) for k in POINT_KEYS):
                return f
        raise ConfigError(f"{name}={source} holds no profile of this point (model {point['model'].get('name')}, "
                          f"method {point['method'].get('name')}, devices={point['devices']}, "
                          f"tokens={point['tokens']}): record it with astra-profile device.profile={source} and "
                          "the point's settings")
    check_matches(load(source, name), point, name)
    return source


def file_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


POINT_KEYS = ("model", "method", "devices", "tokens", "batch", "shares")


# -------------------------------------------------------------------------------------------------- recording
def describe_call(op: str, args: tuple) -> dict:
    """The buffers of a collective call, as shapes and dtypes (what a replay needs to move the same bytes)."""
    if op in ("all_gather", "shift"):
        (t,) = args
        return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    if op == "all_reduce":
        t, wire = args
        return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "wire": wire}
    if op == "reduce_scatter":
        (parts,) = args
        return {"parts": [list(p.shape) for p in parts], "dtype": str(parts[0].dtype).removeprefix("torch.")}
    parts, recv_shapes = args
    return {"parts": [list(p.shape) for p in parts], "recv_shapes": [list(s) for s in recv_shapes],
            "dtype": str(parts[0].dtype).removeprefix("torch.")}


class RecordingComm(SimulatedComm):
    """A rank alone (collectives answered locally, as ``SimulatedComm``) that notes every call and the compute
    before it. ``sync`` is called before each clock reading (CUDA: ``torch.cuda.synchronize``), so the time of work
    queued on an accelerator counts where it is done."""

    def __init__(self, rank: int, world: int, sync=None):
        super().__init__(rank, world)
        self.sync = sync or (lambda: None)
        self.calls: list[Call] = []
        self.mark = time.perf_counter()

    def start(self) -> None:
        """An inference starts: forget the previous one's calls."""
        self.sync()
        self.calls = []
        self.mark = time.perf_counter()

    def finish(self) -> float:
        """An inference ended: the compute after its last call."""
        self.sync()
        return time.perf_counter() - self.mark

    def _note(self, op: str, tag: str, args: tuple):
        self.sync()
        now = time.perf_counter()
        self.calls.append(Call(now - self.mark, op, tag, describe_call(op, args)))

    def _done(self) -> None:
        self.mark = time.perf_counter()

    def all_gather(self, t, tag=""):
        self.drain()  # started collectives end first (their waits are events of their own)
        self._note("all_gather", tag, (t,))
        out = super().all_gather(t, tag)
        self._done()
        return out

    def all_reduce(self, t, tag="", wire="fp32"):
        self.drain()  # started collectives end first (their waits are events of their own)
        self._note("all_reduce", tag, (t, wire))
        out = super().all_reduce(t, tag, wire)
        self._done()
        return out

    def all_to_all(self, parts, recv_shapes, tag=""):
        self.drain()  # started collectives end first (their waits are events of their own)
        self._note("all_to_all", tag, (parts, recv_shapes))
        out = super().all_to_all(parts, recv_shapes, tag)
        self._done()
        return out

    # a started collective is two events: its post (``args["async"]`` numbers it within the inference) and the
    # moment the rank waits for it (op ``wait``), each with the compute before it
    def block_mark(self, tag: str) -> None:
        """Note where a block (``block{i}``) or the model's end (``end``) begins: a ``mark`` pseudo-call, which
        ``repeat_blocks`` uses and removes (a saved profile has none)."""
        self.sync()
        now = time.perf_counter()
        self.calls.append(Call(now - self.mark, "mark", tag, {}))
        self.mark = now

    def _posting(self, op, tag, args):
        self._note(op, tag, args)
        self.calls[-1].args["async"] = sum(1 for c in self.calls if c.op not in ("wait", "mark")) - 1

    def _posted(self, p):
        p.number = self.calls[-1].args["async"]
        self._done()

    def _waiting(self, p):
        self.sync()
        now = time.perf_counter()
        self.calls.append(Call(now - self.mark, "wait", p.tag, {"async": p.number}))

    def _waited(self, p):
        self._done()


def median_profile(runs: list[tuple[list[Call], float]], rank: int) -> RankProfile:
    """One rank's profile from several recorded inferences: the same calls every time (checked), each segment's
    median compute."""
    first = runs[0][0]
    for calls, _ in runs[1:]:
        if [(c.op, c.tag, c.args) for c in calls] != [(c.op, c.tag, c.args) for c in first]:
            raise RuntimeError(f"rank {rank} made different calls in two inferences: its plan is not deterministic")
    calls = [Call(statistics.median(run[0][i].compute_s for run in runs), c.op, c.tag, c.args)
             for i, c in enumerate(first)]
    return RankProfile(rank, calls, statistics.median(tail for _, tail in runs))


def repeat_blocks(profile: RankProfile, layers: int) -> RankProfile:
    """A rank's profile recorded on a shallower model with ``mark`` calls at each block's start and at the end of
    the blocks, as the same rank of the model ``layers`` blocks deep: the last recorded block (its compute and its
    calls, tags ``block{i}...`` renamed) repeated up to the depth, the marks folded into the compute after them, and
    the started collectives renumbered. The first block keeps its own segments (it also holds what runs once, such
    as a plan's first-inference setup)."""
    import re

    calls, marks = profile.calls, [i for i, c in enumerate(profile.calls) if c.op == "mark"]
    blocks = [i for i in marks if calls[i].tag.startswith("block")]
    end = next((i for i in marks if calls[i].tag == "end"), None)
    if len(blocks) < 2 or end is None or calls[blocks[-1]].tag != f"block{len(blocks) - 1}":
        raise RuntimeError(f"rank {profile.rank}: the recording has no block marks to repeat (a method that runs "
                           "its blocks without their first norm)")
    last = len(blocks) - 1
    body = calls[blocks[-1]:end]
    out = calls[:end]
    for i in range(last + 1, layers):
        out += [Call(c.compute_s, c.op, re.sub(rf"^block{last}(?=\.|$)", f"block{i}", c.tag), dict(c.args))
                for c in body]
    out += calls[end:]
    merged, carry, numbers, count = [], 0.0, {}, 0
    for c in out:
        if c.op == "mark":
            carry += c.compute_s
            continue
        args = dict(c.args)
        if "async" in args:
            if c.op == "wait":
                args["async"] = numbers[args["async"]]
            else:
                numbers[args["async"]] = count
                args["async"] = count
        count += c.op != "wait"
        merged.append(Call(c.compute_s + carry, c.op, c.tag, args))
        carry = 0.0
    return RankProfile(profile.rank, merged, profile.tail_s + carry)


# -------------------------------------------------------------------------------------------------- replaying
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8,
          "uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64}


def issue(comm: Comm, call: Call, buffers: dict, pending: dict | None = None) -> None:
    """Make ``call`` on ``comm`` with zero buffers of its recorded shapes (made once per call and kept in
    ``buffers``), so it moves exactly the recorded bytes. A started call (``args["async"]``) is kept in ``pending``
    until its ``wait``."""
    a = call.args
    if call.op == "wait":
        pending.pop(a["async"]).wait()
        return
    key = id(call)
    if key not in buffers:
        dtype = DTYPES[a["dtype"]]
        if call.op == "all_to_all":
            buffers[key] = ([torch.zeros(s, dtype=dtype) for s in a["parts"]], [tuple(s) for s in a["recv_shapes"]])
        elif call.op == "reduce_scatter":
            buffers[key] = [torch.zeros(s, dtype=dtype) for s in a["parts"]]
        else:
            buffers[key] = torch.zeros(a["shape"], dtype=dtype)
    buf = buffers[key]
    if "async" in a:
        start = {"all_gather": comm.start_all_gather, "reduce_scatter": comm.start_reduce_scatter,
                 "shift": comm.start_shift}[call.op]
        pending[a["async"]] = start(buf, call.tag)
    elif call.op == "all_gather":
        comm.all_gather(buf, call.tag)
    elif call.op == "all_reduce":
        comm.all_reduce(buf, call.tag, a.get("wire", "fp32"))
    else:
        comm.all_to_all(buf[0], buf[1], call.tag)


def payload_bytes(call: Call) -> int:
    """What the rank hands to the collective, as ``Comm`` counts it (``payload_bytes``)."""
    from harness.comm.wire import row_bytes

    a = call.args
    if call.op == "wait":
        return 0
    size = torch.empty((), dtype=DTYPES[a["dtype"]]).element_size()
    if call.op in ("all_to_all", "reduce_scatter"):
        return sum(size * _numel(s) for s in a["parts"])
    if call.op == "all_reduce" and a.get("wire", "fp32") != "fp32":
        rows = _numel(a["shape"][:-1])
        return rows * row_bytes(a["shape"][-1], a["wire"])
    return size * _numel(a["shape"])


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def reports(profile: Profile) -> list[dict]:
    """Rank reports as a replay would make them with the network answering in no time: each rank's compute and
    its calls (op, tag, payload bytes) — what the analytic backend charges its formula on."""
    world = len(profile.ranks)
    out = []
    for r in profile.ranks:
        calls = [c for c in r.calls if c.op != "wait"]
        records = [[c.op, c.tag, payload_bytes(c) if world > 1 else 0, 0.0, None] for c in calls]
        events = [[c.compute_s, "wait" if c.op == "wait" else "post" if "async" in c.args else "call",
                   c.args.get("async"), c.op, payload_bytes(c) if world > 1 else 0] for c in r.calls]
        out.append({"rank": r.rank, "world": world, "latency_s": [r.compute_s], "comm_s": [0.0], "records": records,
                    "payload_bytes": sum(rec[2] for rec in records), "max_abs_err": None, "wire_bytes": None,
                    "warmups": 0, "solo_compute_s": [r.compute_s], "events": events, "tail_s": r.tail_s})
    return out
