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
