"""Network benchmark (needs root + Mininet): link fidelity, harness overhead, ASTRA on Mininet, analytic vs Mininet.

Prints, in order:
1. link calibration: achieved/configured TCP goodput at 10/100/1000 Mbit/s, our HTB shaping vs stock Mininet's;
2. harness overhead per session: topology up, worker start (Python + torch import), teardown;
3. for ``--model`` at ``--tokens`` with 2 one-core devices: single, sp and astra on Mininet at 10 and 100 Mbit/s,
   astra's speedup over single and over sp, astra's latency against its compute-bound ideal (its own per-rank
   compute, measured alone), and the same points on the analytic backend with the gap per point.

    python benchmarks/network.py                      # ViT-Base, 1024 tokens (~10 min on 2 cores)
    python benchmarks/network.py --tokens 196 --seconds 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from harness.bench import run_point
from harness.calibrate import calibrate
from harness.network.mininet.session import MininetOptions, close_session, open_session
from harness.spec.build import compose


def point(overrides: list[str]) -> dict:
    return run_point(compose(overrides), sweep=False)


def overhead(repeats: int = 3) -> pd.DataFrame:
    rows = []
    net_cfg = MininetOptions(bandwidth_mbps=100, htb_burst_ms=10)
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="astra-overhead-") as wd, \
                open_session("star", 2, 1.0, 1, net_cfg, Path(wd)) as s:
            pass
        rows.append({"topology_up_s": s.topology_s, "workers_start_s": s.workers_s, "teardown_s": s.teardown_s,
                     "total_s": s.setup_s + s.teardown_s})
    return pd.DataFrame(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration per rate")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "bench"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    print("## 1. link calibration (iperf3 TCP goodput / configured rate)\n")
    cal = pd.concat([calibrate([10, 100, 1000], args.seconds, 10.0),
                     calibrate([10, 100, 1000], args.seconds, 10.0, stock=True)])
    cal.to_csv(out / "link_calibration.csv", index=False)
    print(cal.pivot(index="configured_mbps", columns="shaping", values="goodput_ratio").to_markdown(floatfmt=".3f"))

    print("\n## 2. harness overhead per session (2 hosts)\n")
    ov = overhead()
    print(ov.to_markdown(index=False, floatfmt=".2f"))
    print(f"\nmedian: topology up {ov.topology_up_s.median():.2f} s, worker start {ov.workers_start_s.median():.2f} s,"
          f" teardown {ov.teardown_s.median():.2f} s; a sweep pays this once per (topology, N, device), later points"
          " reuse hosts and workers (setup_s = 0)")

    print(f"\n## 3. {args.model}, {args.tokens} tokens, 2 one-core devices\n")
    base = [f"model={args.model}", f"tokens={args.tokens}", f"repeats={args.repeats}", "warmup=1", "devices=2",
            f"results.path={out / 'network_bench.parquet'}", "method.groups=1", "method.codebook_size=1024"]
    rows = []
    for net in ("mininet", "analytic"):
        rows.append(point(base + [f"network={net}", "method=single"]))
        for bw in (10, 100):
            for method in ("sp", "astra"):
                rows.append(point(base + [f"network={net}", f"network.bandwidth_mbps={bw}", f"method={method}"]))
    close_session()  # the backend keeps its last session up for the next point
    df = pd.DataFrame(rows)
    cols = ["network", "method", "bandwidth_mbps", "latency_ms", "compute_ms", "comm_ms", "payload_bytes",
            "wire_bytes"]
    print(df[cols].to_markdown(index=False, floatfmt=".1f"))

    def get(net, method, bw=None):
        sel = df[(df.network == net) & (df.method == method)]
        if bw is not None:
            sel = sel[sel.bandwidth_mbps == bw]
        return sel.iloc[0]

    single = get("mininet", "single").latency_ms
    a10, s10 = get("mininet", "astra", 10), get("mininet", "sp", 10)
    ideal = get("analytic", "astra", 10).compute_ms
    print(f"\nastra at 10 Mbit/s: {a10.latency_ms:.0f} ms; speedup over single {single / a10.latency_ms:.2f}x, "
          f"over sp {s10.latency_ms / a10.latency_ms:.1f}x")
    print(f"astra latency / compute-bound ideal (its per-rank compute measured alone, {ideal:.0f} ms): "
          f"{a10.latency_ms / ideal:.3f} (target <= 1.05)")
    print("\nanalytic vs mininet (latency; gap = mininet / analytic - 1; target within 15 %):\n")
    gaps = []
    for method, bw in (("single", None), ("sp", 10), ("sp", 100), ("astra", 10), ("astra", 100)):
        m, a = get("mininet", method, bw).latency_ms, get("analytic", method, bw).latency_ms
        gaps.append({"method": method, "bandwidth_mbps": bw, "mininet_ms": m, "analytic_ms": a, "gap": m / a - 1})
    print(pd.DataFrame(gaps).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
