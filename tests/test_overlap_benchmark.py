"""benchmarks/overlap.py: which stored rows its tables take (no network): Mininet rows of the chosen link queueing,
and of the analytic backend the latest run with the single devices it was scaled to."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd

spec = importlib.util.spec_from_file_location("overlap_bench", Path(__file__).parents[1] / "benchmarks/overlap.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def row(backend, method, devices, bw, t, **cfg):
    config = {"method": {"name": method}, "network": cfg.get("network", {}), "device": cfg.get("device", {})}
    return {"network": backend, "method": method, "devices": devices, "bandwidth_mbps": bw, "timestamp": t,
            "status": "ok", "model": "vit_base", "tokens": 1024, "config": json.dumps(config),
            "variant": method}


def test_mininet_rows_of_the_chosen_queueing():
    df = pd.DataFrame([row("mininet", "tp", 4, 10, "1"),  # stored before the option: one FIFO
                       row("mininet", "tp", 4, 10, "2", network={"htb_ack_class": False}),
                       row("mininet", "tp", 4, 10, "3", network={"htb_ack_class": True}),
                       row("analytic", "tp", 4, 10, "4"),
                       row("mininet", "single", 1, 10, "5")])  # no links: one point whatever the queueing
    assert list(bench.of_queueing(df, fifo=False)["timestamp"]) == ["3", "4", "5"]
    assert list(bench.of_queueing(df, fifo=True)["timestamp"]) == ["1", "2", "4", "5"]


def test_latest_analytic_run_with_its_single_devices():
    ref = {"device": {"reference_ms": 2000.0}}
    new = {"device": {"reference_ms": 2500.0}}
    df = pd.DataFrame([row("analytic", "single", 1, 10, "1", **ref), row("analytic", "tp", 4, 10, "1", **ref),
                       row("analytic", "tp", 4, 100, "1", **ref),
                       row("analytic", "single", 1, 100, "2", **new), row("analytic", "tp", 4, 100, "2", **new),
                       row("analytic", "single", 1, 10, "0", device={"reference_ms": 1000.0}),
                       row("mininet", "tp", 4, 10, "0")])
    out = bench.latest_model(df)
    model = out[out["network"] == "analytic"]
    # a partial rerun (100 Mbit/s) supersedes its point only; both runs' single devices stay, the older third goes
    assert sorted(zip(model["method"], model["bandwidth_mbps"], model["timestamp"])) == [
        ("single", 10, "1"), ("single", 100, "2"), ("tp", 10, "1"), ("tp", 100, "2")]
    assert (out["network"] == "mininet").sum() == 1
