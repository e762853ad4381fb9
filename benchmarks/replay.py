"""Compute replay against the references it stands in for, side by side in one run (root, Mininet):

    sudo python benchmarks/replay.py validate [--devices 2,4,8] [--methods ...] [--bandwidths 10,100,1000]
                                              [--model vit_base] [--tokens 1024]
    sudo python benchmarks/replay.py scale [--devices 16,32] [--bandwidths 10,100,1000]
    sudo python benchmarks/replay.py fig1

``validate``: every point twice on Mininet, one run after the other, devices computing for real (time-dilated to
fit this machine) and replaying their profile measured here (``device.compute=replay``, no dilation); the speedups side by side, each pair
within 5 % or not. ``scale``: replayed points at N = 16 and 32 beside the analytic formula fed the same profile:
each point's verdict, wake-up lateness p99 (≤ 1 ms), goodput (≥ 0.95) and the gap to the formula (≤ 5 %).
``fig1``: the paper's Figure 1 grid on Mininet at the paper's device speed (``experiment=paper_fig1_mininet``), its
wall time (target ≤ 30 minutes) and astra-report's table of it beside the paper and the formula.
Each part writes its rows to ``--store`` (default ``results/replay/<part>.parquet``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from harness.report.compare import resolved
from harness.report.plot import latest_points
from harness.store.results import load

ROOT = Path(__file__).resolve().parents[1]  # the checkout: sweeps run from it


def knobs(methods: str) -> list[str]:
    """The methods' own settings for a sweep over ``methods`` (a knob only where some method has it)."""
    names = set(methods.split(","))
    out = ["++method.groups=1", "++method.codebook_size=1024", "++method.kmeans_init=random"] if "astra" in names \
        else []
    return out + (["++method.retained=1"] if names & {"bp_ag", "bp_sp"} else [])


def sweep(store: Path, *overrides: str) -> float:
    cmd = [sys.executable, "-m", "harness.bench", "-m", *overrides, f"results.path={store}",
           "results.allow_failures=true"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def model(args) -> list[str]:
    return [f"model={args.model}", f"tokens={args.tokens}"]


def table(df: pd.DataFrame, cols: list[str]) -> str:
    return df[cols].to_markdown(index=False, floatfmt=".3g")


def validate(args) -> None:
    grid = [f"method=single,{args.methods}", f"devices={args.devices}", f"network.bandwidth_mbps={args.bandwidths}",
            *model(args), "network=mininet", *knobs(args.methods), "repeats=3", "warmup=1", "budget_s=20"]
    # real and replay of a point run one after the other (the last override varies fastest), so both see this
    # machine at the same speed; the profiles are measured in the run (a cached one only if the speed probe agrees)
    took = sweep(args.store, *grid, "device.compute=real,replay")
    df = latest_points(load(args.store))
    df = df[(df["status"] == "ok") & (df["devices"] > 1)]
    keys = ["method", "devices", "bandwidth_mbps"]
    vals = ["speedup", "speedup_ci_low", "speedup_ci_high"]
    wide = df.pivot_table(index=keys, columns="device_compute", values=vals, aggfunc="last")
    pair = pd.DataFrame({"real": wide["speedup"]["real"], "replay": wide["speedup"]["replay"]}).reset_index()
    pair["gap"] = pair["replay"] / pair["real"] - 1
    pair["within 5 %"] = pair["gap"].abs() <= 0.05
    apart = [resolved(*(wide[(c, mode)].iloc[i] for mode in ("real", "replay") for c in vals[1:]))
             for i in range(len(wide))]
    pair["intervals"] = ["apart" if a else "overlap (not resolved)" if a is False else "" for a in apart]
    print(f"## replay against real compute ({took:.0f} s)\n")
    print(table(pair, [*keys, "real", "replay", "gap", "within 5 %", "intervals"]))
    print(f"\n{int(pair['within 5 %'].sum())} of {len(pair)} points within 5 %")


def scale(args) -> None:
    grid = [f"method=single,{args.methods}", f"devices={args.devices}", f"network.bandwidth_mbps={args.bandwidths}",
            *model(args), *knobs(args.methods), "device.compute=replay", "device.profile=reference", f"device.reference_ms={args.ref_ms}",
            "repeats=3", "warmup=1", "budget_s=20"]
    took = sweep(args.store, *grid, "network=mininet", "network.htb_burst_ms=1")
    sweep(args.store, *grid, "network=analytic", "network.collective_model=ring")
    df = latest_points(load(args.store))
    df = df[(df["status"] == "ok") & (df["devices"] > 1)]
    keys = ["method", "devices", "bandwidth_mbps"]
    mn = df[df["network"] == "mininet"].set_index(keys)
    an = df[df["network"] == "analytic"].set_index(keys)["latency_ms"].rename("formula_ms")
    out = mn.join(an, how="left").reset_index()
    out["gap"] = out["latency_ms"] / out["formula_ms"] - 1
    out["targets"] = ((out["fidelity"] == "ok") & (out["wake_late_p99_ms"] <= 1.0)
                      & (out["goodput_ratio"].fillna(1) >= 0.95) & (out["gap"].abs() <= 0.05))
    print(f"## replayed devices at scale, single = {args.ref_ms} ms ({took:.0f} s on Mininet)\n")
    print(table(out, [*keys, "latency_ms", "formula_ms", "gap", "speedup", "wake_late_p50_ms", "wake_late_p99_ms",
                      "goodput_ratio", "idle_cores", "fidelity", "targets"]))
    print(f"\n{int(out['targets'].sum())} of {len(out)} points meet every target")


def fig1(args) -> None:
    took = sweep(args.store, "experiment=paper_fig1_mininet")
    sweep(args.store, "experiment=paper_fig1")  # the paper's formula with its own compute, for the report
    print(f"## the paper's Figure 1 on Mininet at its device speed: {took / 60:.1f} minutes (target <= 30)\n")
    report = args.store.parent / "fig1_report"
    subprocess.run([sys.executable, "-m", "harness.report.paper_report", str(args.store), "--out", str(report)],
                   cwd=ROOT, check=True)
    print((report / "fig1.md").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("validate", "scale", "fig1"))
    ap.add_argument("--devices", default=None, help="device counts (validate: 2,4,8; scale: 16,32)")
    ap.add_argument("--methods", default=None, help="methods besides single (validate: tp,sp,astra,bp_ag,bp_sp; "
                    "scale: sp,astra)")
    ap.add_argument("--bandwidths", default="10,100,1000")
    ap.add_argument("--model", default="vit_base", help="validate, scale: the model (real compute of ViT-Base at "
                    "1024 tokens takes minutes per point here; a smaller one validates the replay as well)")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--ref-ms", type=float, default=111.5, help="scale: the single device's latency")
    ap.add_argument("--store", type=Path, default=None)
    args = ap.parse_args()
    if args.devices is None:
        args.devices = {"validate": "2,4,8", "scale": "16,32"}.get(args.part)
    if args.methods is None:
        args.methods = {"validate": "tp,sp,astra,bp_ag,bp_sp", "scale": "sp,astra"}.get(args.part)
    args.store = args.store or ROOT / "results" / "replay" / f"{args.part}.parquet"
    {"validate": validate, "scale": scale, "fig1": fig1}[args.part](args)


if __name__ == "__main__":
    main()
