"""The paper's numbers as data, its simulator's cost model, and the compute profile its figures imply.

``results/paper/*.csv`` hold the values of the paper's latency figures and tables (read off the paper's figures; plot
readings are ±0.01 in speedup). The paper simulated its network: latency = compute (measured on a GTX 1660Ti) +
bits sent by one device ÷ bandwidth (1 Mbps = 2^20 bit/s), no overlap, one send per exchange (the paper's latency model; each
method's ``paper_bits``):

    sp: L·(T/N)·D·32   tp: 2·L·(T/N)·D·32   bp_ag: Nb·(T/N)·D·32   bp_sp: 2·Nb·(T/N)·D·32   astra: L·(T/N)·G·log2K

``derive_profile`` inverts that model: for every curve of the figures (method, G, Nb, devices, tokens) it finds the
per-device compute that best reproduces the curve's speedups (least squares, each cell weighted by what its
reading can tell: 2 % of the value, at least half the ±0.01 reading step), and for token
counts whose single-device latency the paper does not print it fits that latency jointly over the curves at that
token count (1024 tokens: 111.5 ms, read off Fig. 3). ``python -m harness.paper`` writes the result to
``results/paper/compute_profile.csv``, which ``network=analytic network.compute=fitted`` uses instead of measuring
compute here: our methods' own traffic (``Method.traffic``) is charged on top, so comparing its output with the
paper's cells tests the traffic accounting, not a copy of the paper's numbers.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

from harness.errors import ConfigError
from harness.paths import PAPER_DIR

if TYPE_CHECKING:
    import pandas as pd

PROFILE = PAPER_DIR / "compute_profile.csv"
SPEEDUP_FIGURES = ("fig1_speedup", "fig7_speedup", "fig8_speedup")
SINGLE_1024_MS = 111.5  # Fig. 3's single-device line (ViT-Base shape, 1024 tokens)
MBPS = 2**20  # the paper's simulator: 1 Mbps = 2^20 bit/s
LAYERS, HIDDEN, BITS, INDEX_BITS = 12, 768, 32, 10  # the latency model: 12 layers, 768 wide, fp32, K = 1024
KEYS = ["method", "groups", "retained", "devices", "tokens"]


def load(name: str):
    """One of the paper's tables (``results/paper/<name>.csv``) as a DataFrame."""
    import pandas as pd

    path = PAPER_DIR / f"{name}.csv"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: the paper's data ships with the repository (git checkout it)")
    return pd.read_csv(path, dtype={"groups": "Int64", "retained": "Int64"})


def method_class(method: str):
    from harness.parallel import METHODS

    if method not in METHODS:
        raise ValueError(f"the paper's data names method {method!r}, which this harness does not have")
    return METHODS[method]


def baseline_name() -> str:
    from harness.parallel import METHODS

    return next(name for name, cls in METHODS.items() if cls.is_baseline)


def knobs_of(method: str, groups, retained) -> dict:
    """The paper's varied knobs that ``method`` has (G for ASTRA, Nb for block parallelism), from data columns."""
    import dataclasses

    have = {f.name for f in dataclasses.fields(method_class(method).Options)}
    vals = {"groups": groups, "retained": retained, "codebook_size": 1024}
    return {k: v for k, v in vals.items() if k in have}


def paper_bits(method: str, groups, retained, devices: int, tokens: int) -> float:
    """Bits one device sends per inference under the paper's accounting (each method's ``paper_bits``)."""
    return method_class(method).paper_bits(knobs_of(method, groups, retained), devices, tokens, LAYERS, HIDDEN)


def paper_comm_ms(method: str, groups, retained, devices: int, tokens: int, mbps: float) -> float:
    return 1e3 * paper_bits(method, groups, retained, devices, tokens) / (mbps * MBPS)


def _misfit(pred: float, reading: float) -> float:
    """A cell's error in units of what its reading can tell: 2 % of the value, but never below half the plot's
    ±0.01 reading step (a 0.01 reading says little about the compute)."""
    return (pred - reading) / max(0.02 * reading, 0.005)


def _fit_compute(single_ms: float, cells: list[tuple[float, float]]) -> tuple[float, float]:
    """The compute (ms) whose predicted speedups single / (compute + comm) best match ``cells`` (speedup, comm),
    each cell weighted by its reading precision (``_misfit``); returns (compute, sum of squared misfits)."""
    from scipy.optimize import minimize_scalar

    def loss(c):
        return sum(_misfit(single_ms / (c + comm), s) ** 2 for s, comm in cells)

    best = minimize_scalar(loss, bounds=(0.01, 4 * single_ms), method="bounded", options={"xatol": 1e-4})
    return float(best.x), float(best.fun)


def _rms_rel(single_ms: float, compute: float, cells: list[tuple[float, float]]) -> float:
    return math.sqrt(sum((single_ms / (compute + comm) / s - 1) ** 2 for s, comm in cells) / len(cells))


def derive_profile():
    """The per-device compute every curve of Fig. 1/7/8 implies (see the module docstring), one row per curve."""
    import pandas as pd
    from scipy.optimize import minimize_scalar

    cells = pd.concat([load(n).assign(figure=n.split("_")[0]) for n in SPEEDUP_FIGURES], ignore_index=True)
    cells = cells[cells["speedup"] > 0]  # 0.00 readings carry no information
    rows = []
    for tokens, at_t in cells.groupby("tokens"):
        curves = []
        for key, cur in at_t.groupby(["method", "groups", "retained", "devices"], dropna=False):
            comm = [paper_comm_ms(key[0], key[1], key[2], int(key[3]), int(tokens), b) for b in cur["bandwidth_mbps"]]
            curves.append((key, list(zip(cur["speedup"], comm)), sorted(set(cur["figure"]))))

        def total(single_ms):
            return sum(_fit_compute(single_ms, c)[1] for _, c, _ in curves)

        if tokens == 1024:
            single, source = SINGLE_1024_MS, "Fig. 3 single-device line"
        else:
            single = float(minimize_scalar(total, bounds=(1.0, 2000.0), method="bounded",
                                           options={"xatol": 1e-3}).x)
            source = f"fitted jointly over the {len(curves)} curves at {tokens} tokens"
        rows.append({"method": baseline_name(), "groups": pd.NA, "retained": pd.NA, "devices": 1, "tokens": int(tokens),
                     "compute_ms": round(single, 3), "source": source, "cells": 0, "fit_rms_rel": 0.0})
        for key, c, figs in curves:
            compute, _ = _fit_compute(single, c)
            rows.append({"method": key[0], "groups": key[1], "retained": key[2], "devices": int(key[3]),
                         "tokens": int(tokens), "compute_ms": round(compute, 3),
                         "source": f"{'/'.join(figs)}: least squares over {len(c)} bandwidths",
                         "cells": len(c), "fit_rms_rel": round(_rms_rel(single, compute, c), 4)})
    out = pd.DataFrame(rows)
    out["groups"] = out["groups"].astype("Int64")
    out["retained"] = out["retained"].astype("Int64")
    return out.sort_values(["tokens", "devices", "method", "groups", "retained"]).reset_index(drop=True)


_CACHE: dict = {}


def profile():
    if "df" not in _CACHE:
        _CACHE["df"] = load("compute_profile")
    return _CACHE["df"]


def compute_ms(method: str, groups, retained, devices: int, tokens: int) -> float:
    """The paper's per-device compute for this point (``network.compute=fitted``); ConfigError naming what exists
    when the paper's figures imply none."""
    df = profile()
    cls = method_class(method)
    sel = (df["method"] == method) & (df["tokens"] == tokens) & (df["devices"] == cls.devices(devices))
    knobs = {k: v for k, v in knobs_of(method, groups, retained).items() if k in df.columns}
    for k, v in knobs.items():
        sel &= df[k] == v
    hit = df[sel]
    if hit.empty:
        have = df[df["method"] == method]
        pts = sorted({(int(r.devices), int(r.tokens)) for r in have.itertuples()})
        extra = "".join(f" {k}={v}" for k, v in knobs.items())
        raise ConfigError(
            f"network.compute=fitted: the paper's figures imply no compute for {method}{extra} at "
            f"devices={devices} tokens={tokens} (they cover (devices, tokens) {pts} for {method}): use one of "
            "those points or network.compute=measured")
    return float(hit["compute_ms"].iloc[0])


def fitted_parameters() -> tuple[int, int]:
    """(parameters, cells) of the fitted check: one compute value per curve, plus each single-device latency the
    paper does not print, fitted to the figures' speedup cells."""
    df = profile()
    curves = int((df["devices"] > 1).sum())
    singles = int(((df["devices"] == 1) & df["source"].str.startswith("fitted")).sum())
    return curves + singles, int(df["cells"].sum())


def cross_validate() -> pd.DataFrame:
    """The fitted check scored on cells it was not fitted to: each curve's compute fitted on every other bandwidth
    (the 1st, 3rd, ...) and scored on the rest, and the other way round; the single-device latency as in
    ``derive_profile``. One row per held-out cell: figure, curve, bandwidth, paper, predicted, gap."""
    import pandas as pd

    prof = profile()
    single_at = {int(r.tokens): float(r.compute_ms) for r in prof[prof["devices"] == 1].itertuples()}
    rows = []
    for name in SPEEDUP_FIGURES:
        cells = load(name)
        cells = cells[cells["speedup"] > 0]
        for key, cur in cells.groupby(["method", "groups", "retained", "devices", "tokens"], dropna=False):
            cur = cur.sort_values("bandwidth_mbps").reset_index(drop=True)
            single = single_at[int(key[4])]
            comm = [paper_comm_ms(key[0], key[1], key[2], int(key[3]), int(key[4]), b) for b in cur["bandwidth_mbps"]]
            for half in (0, 1):
                fit = [(s, c) for i, (s, c) in enumerate(zip(cur["speedup"], comm)) if i % 2 == half]
                if not fit:
                    continue
                compute, _ = _fit_compute(single, fit)
                for i, (s, c, b) in enumerate(zip(cur["speedup"], comm, cur["bandwidth_mbps"])):
                    if i % 2 != half:
                        pred = single / (compute + c)
                        rows.append({"figure": name.split("_")[0], "method": key[0], "groups": key[1],
                                     "retained": key[2], "devices": int(key[3]), "tokens": int(key[4]),
                                     "bandwidth_mbps": float(b), "paper": float(s), "predicted": pred,
                                     "gap": pred / s - 1})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ the prediction
PREDICTED_PARAMETERS = 1  # ms per multiply-add, from Fig. 3's single-device latency
_COUNTS: dict[str, list[float]] = {}


def rank_macs(spec) -> list[float]:
    """Multiply-adds of one inference, per rank, counted on the ranks' own code (``harness.rank.work``, in a process
    of its own): once per point (model, method and options, devices, tokens, batch, shares), then kept in this
    process and in ``cache_dir/work/``."""
    import dataclasses
    import hashlib
    import json
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    from harness.errors import RunFailed
    from harness.launch import REPO_ROOT

    point = {"model": dataclasses.asdict(spec.model), "method": dataclasses.asdict(spec.method),
             "devices": spec.devices, "tokens": spec.tokens, "batch": spec.batch, "shares": spec.shares,
             "seed": spec.seed}
    key = json.dumps(point, sort_keys=True, default=str)
    if key in _COUNTS:
        return _COUNTS[key]
    path = Path(spec.cache_dir).resolve() / "work" / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
    try:
        counts = json.loads(path.read_text())["macs"]
    except (OSError, ValueError, KeyError):
        with tempfile.TemporaryDirectory(prefix="astra-work-") as tmp:
            spec_path = Path(tmp) / "spec.json"
            spec_path.write_text(spec.to_json())
            p = subprocess.run([sys.executable, "-m", "harness.rank.work", "--spec", str(spec_path), "--out",
                                str(path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=spec.timeout_s,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
            raise RunFailed(f"counting the ranks' work failed: {tail}")
        counts = json.loads(path.read_text())["macs"]
    _COUNTS[key] = counts
    return counts


def ms_per_mac(spec) -> float:
    """The prediction's one parameter: the paper's single device (111.5 ms at 1024 tokens, Fig. 3) over the
    multiply-adds of our single device at 1024 tokens, counted on its code (``harness.rank.work``)."""
    from harness.parallel import METHODS

    name = baseline_name()
    single = spec.replace(method=METHODS[name].Options(name=name), devices=1, shares=None, tokens=1024)
    return SINGLE_1024_MS / rank_macs(single)[0]


def predicted_compute_ms(spec) -> list[float]:
    """Each rank's compute under ``network.compute=predicted``: its multiply-adds (counted on its own code) at the
    paper's device speed (``ms_per_mac``) — nothing fitted to the figures' cells."""
    k = ms_per_mac(spec)
    return [k * m for m in rank_macs(spec)]


def main(argv: list[str] | None = None) -> int:
    """Re-derive ``results/paper/compute_profile.csv`` from the figure CSVs and print it."""
    from harness.errors import atomic_write

    df = derive_profile()
    atomic_write(PROFILE, lambda tmp: df.to_csv(tmp, index=False))
    print(df.to_string(index=False))
    print(f"wrote {PROFILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
