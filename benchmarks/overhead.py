"""The harness's own cost per point of a large grid: a sweep on the analytic backend with the paper's compute profile
(``network.compute=fitted``: nothing runs, so every second is the harness's — composing the job's config, checking
it, building the spec and the row, writing the store), as one ``astra-bench -m`` run over ``--points`` jobs.

    python benchmarks/overhead.py --points 1000

Prints the wall time of the sweep, of a one-point sweep (the fixed start-up: Python, torch, Hydra), and their
difference per job: the per-point overhead. Target: at most 0.1 s per point.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.store.results import load

# ViT-Base at 1024 tokens is the shape the paper's compute profile covers (results/paper/compute_profile.csv)
FIXED = ["model=vit_base", "tokens=1024", "network=analytic", "network.compute=fitted", "network.mbps_unit=1048576",
         "network.collective_model=paper", "repeats=1", "warmup=0", "solo_repeats=0"]


def grid(points: int) -> list[str]:
    """Overrides of a grid of about ``points`` jobs: sp, tp and astra (G=1) at 2/4/6/8 devices over as many
    bandwidths as it takes, plus the single baseline (measured once; its other jobs are skipped)."""
    per_bw = 4 * 4  # methods (with single) x device counts
    n = max(1, round(points / per_bw))
    bws = ",".join(f"{10 + 490 * i / max(1, n - 1):.4g}" for i in range(n))
    return ["method=single,sp,tp,astra", "++method.groups=1", "devices=2,4,6,8", f"network.bandwidth_mbps={bws}"]


def sweep(overrides: list[str], folder: Path) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "harness.bench", "-m", *FIXED, *overrides, f"results.path={folder / 'r.parquet'}",
           f"hydra.sweep.dir={folder / 'sweep'}"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"overhead.py: the sweep failed:\n{p.stderr[-2000:]}")
    return took, [ln for ln in p.stderr.splitlines() if ln.strip()][-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1000, help="jobs in the grid (rounded to whole bandwidths)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="astra-overhead-") as wd:
        one, _ = sweep(["method=sp", "devices=2", "network.bandwidth_mbps=10"], Path(wd) / "one")
        overrides = grid(args.points)
        many, summary = sweep(overrides, Path(wd) / "grid")
        rows = len(load(Path(wd) / "grid" / "r.parquet"))
    jobs = 16 * len(overrides[-1].split("=", 1)[1].split(","))
    print(f"one-point sweep: {one:.1f} s (start-up)")
    print(f"{jobs}-job grid: {many:.1f} s, {rows} rows; {summary.removeprefix('[astra-bench] ')}")
    print(f"per job: {(many - one) / (jobs - 1) * 1e3:.0f} ms of harness overhead (target <= 100 ms)")


if __name__ == "__main__":
    main()
