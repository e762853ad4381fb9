"""``astra-calibrate``: how close the emulated links come to their configured rate (needs root and Mininet).

Builds the same two-host network the benchmarks use (star, HTB shaping as in ``network=mininet``), runs iperf3
between the hosts at each rate and records achieved/configured throughput — TCP goodput as iperf3 reports it, and
the sender's wire rate from its interface counters (headers included) — into a CSV next to the results, so every
figure can state its network's fidelity.

    astra-calibrate --rates 10,100,1000 --seconds 5 --out results/link_calibration.csv
    astra-calibrate --stock --rates 10,100      # stock Mininet TCLink shaping, for comparison
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.errors import ConfigError, RunFailed, atomic_write


def measure(session, seconds: float) -> dict:
    h1, h2 = session.hosts
    server = h2.popen(["iperf3", "-s", "-1", "-J"])
    try:
        time.sleep(0.3)  # let the server bind (start-up, not a measurement)
        tx0 = int(h1.cmd("cat /sys/class/net/astrh1-eth0/statistics/tx_bytes"))
        out = h1.cmd(f"iperf3 -c {h2.IP()} -t {seconds} -J")
        tx1 = int(h1.cmd("cat /sys/class/net/astrh1-eth0/statistics/tx_bytes"))
    finally:
        try:
            server.wait(timeout=10)
        except Exception:  # noqa: BLE001 - stop our own server by PID if it did not exit
            server.kill()
            server.wait()
    res = json.loads(out)["end"]
    recv = res["sum_received"]
    return {"goodput_mbps": recv["bits_per_second"] / 1e6,
            "wire_mbps": (tx1 - tx0) * 8 / res["sum_sent"]["seconds"] / 1e6,
            "retransmits": res["sum_sent"].get("retransmits")}


def calibrate(rates: list[float], seconds: float, burst_ms: float, topology: str = "star",
              stock: bool = False) -> pd.DataFrame:
    from harness.network.mininet.session import MininetOptions, open_session

    rows = []
    net_cfg = MininetOptions(bandwidth_mbps=rates[0], htb_burst_ms=burst_ms, htb_stock=stock)
    with tempfile.TemporaryDirectory(prefix="astra-calibrate-") as wd, \
            open_session(topology, 2, 1.0, 1, net_cfg, Path(wd), workers=False) as session:
        for bw in rates:
            session.apply(net_cfg, [bw, bw])
            m = measure(session, seconds)
            rows.append({"topology": topology, "shaping": "mininet-stock" if stock else "astra-bench",
                         "configured_mbps": bw, "htb_burst_ms": None if stock else burst_ms, **m,
                         "goodput_ratio": m["goodput_mbps"] / bw, "wire_ratio": m["wire_mbps"] / bw,
                         "seconds": seconds,
                         "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            print(f"{bw:7g} Mbit/s: goodput {m['goodput_mbps']:8.2f} ({m['goodput_mbps'] / bw:.3f}), "
                  f"wire {m['wire_mbps']:8.2f} ({m['wire_mbps'] / bw:.3f})", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="astra-calibrate", description=__doc__.split("\n\n")[0],
                                 epilog="examples:\n" + __doc__.split("\n\n")[-1].rstrip('"\n'),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="10,100,1000", help="link rates to measure, Mbit/s, comma separated, each in "
                    "(0, 1000] (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 run per rate (default: %(default)s)")
    ap.add_argument("--burst-ms", type=float, default=10.0, help="HTB burst in ms of the rate, as "
                    "network.htb_burst_ms (default: %(default)s)")
    ap.add_argument("--topology", default="star", choices=["star", "mesh"], help="as topology= (default: star)")
    ap.add_argument("--stock", action="store_true", help="shape like stock Mininet TCLink (for comparison)")
    ap.add_argument("--out", default="results/link_calibration.csv", help="CSV the rows are appended to "
                    "(default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        try:
            rates = [float(r) for r in args.rates.split(",")]
        except ValueError:
            raise ConfigError(f"--rates {args.rates} is not a list of numbers: e.g. --rates 10,100,1000") from None
        if any(not 0 < r <= 1000 for r in rates):
            raise ConfigError(f"--rates {args.rates}: every rate must be in (0, 1000] Mbit/s")
        if not 0 < args.seconds <= 600 or not 0 < args.burst_ms <= 1000:
            raise ConfigError("--seconds must be in (0, 600] and --burst-ms in (0, 1000]")
        if Path(args.out).suffix != ".csv" or Path(args.out).is_dir():
            raise ConfigError(f"--out {args.out} must name a .csv file")
        df = calibrate(rates, args.seconds, args.burst_ms, args.topology, args.stock)
    except (ConfigError, RunFailed) as exc:
        print(f"astra-calibrate: error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        df = pd.concat([pd.read_csv(out), df], ignore_index=True)
    atomic_write(out, lambda tmp: df.to_csv(tmp, index=False))
    print(df.tail(len(rates)).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
