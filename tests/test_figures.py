"""95 % intervals of the median latency, propagated to the speedup."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness import dilation
from harness.results import median_ci, summarize, with_speedup


def test_median_ci_is_a_reproducible_bootstrap_interval():
    vals = [100.0, 101.0, 99.0, 102.0, 140.0]
    low, high = median_ci(vals)
    assert (low, high) == median_ci(vals)  # seeded: the same row every time
    assert low <= float(np.median(vals)) <= high and low >= 99.0 and high <= 140.0
    assert median_ci([5.0]) == (None, None)
    wide = median_ci([50.0, 100.0, 150.0, 200.0, 250.0])
    assert wide[1] - wide[0] > high - low


def test_summarize_and_dilation_carry_the_interval():
    reports = [{"latency_s": [0.10, 0.12, 0.11, 0.50], "comm_s": [0.01] * 4, "payload_bytes": 8},
               {"latency_s": [0.09, 0.13, 0.10, 0.20], "comm_s": [0.02] * 4, "payload_bytes": 8}]
    row = summarize(reports)  # the slowest rank per repeat: 100, 130, 110, 500 ms
    assert row["latency_ci_low_ms"] <= row["latency_ms"] <= row["latency_ci_high_ms"]
    assert row["latency_ci_low_ms"] >= 100 and row["latency_ci_high_ms"] <= 500
    one = summarize([{"latency_s": [0.1], "comm_s": [0.0], "payload_bytes": 0}])
    assert one["latency_ci_low_ms"] is None and one["latency_ci_high_ms"] is None
    scaled = dilation.scale_row(row, 2.0)
    assert scaled["latency_ci_low_ms"] == pytest.approx(row["latency_ci_low_ms"] / 2)
    assert "latency_ci_low_ms" not in dilation.scale_row(one, 2.0)  # None stays None


def test_speedup_interval_is_propagated_conservatively():
    df = pd.DataFrame([
        {"method": "single", "timing_key": "b", "baseline_key": "b", "latency_ms": 100.0, "latency_ci_low_ms": 90.0,
         "latency_ci_high_ms": 110.0, "status": "ok", "timestamp": "1"},
        {"method": "sp", "timing_key": "s", "baseline_key": "b", "latency_ms": 50.0, "latency_ci_low_ms": 40.0,
         "latency_ci_high_ms": 60.0, "status": "ok", "timestamp": "2"},
        {"method": "tp", "timing_key": "t", "baseline_key": "b", "latency_ms": 50.0, "latency_ci_low_ms": None,
         "latency_ci_high_ms": None, "status": "ok", "timestamp": "2"}])
    out = with_speedup(df).set_index("method")
    assert out.at["sp", "speedup"] == 2.0
    assert out.at["sp", "speedup_ci_low"] == pytest.approx(90 / 60) and out.at["sp", "speedup_ci_high"] == 110 / 40
    assert out.at["tp", "speedup_ci_low"] == pytest.approx(90 / 50)  # the baseline's interval alone
    noci = with_speedup(df.drop(columns=["latency_ci_low_ms", "latency_ci_high_ms"]))  # a store from before
    assert noci["speedup_ci_low"].isna().all() and noci["speedup"].notna().all()
