"""Comparing two measured medians honestly: a difference smaller than their 95 % intervals is "not resolved",
never a win."""

from __future__ import annotations

import math


def resolved(a_low: float, a_high: float, b_low: float, b_high: float) -> bool | None:
    """Whether two 95 % intervals are apart (None when either is missing: one repeat has no interval)."""
    vals = (a_low, a_high, b_low, b_high)
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
        return None
    return bool(a_high < b_low or b_high < a_low)


def change(a: tuple[float, float, float], b: tuple[float, float, float]) -> str:
    """``a`` against ``b``, each (median, 95 % low, 95 % high) of a latency: "-12.3 %" when the intervals are
    apart, "-1.2 % (not resolved)" when they overlap, "-1.2 % (no interval)" when one is missing."""
    pct = f"{100 * (a[0] / b[0] - 1):+.1f} %"
    ok = resolved(a[1], a[2], b[1], b[2])
    return pct if ok else f"{pct} ({'not resolved' if ok is False else 'no interval'})"


# what a point has besides its single device's settings (``baseline_key``) and its method's options
POINT = ["devices", "bandwidth_mbps", "bandwidth_per_device", "topology", "network", "compute_source", "split"]
SCENE = ["model", "tokens", "network", "device", "batch", "device_compute", "compute_source", "devices",
         "bandwidth_mbps"]


def over_best_baseline(pts):
    """For each scene (model, tokens, network, device, devices, bandwidth) where the proposed method (ASTRA) ran:
    its speedup over whichever other method is fastest there — the single device included (speedup 1) — with that
    method's label and whether their latencies' 95 % intervals are apart. ``pts``: rows with ``speedup`` and
    ``label`` (``astra-plot``'s latest points). An empty frame when the proposed method has no rows."""
    import pandas as pd

    from harness.parallel import METHODS

    proposed = {n for n, cls in METHODS.items() if cls.is_proposed}
    baseline = next(n for n, cls in METHODS.items() if cls.is_baseline)
    ok = pts[(pts["status"] == "ok") & pts["speedup"].notna()] if "status" in pts.columns else pts
    if "baseline_key" in ok.columns and ok["baseline_key"].notna().all():  # the same single device: every setting
        keys = [k for k in ("baseline_key", *POINT) if k in ok.columns]  # but the method's own ones
    else:  # rows from before baseline keys existed
        keys = [k for k in SCENE if k in ok.columns]
    out = []
    for _, row in ok[ok["method"].isin(proposed)].iterrows():
        same = ok[~ok["method"].isin(proposed) & (ok["method"] != baseline)]
        for k in keys:
            v = row[k]
            same = same[same[k].isna()] if _missing(v) else same[same[k].astype(str) == str(v)]
        best = {"label": baseline, "speedup": 1.0, "latency_ms": row.get("single_latency_ms"),
                "latency_ci_low_ms": row.get("single_ci_low_ms"), "latency_ci_high_ms": row.get("single_ci_high_ms")}
        if not same.empty:
            top = same.loc[pd.to_numeric(same["speedup"]).idxmax()]
            if float(top["speedup"]) > 1.0:
                best = top
        apart = resolved(_num(row.get("latency_ci_low_ms")), _num(row.get("latency_ci_high_ms")),
                         _num(best.get("latency_ci_low_ms")), _num(best.get("latency_ci_high_ms")))
        out.append({**{k: row[k] for k in keys}, "label": row["label"], "speedup": float(row["speedup"]),
                    "best_baseline": best["label"], "best_speedup": float(best["speedup"]),
                    "over_best": float(row["speedup"]) / float(best["speedup"]),
                    "resolved": {True: "yes", False: "not resolved", None: "no interval"}[apart]})
    return pd.DataFrame(out)


def _num(v):
    try:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    except (TypeError, ValueError):
        return None


def _missing(v) -> bool:
    import pandas as pd

    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
