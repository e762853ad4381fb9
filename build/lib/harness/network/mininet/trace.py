"""Bandwidth traces: link rates that change while a stream of requests runs (``network.trace``, ``stream_s``).

A trace is a step function of emulated time: from ``times[i]`` on, host h's links run at ``rates[i][h]`` Mbit/s.
Two sources:

- a CSV file: a header, then rows ``time_s,mbps`` (one rate for every host) or ``time_s,<one column per host>``;
  times in seconds from the start of the stream, strictly increasing, the first 0; rates in (0, 1000].
- ``markov``: a synthetic trace from a Markov chain over ``trace_states`` (Mbit/s) in the style of Pensieve's
  synthetic traces (Mao et al., SIGCOMM 2017), which the paper's Fig. 11 uses with states between 20 and 100 Mbit/s
  and transitions biased towards neighbouring states: every ``trace_step_s`` the chain stays with probability 1/2,
  otherwise it moves to another state j with probability proportional to 2^-|i-j| (a neighbour is twice as likely
  as the state two steps away); the first state is drawn uniformly; everything from ``seed``. One chain for all
  hosts (the paper's network has one rate).

The Mininet backend applies each step live with ``tc class change`` (each rate ÷ the dilation k, at real time
k·t after the stream starts).
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError

MARKOV = "markov"


@dataclass
class Trace:
    name: str  # "markov" or the CSV path
    times: list[float]  # emulated seconds, strictly increasing, times[0] == 0
    rates: list[list[float]]  # per step, one rate per host (Mbit/s)

    def at(self, t: float) -> list[float]:
        """The rates in force at emulated time ``t``."""
        i = max(j for j, s in enumerate(self.times) if s <= t) if t >= 0 else 0
        return self.rates[i]

    def changes(self, duration_s: float) -> list[tuple[float, list[float]]]:
        """(time, rates) of every step after the first that starts before ``duration_s``, skipping repeats."""
        out, last = [], self.rates[0]
        for t, r in zip(self.times[1:], self.rates[1:]):
            if t >= duration_s:
                break
            if r != last:
                out.append((t, r))
                last = r
        return out

    def all_rates(self) -> list[float]:
        return [x for r in self.rates for x in r]

    def rows(self, duration_s: float) -> list[dict]:
        """The steps that fall within the stream, as rows (kind ``trace``) of the per-request side table."""
        return [{"kind": "trace", "time_s": t, "mbps": min(r), "mbps_per_host": list(r)}
                for t, r in zip(self.times, self.rates) if t < duration_s]


def mean_rates(trace: Trace, duration_s: float) -> list[float]:
    """Each host's time-weighted mean rate over the first ``duration_s`` seconds."""
    ends = [*trace.times[1:], float("inf")]
    total = [0.0] * len(trace.rates[0])
    for t, end, r in zip(trace.times, ends, trace.rates):
        span = max(0.0, min(end, duration_s) - t)
        total = [a + span * x for a, x in zip(total, r)]
    return [a / duration_s for a in total]


def markov(states: list[float], step_s: float, duration_s: float, seed: int, hosts: int) -> Trace:
    rng = random.Random(seed)
    n = len(states)
    i = rng.randrange(n)
    times, rates = [], []
    steps = max(1, math.ceil(duration_s / step_s))
    for s in range(steps):
        times.append(s * step_s)
        rates.append([float(states[i])] * hosts)
        if n > 1 and rng.random() >= 0.5:
            others = [j for j in range(n) if j != i]
            i = rng.choices(others, weights=[2.0 ** -abs(i - j) for j in others])[0]
    return Trace(MARKOV, times, rates)


def load_csv(path: str, hosts: int, max_mbps: float) -> Trace:
    p = Path(path)
    where = f"network.trace={path}"
    if not p.is_file():
        raise ConfigError(f"{where}: no such file: pass a CSV file (time_s,mbps or time_s and one column per host) "
                          "or network.trace=markov")
    try:
        with open(p, newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot be read as CSV ({exc}): pass a text CSV file") from None
    if len(rows) < 2:
        raise ConfigError(f"{where}: needs a header and at least one row (time_s,mbps)")
    width = len(rows[0])
    if width not in (2, hosts + 1):
        raise ConfigError(f"{where}: has {width - 1} rate column(s); use one (for every host) or {hosts} (one per "
                          "host, in host order)")
    times, rates = [], []
    for n, r in enumerate(rows[1:], start=2):
        if len(r) != width:
            raise ConfigError(f"{where}: line {n} has {len(r)} fields, the header {width}: give every row the "
                              "header's columns")
        try:
            vals = [float(x) for x in r]
        except ValueError:
            raise ConfigError(f"{where}: line {n} has a non-number ({','.join(r)}): times and rates must be "
                              "numbers") from None
        t, rs = vals[0], vals[1:]
        if not all(math.isfinite(v) for v in vals):
            raise ConfigError(f"{where}: line {n} has a non-finite value: times and rates must be finite")
        if times and t <= times[-1]:
            raise ConfigError(f"{where}: times are not strictly increasing at line {n} ({t:g} after "
                              f"{times[-1]:g}): sort the rows by time_s")
        bad = [x for x in rs if not 0 < x <= max_mbps]
        if bad:
            raise ConfigError(f"{where}: line {n} has a rate of {bad[0]:g} Mbit/s, outside (0, {max_mbps:g}]: "
                              "use rates in that range")
        times.append(t)
        rates.append(rs * hosts if len(rs) == 1 else rs)
    if times[0] != 0:
        raise ConfigError(f"{where}: the first row is at {times[0]:g} s: start the trace at time_s=0")
    return Trace(str(p.resolve()), times, rates)


def build(net, hosts: int, duration_s: float, seed: int, max_mbps: float) -> Trace | None:
    """The trace of ``net`` (a backend's options with ``trace``, ``trace_states``, ``trace_step_s``), or None."""
    if not getattr(net, "trace", None):
        return None
    if net.trace == MARKOV:
        raw = net.trace_states
        states = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        try:
            rates = [float(x) for x in states]
        except (TypeError, ValueError):
            rates = []
        if not rates or any(not 0 < r <= max_mbps for r in rates):
            raise ConfigError(f"network.trace_states={raw}: give one or more rates in (0, {max_mbps:g}] Mbit/s")
        return markov(rates, float(net.trace_step_s), duration_s, seed, hosts)
    return load_csv(net.trace, hosts, max_mbps)


def write_csv(trace: Trace, path: str | Path) -> None:
    """A trace as the CSV ``load_csv`` reads (one column per host)."""
    hosts = len(trace.rates[0])
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time_s", *[f"h{i + 1}" for i in range(hosts)]])
        for t, r in zip(trace.times, trace.rates):
            w.writerow([f"{t:g}", *[f"{x:g}" for x in r]])
