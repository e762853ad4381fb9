"""A fixed loopback/analytic grid whose result rows (every column but timings, ids, timestamps and the raw config)
must not change when the controller is restructured: ``tests/data/golden_rows.json`` holds them as the code
produced them before (regenerate deliberately with ``python tests/golden.py --write``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "golden_rows.json"
COMMON = ["model=vit_tiny,gpt2_tiny", "method=single,tp,sp,astra", "devices=2", "tokens=50", "verify=true",
          "repeats=1", "warmup=0", "method.codebook_size=64"]
SWEEPS = {
    "loopback": ["network=loopback"],
    "analytic": ["network=analytic", "network.bandwidth_mbps=10"],
}
# Measured times, identities and bookkeeping: everything else is a function of the point and the seed.
VOLATILE = {"latency_ms", "latency_p90_ms", "latency_ci_low_ms", "latency_ci_high_ms", "compute_ms", "comm_ms",
            "wall_s", "setup_s", "run_id", "point_key", "timestamp", "config", "skipped"}
IDENTITY = ["network", "model", "method"]


def grid_rows(tmp: Path) -> list[dict]:
    """The grid's rows. The sweeps run side by side (separate stores, caches and temporary directories): none of
    the columns compared depends on timing."""
    procs = {}
    for name, extra in SWEEPS.items():
        d = tmp / name
        d.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TMPDIR=str(d), OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "harness.bench", "-m", *COMMON, *extra, f"results.path={d / 'r.parquet'}",
               f"cache_dir={d / 'cache'}", f"hydra.sweep.dir={d / 'sweep'}"]
        procs[name] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
    rows, failed = [], []
    for name, p in procs.items():
        try:
            out, err = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            p.terminate()  # the controller stops its ranks on SIGTERM
            out, err = p.communicate(timeout=60)
        if p.returncode != 0:
            failed.append(f"grid sweep {name} failed:\n{err[-3000:]}")
        rows += [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    if failed:
        raise RuntimeError("\n".join(failed))
    out = [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
    return sorted(out, key=lambda r: [str(r[k]) for k in IDENTITY])


if __name__ == "__main__":
    import tempfile

    if "--write" not in sys.argv:
        sys.exit("usage: python tests/golden.py --write   (overwrites tests/data/golden_rows.json)")
    with tempfile.TemporaryDirectory() as t:
        rows = grid_rows(Path(t))
    GOLDEN.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(rows)} rows to {GOLDEN}")
