"""The baselines that overlap communication with compute (``ring_attn``, ``galaxy``) beside the paper's (``tp``,
``sp``) and ASTRA, on the emulated network and in the analytic overlap model, in one run:

    sudo python benchmarks/overlap.py [--devices 2,4] [--bandwidths 10,100,1000] [--backends mininet,analytic] [--rerun]
    python benchmarks/overlap.py --backends analytic                      (no root: the model alone)
    python benchmarks/overlap.py --tiles 1,2,4,8,16 --backends analytic  (galaxy's tile count)

ViT-Base, 1024 tokens (``experiment=overlap``: one-core devices, time-dilated on Mininet). Prints, per device count
and bandwidth, every method's speedup over the single device, the share of its communication that ran hidden under
compute (``comm_hidden_ms`` ÷ (``comm_hidden_ms`` + ``comm_ms``)), ASTRA over the fastest other method, and, for
every Mininet point, the analytic model's latency for it — the ``analytic`` backend's row (each device count's
compute profile scaled to the speed its Mininet single device showed, ``--analytic-compute``; TCP/IP framing charged:
``network.wire_overhead``) and the row's own ``analytic_wire_ms`` (the timeline fed with the point's own compute,
frames counted) — with the gap to the measured latency. Both charge the CPU the emulated hosts spend per byte moved
(``device.cpu_ns_per_byte``, ``--cpu-ns-per-byte``). With ``--tiles``, galaxy runs once per tile count. Rows go to ``--store`` (default
``results/overlap/overlap.parquet``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from harness.comm.cost import TCP_FRAMING
from harness.report.compare import over_best_baseline
from harness.report.plot import add_labels, latest_points
from harness.store.results import load

ROOT = Path(__file__).resolve().parents[1]
METHODS = "single,tp,galaxy,sp,ring_attn,astra"
CPU_NS_PER_BYTE = 2.1  # the emulated hosts at 1000 Mbit/s, 2 and 4 hosts: benchmarks/exchange.py --shard-bytes 4000000


def label_of(config: str) -> str:
    m = json.loads(config)["method"]
    return f"galaxy tiles={m['tiles']}" if m["name"] == "galaxy" else m["name"]


def setting(df: pd.DataFrame, section: str, key: str, default=None) -> pd.Series:
    """Each row's ``section.key`` from its stored config (``default`` in rows stored before the option)."""
    return df["config"].map(lambda c: json.loads(c).get(section, {}).get(key, default))


def cpu_charged(df: pd.DataFrame) -> pd.Series:
    """Each row's ``device.cpu_ns_per_byte`` (0 in rows stored before the option)."""
    return setting(df, "device", "cpu_ns_per_byte", 0.0)


def points_of(store: Path, fifo: bool = False) -> pd.DataFrame:
    """The store's latest ok points of the benchmark's model and token count; of Mininet's, those whose links had
    the chosen queueing (one FIFO, or acknowledgements in a priority class: rows stored before the option had a
    FIFO)."""
    df = latest_points(load(store))
    return of_queueing(df[(df["status"] == "ok") & (df["model"] == "vit_base") & (df["tokens"] == 1024)], fifo)


def of_queueing(df: pd.DataFrame, fifo: bool) -> pd.DataFrame:
    """The rows of other backends, the single devices (no links: one point whatever the queueing), and Mininet's
    whose links had one FIFO (``fifo``) or the priority class for acknowledgements (rows stored before
    ``network.htb_ack_class`` existed had a FIFO)."""
    had_fifo = ~setting(df, "network", "htb_ack_class", False).astype(bool)
    return df[(df["network"] != "mininet") | (df["devices"] <= 1) | (had_fifo == fifo)].copy()


def latest_model(df: pd.DataFrame) -> pd.DataFrame:
    """Of the analytic rows, the latest of each method, device count and bandwidth, and the single devices they were
    scaled to (``device.reference_ms``): earlier runs, scaled to other single devices, are left out."""
    model = df[df["network"] == "analytic"].sort_values("timestamp")
    multi = model[model["devices"] > 1].drop_duplicates(["variant", "devices", "bandwidth_mbps"], keep="last")
    refs = set(setting(multi, "device", "reference_ms").map(repr))
    single = model[(model["devices"] == 1) & setting(model, "device", "reference_ms").map(repr).isin(refs)]
    return pd.concat([df[df["network"] != "analytic"], multi, single])


def mininet_single_ms(df: pd.DataFrame, devices: int, cpu_ns_per_byte: float) -> float | None:
    """The latency of the single device that the Mininet points (of ``points_of``) at ``devices`` devices divide
    (their ``baseline_key``: the same quota and dilation), latest first; None without such points."""
    df = df[df["network"] == "mininet"]
    points = df[(df["devices"] == devices) & (cpu_charged(df) == cpu_ns_per_byte)].sort_values("timestamp")
    for key in reversed(points["baseline_key"].tolist()):
        single = df[(df["timing_key"] == key) & (df["devices"] == 1)].sort_values("timestamp")
        if len(single):
            return float(single["latency_ms"].iloc[-1])
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="2,4")
    ap.add_argument("--bandwidths", default="10,100,1000")
    ap.add_argument("--backends", default="mininet,analytic")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--tiles", default=None, help="galaxy tile counts to sweep (default: galaxy's default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-ns-per-byte", type=float, default=CPU_NS_PER_BYTE,
                    help="the emulated hosts' CPU per byte sent or received (device.cpu_ns_per_byte) that the model "
                         "charges, the analytic backend and the rows' own timeline alike; measured by "
                         "benchmarks/exchange.py --shard-bytes 4000000 (0: the paper's model)")
    ap.add_argument("--analytic-compute", choices=("mininet", "measured"), default="mininet",
                    help="the analytic backend's compute. mininet: each device count's compute profile (recorded "
                         "here, device.compute=replay) scaled so that its single device takes what the Mininet "
                         "single device of that device count took (device.profile=reference): the model is fed the "
                         "emulated device's speed, so the comparison tests the network and overlap model and not "
                         "this machine's drift between the two halves; measured: compute profiled apart, unscaled")
    ap.add_argument("--store", type=Path, default=ROOT / "results" / "overlap" / "overlap.parquet")
    ap.add_argument("--fifo", action="store_true",
                    help="Mininet links with one FIFO per direction (network.htb_ack_class=false) instead of the "
                         "default priority class for acknowledgements; the tables show the rows of the chosen one")
    ap.add_argument("--no-run", action="store_true", help="only print the tables of the store")
    ap.add_argument("--rerun", action="store_true",
                    help="measure points the store already holds again (results.skip_existing=false)")
    args = ap.parse_args()
    backends = args.backends.split(",")
    common = ["experiment=overlap", f"devices={args.devices}", f"network.bandwidth_mbps={args.bandwidths}",
              f"method={args.methods}", f"repeats={args.repeats}", f"results.path={args.store}",
              "results.allow_failures=true", f"device.cpu_ns_per_byte={args.cpu_ns_per_byte!r}"]
    if args.rerun:
        common.append("results.skip_existing=false")
    if args.tiles:
        common.append(f"++method.tiles={args.tiles}")
    took = {}
    if not args.no_run:
        for backend in backends:
            t0 = time.perf_counter()
            # the model charges the frames the emulated links carry, as the rows' own timeline does
            framing = [f"network.wire_overhead={TCP_FRAMING!r}"] if backend == "analytic" else []
            if backend == "mininet" and args.fifo:
                framing = ["network.htb_ack_class=false"]
            runs = [[]]
            if backend == "analytic" and args.analytic_compute == "mininet":
                runs = []
                stored = points_of(args.store, args.fifo) if args.store.exists() else None
                for n in args.devices.split(","):
                    ms = None if stored is None else mininet_single_ms(stored, int(n), args.cpu_ns_per_byte)
                    if ms is None:
                        print(f"overlap.py: no Mininet point at {n} devices in {args.store} to take the device's "
                              "speed from: run the mininet backend first, or --analytic-compute measured",
                              file=sys.stderr)
                        return 2
                    runs.append([f"devices={n}", "device.compute=replay", "device.profile=reference",
                                 f"device.reference_ms={ms:.6g}"])
            for extra in runs:
                subprocess.run([sys.executable, "-m", "harness.bench", "-m", *common, f"network={backend}", *framing,
                                *extra], cwd=ROOT, check=False)
            took[backend] = time.perf_counter() - t0
    df = points_of(args.store, args.fifo)
    df["variant"] = df["config"].map(label_of)
    df = df[cpu_charged(df) == args.cpu_ns_per_byte]  # the rows of this setting of the model
    replayed = setting(df, "device", "compute") == "replay"
    df = df[(df["network"] != "analytic") | (replayed == (args.analytic_compute == "mininet"))]
    df = latest_model(df)
    for backend in backends:
        part = df[df["network"] == backend]
        if part.empty:
            continue
        part = add_labels(part.drop(columns="label"))  # labels that tell this backend's points apart
        single = part[part["method"] == "single"]
        print(f"\n## {backend}: speedup over one device (hidden share of communication)"
              + (f", {took[backend]:.0f} s" if backend in took else "")
              + (f"; single {float(single['latency_ms'].iloc[-1]):.0f} ms" if len(single) else "") + "\n")
        rows = []
        for (devices, variant), g in part[part["method"] != "single"].groupby(["devices", "variant"]):
            row = {"N": devices, "method": variant}
            for _, r in g.sort_values("bandwidth_mbps").iterrows():
                hid, comm = float(r.get("comm_hidden_ms") or 0), float(r["comm_ms"] or 0)
                share = f" ({100 * hid / (hid + comm):.0f} %)" if hid + comm > 0 and hid > 0 else ""
                flag = "" if r.get("fidelity") in (None, "ok") or pd.isna(r.get("fidelity")) else " *"
                row[f"{r['bandwidth_mbps']:g} Mbit/s"] = f"{r['speedup']:.3g}{share}{flag}"
            rows.append(row)
        print(pd.DataFrame(rows).to_markdown(index=False))
        best = over_best_baseline(part)
        if not best.empty:
            print("\nASTRA over the fastest other method:\n")
            print(best[["devices", "bandwidth_mbps", "speedup", "best_baseline", "best_speedup", "over_best",
                        "resolved"]].to_markdown(index=False, floatfmt=".3g"))
    emu, model = df[df["network"] == "mininet"], df[df["network"] == "analytic"]
    framed = setting(model, "network", "wire_overhead") == TCP_FRAMING
    model = model[framed] if framed.any() else model  # rows of older runs charged the payload alone
    if not emu.empty:
        key = ["variant", "devices", "bandwidth_mbps"]
        both = emu.merge(model[[*key, "latency_ms"]].rename(columns={"latency_ms": "analytic_backend_ms"}), on=key,
                         how="left")
        both = both[both["method"] != "single"]
        out = pd.DataFrame({
            "N": both["devices"], "Mbit/s": both["bandwidth_mbps"], "method": both["variant"],
            "mininet ms": both["latency_ms"], "hidden ms": both["comm_hidden_ms"],
            "analytic backend ms": both["analytic_backend_ms"],
            "gap": both["analytic_backend_ms"] / both["latency_ms"] - 1,
            "own timeline ms": both["analytic_wire_ms"], "own gap": both["analytic_wire_ms"] / both["latency_ms"] - 1,
            "fidelity": both["fidelity"]}).sort_values(["N", "Mbit/s", "method"])
        print("\n## the analytic overlap model against Mininet\n")
        print(out.to_markdown(index=False, floatfmt=".3g"))
        faithful = out["fidelity"] == "ok"
        for col in ("gap", "own gap"):
            g, ok = out[col].abs(), out[col].notna()
            if ok.any():
                print(f"{col}: {int((g[ok] <= 0.10).sum())}/{int(ok.sum())} within 10 %, median "
                      f"{100 * g[ok].median():.1f} %; of the points the emulation reproduced faithfully (fidelity "
                      f"ok): {int((g[ok & faithful] <= 0.10).sum())}/{int((ok & faithful).sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
