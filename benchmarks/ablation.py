"""What makes our ASTRA faster than the paper's, one advantage at a time, on the emulated network in one run (root,
Mininet):

    sudo python benchmarks/ablation.py [--devices 4] [--bandwidths 10,100] [--regimes real,replay] [--repeats 5]

Variants, each beside its reference at the same point:

- ``astra`` (ours: the codeword K|V table, ``method.kv_table=auto``) against ``astra kv_table=false`` (the paper's
  ASTRA: remote K/V projected from the decoded embeddings);
- ``astra dct=false`` (the class token an ordinary token of rank 0) against ``astra``;
- ``bp_sp final_reshard=false`` (no re-shard after the last retained layer, which does nothing useful) against
  ``bp_sp`` (the paper charges the re-shard).

Regimes: ``real`` — devices computing on this machine's CPU, time-dilated (the main job's regime: a device here is
about 22x slower than the paper's GPU, so a link of 10 Mbit/s is a different compute-to-network regime); ``replay`` —
devices replaying this machine's profile scaled to the paper's device speed (single = 111.5 ms), links at their true
rates. ViT-Base, 1024 tokens, G = 1, K = 1024, Nb = 1. Each row: median latency with its 95 % interval, speedup over
the single device of the same regime, and the change against the reference — "not resolved" where the two
intervals overlap. Rows go to ``--store`` (default ``results/ablation/ablation.parquet``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from harness.report.compare import change
from harness.report.plot import latest_points
from harness.store.results import load

ROOT = Path(__file__).resolve().parents[1]
ASTRA = ["method=astra", "++method.groups=1", "++method.codebook_size=1024", "++method.kmeans_init=random"]
BP_SP = ["method=bp_sp", "++method.retained=1"]
# name, overrides, reference name
VARIANTS = [
    ("single", ["method=single"], None),
    ("astra", ASTRA, None),
    ("astra kv_table=false (the paper's)", [*ASTRA, "++method.kv_table=false"], "astra"),
    ("astra dct=false", [*ASTRA, "++method.dct=false"], "astra"),
    ("bp_sp (the paper's)", BP_SP, None),
    ("bp_sp final_reshard=false", [*BP_SP, "++method.final_reshard=false"], "bp_sp (the paper's)"),
]
REGIMES = {
    "real": ["device.compute=real", "budget_s=60"],
    "replay": ["device.compute=replay", "device.profile=reference", "device.reference_ms=111.5",
               "network.htb_burst_ms=1"],
}


def variant_of(config: str) -> str | None:
    """The variant a row ran, from its method settings."""
    m = json.loads(config)["method"]
    if m["name"] == "single":
        return "single"
    if m["name"] == "astra":
        if m.get("dct") is False:
            return "astra dct=false"
        return "astra kv_table=false (the paper's)" if m.get("kv_table") is False else "astra"
    if m["name"] == "bp_sp":
        return "bp_sp (the paper's)" if m.get("final_reshard", True) else "bp_sp final_reshard=false"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--bandwidths", default="10,100")
    ap.add_argument("--regimes", default="real,replay")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--store", type=Path, default=ROOT / "results" / "ablation" / "ablation.parquet")
    args = ap.parse_args()
    regimes = args.regimes.split(",")
    common = ["model=vit_base", "tokens=1024", "network=mininet", f"devices={args.devices}",
              f"network.bandwidth_mbps={args.bandwidths}", f"repeats={args.repeats}", "warmup=1",
              f"results.path={args.store}", "results.allow_failures=true"]
    took = {}
    for regime in regimes:
        t0 = time.perf_counter()
        for _name, over, _ref in VARIANTS:
            subprocess.run([sys.executable, "-m", "harness.bench", "-m", *common, *REGIMES[regime], *over], cwd=ROOT,
                           check=True)
        took[regime] = time.perf_counter() - t0
    df = latest_points(load(args.store))
    df = df[df["status"] == "ok"].copy()
    df["variant"] = df["config"].map(variant_of)
    df["regime"] = df["device_compute"]
    rows = []
    for regime in regimes:
        part = df[df["regime"] == regime]
        single = part[part["variant"] == "single"]
        single_ms = float(single["latency_ms"].iloc[-1]) if len(single) else float("nan")
        for bw in sorted(part["bandwidth_mbps"].dropna().unique()):
            at = part[part["bandwidth_mbps"] == bw].set_index("variant")
            for name, _over, ref in VARIANTS[1:]:
                if name not in at.index:
                    continue
                r = at.loc[name]
                row = {"regime": regime, "Mbit/s": bw, "variant": name, "latency_ms": r["latency_ms"],
                       "95% CI": f"{r['latency_ci_low_ms']:.4g}–{r['latency_ci_high_ms']:.4g}",
                       "speedup": single_ms / r["latency_ms"], "fidelity": r["fidelity"]}
                if ref and ref in at.index:
                    b = at.loc[ref]
                    row["against"] = ref
                    row["change"] = change((r["latency_ms"], r["latency_ci_low_ms"], r["latency_ci_high_ms"]),
                                           (b["latency_ms"], b["latency_ci_low_ms"], b["latency_ci_high_ms"]))
                rows.append(row)
        print(f"{regime}: single {single_ms:.1f} ms, {took.get(regime, 0):.0f} s")
    out = pd.DataFrame(rows)
    out = out.astype(object).where(out.notna(), None)  # missing cells print empty
    print("\n## ablation: what each advantage is worth\n")
    print(out.to_markdown(index=False, floatfmt=".4g", missingval=""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
