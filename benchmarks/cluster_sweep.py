"""Cluster benchmark: the same 24-point loopback sweep on Hydra's basic launcher and on a local Ray
cluster of two simulated nodes (Ray's own ``ray.cluster_utils.Cluster``), each into its own dataset store. Prints
both wall times and checks that every point's row is present exactly once, with status ok.

    python benchmarks/cluster_sweep.py                  # tp, sp, astra x devices 2, 4 x tokens 32..256
    python benchmarks/cluster_sweep.py --cpus-per-node 2 --model vit_tiny

Needs the cluster extra (pip install -e '.[cluster]'). Run nothing else meanwhile: both sweeps time real inference.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.store.results import load

ROOT = Path(__file__).resolve().parents[1]  # the checkout: sweeps run from it

SWEEP = ["method=tp,sp,astra", "devices=2,4", "tokens=32,64,128,256", "network=loopback", "repeats=3", "warmup=1",
         "solo_repeats=0"]


def sweep(folder: Path, extra: list[str], model: str) -> float:
    cmd = [sys.executable, "-m", "harness.bench", "-m", f"model={model}", *SWEEP, f"results.path={folder}",
           f"hydra.sweep.dir={folder.parent / (folder.name + '-hydra')}", *extra]
    print("+", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def check(folder: Path) -> str:
    df = load(folder)
    ok = (df["status"] == "ok").all() and df["point_key"].is_unique
    return f"{len(df)} rows, {df['point_key'].nunique()} points, all ok and unique: {'yes' if ok else 'NO'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus-per-node", type=int, default=2, help="CPUs each simulated Ray node offers")
    ap.add_argument("--model", default="vit_tiny")
    args = ap.parse_args()
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory(prefix="astra-cluster-bench-") as tmp:
        basic = sweep(Path(tmp) / "basic", [], args.model)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus_per_node})
        cluster.add_node(num_cpus=args.cpus_per_node)
        cluster.wait_for_nodes()
        try:
            ray = sweep(Path(tmp) / "ray", ["hydra/launcher=ray", f"hydra.launcher.ray.init.address={cluster.address}"],
                        args.model)
        finally:
            cluster.shutdown()
        print(f"basic launcher: {basic:.1f} s; {check(Path(tmp) / 'basic')}")
        print(f"Ray, 2 nodes x {args.cpus_per_node} CPUs: {ray:.1f} s; {check(Path(tmp) / 'ray')}")
        print(f"Ray / basic: {ray / basic:.2f}")


if __name__ == "__main__":
    main()
