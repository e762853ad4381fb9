"""Live bandwidth changes benchmark (needs root + Mininet): how soon a ``tc class change`` takes effect on a link
that is busy with a TCP bulk transfer (target: within 100 ms).

Builds a 2-host star shaped as ``network=mininet`` does (HTB, 10 ms burst, reno), runs iperf3 from host 1 to host 2
and, while it runs, changes host 1's rate through ``Session.apply`` (what ``network.trace`` does) at fixed times:
down (e.g. 100 -> 10 Mbit/s) and up again. The bytes host 1 puts on its link are read from the bridge port's
``rx_bytes`` in the root namespace every 2 ms. Per change it prints how long ``Session.apply`` took, and the time
from the moment the change was issued to the start of the first 50 ms window whose rate is within 10 % of the new
rate (in effect), and to the first of four such windows in a row (held: TCP has adapted to it too). Repeated
``--rounds`` times; medians and max.

    python benchmarks/trace_change.py                        # 100 <-> 10 Mbit/s, 5 rounds
    python benchmarks/trace_change.py --rates 80,20 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

WINDOW_S = 0.05
TOL = 0.10


def settle(samples: list[tuple[float, int]], t_change: float, mbps: float, hold: int = 1) -> float | None:
    """Seconds from ``t_change`` to the first 50 ms window (slid by one sample) at the new rate ±10 % (``hold``:
    and the ``hold`` - 1 windows after it too); None if it never does. The rate is what HTB counts: frames on the
    wire."""
    times = [t for t, _ in samples]
    target = mbps * 1e6 / 8

    def rate(t0: float) -> float | None:
        i = next((j for j, t in enumerate(times) if t >= t0), None)
        k = next((j for j, t in enumerate(times) if t >= t0 + WINDOW_S), None)
        if i is None or k is None or times[k] == times[i]:
            return None
        return (samples[k][1] - samples[i][1]) / (times[k] - times[i])

    for t, _ in samples:
        if t < t_change:
            continue
        rs = [rate(t + m * WINDOW_S) for m in range(hold)]
        if None in rs:
            return None
        if all(abs(r / target - 1) <= TOL for r in rs):
            return t - t_change
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="100,10", help="high,low Mbit/s")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hold", type=float, default=1.5, help="seconds at each rate")
    args = ap.parse_args()
    hi, lo = (float(x) for x in args.rates.split(","))

    from harness.network.mininet.session import MininetOptions, open_session

    results = {"down": [], "up": [], "down_held": [], "up_held": [], "apply_ms": []}
    opts = MininetOptions(bandwidth_mbps=hi, htb_burst_ms=10)
    with tempfile.TemporaryDirectory(prefix="astra-trace-change-") as wd, \
            open_session("star", 2, 0.8, 1, opts, Path(wd), workers=False) as session:
        procs: list[subprocess.Popen] = []
        try:
            h1, h2 = session.hosts
            port = next(intf for node, intf, idx in session.shaped if idx == 0 and node not in session.hosts)
            counter = Path(f"/sys/class/net/{port}/statistics/rx_bytes")
            procs.append(h2.popen(["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.5)
            total = 1.0 + args.rounds * 2 * args.hold + 1.0
            procs.append(h1.popen(["iperf3", "-c", h2.IP(), "-t", f"{total:.0f}", "-C", "reno"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            samples: list[tuple[float, int]] = []
            changes: list[tuple[float, str, float]] = []
            start = time.monotonic()
            plan = [(1.0 + i * args.hold, "down" if i % 2 == 0 else "up") for i in range(2 * args.rounds)]
            while time.monotonic() - start < total - 0.5:
                now = time.monotonic()
                samples.append((now, int(counter.read_text())))
                if plan and now - start >= plan[0][0]:
                    _, kind = plan.pop(0)
                    rate = lo if kind == "down" else hi
                    t0 = time.monotonic()
                    session.apply(opts, [rate, rate])
                    results["apply_ms"].append(1e3 * (time.monotonic() - t0))
                    changes.append((t0, kind, rate))
                time.sleep(0.002)
            for t0, kind, rate in changes:
                results[kind].append(settle(samples, t0, rate))
                results[kind + "_held"].append(settle(samples, t0, rate, hold=4))
        finally:
            for p in procs:  # ours, by handle
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(timeout=3)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()

    def show(vals):
        ok = [1e3 * v for v in vals if v is not None]
        miss = len(vals) - len(ok)
        if not ok:
            return f"never settled ({miss} of {len(vals)})"
        return (f"median {statistics.median(ok):.0f} ms, max {max(ok):.0f} ms over {len(ok)} changes"
                + (f"; {miss} never settled" if miss else ""))

    print(f"## live rate changes on a busy link (iperf3, reno), {hi:g} <-> {lo:g} Mbit/s, {args.rounds} rounds\n")
    print(f"- tc class change on the link's two interfaces (Session.apply): median "
          f"{statistics.median(results['apply_ms']):.1f} ms, max {max(results['apply_ms']):.1f} ms")
    for kind, what in (("down", f"{hi:g} -> {lo:g}"), ("up", f"{lo:g} -> {hi:g}")):
        print(f"- change {kind} ({what}): in effect (a 50 ms window at the new rate ±10 %) after "
              f"{show(results[kind])}; held for 200 ms after {show(results[kind + '_held'])}")


if __name__ == "__main__":
    main()
