"""What names a point (harness.spec.identity): settings that change nothing do not change the key, rows of different
points are never merged, and a point's speedup divides its own baseline."""

from __future__ import annotations

import pytest

from harness.report.plot import latest_points
from harness.spec.build import build_spec, compose
from harness.spec.identity import point_key
from harness.store.results import append_row, load


def _row(method, latency, run_id, **config):
    spec = build_spec(compose([f"method={method}", "network=analytic", "network.bandwidth_mbps=10",
                               *[f"{k}={v}" for k, v in config.items()]]))
    from harness.store.row import row

    r = row(spec, spec.backend_class(spec).describe())
    r.update(latency_ms=latency, compute_ms=latency, comm_ms=0.0, payload_bytes=1, run_id=run_id,
             timestamp=f"2026-01-01T00:00:{len(run_id):02d}")
    return r


def test_rows_that_differ_in_a_setting_are_never_merged(tmp_path):
    store = tmp_path / "r.parquet"
    append_row(store, _row("single", 100.0, "s"))
    append_row(store, _row("astra", 50.0, "k64", **{"method.codebook_size": 64}))
    append_row(store, _row("astra", 40.0, "k1024", **{"method.codebook_size": 1024}))
    append_row(store, _row("sp", 80.0, "ring", **{"network.collective_model": "ring"}))
    append_row(store, _row("sp", 70.0, "paper", **{"network.collective_model": "paper"}))
    append_row(store, _row("sp", 60.0, "paper-again", **{"network.collective_model": "paper"}))  # a re-run
    pts = latest_points(load(store))
    assert sorted(pts["run_id"]) == ["k1024", "k64", "paper-again", "ring", "s"]
    assert pts["label"].is_unique, list(pts["label"])
    labels = dict(zip(pts["run_id"], pts["label"]))
    assert "K=64" in labels["k64"] and "K=1024" in labels["k1024"]
    assert "collective_model=paper" in labels["paper-again"] and "collective_model=ring" in labels["ring"]
    speed = dict(zip(pts["run_id"], pts["speedup"]))
    assert speed == pytest.approx({"s": 1.0, "k64": 2.0, "k1024": 2.5, "ring": 1.25, "paper-again": 100 / 60})


def test_speedup_baseline_matches_the_whole_model(tmp_path):
    store = tmp_path / "r.parquet"
    append_row(store, _row("single", 100.0, "s64", **{"model.hidden": 64}))
    append_row(store, _row("single", 400.0, "s128", **{"model.hidden": 128}))
    append_row(store, _row("sp", 200.0, "sp128", **{"model.hidden": 128}))
    df = load(store).set_index("run_id")
    assert df.loc["sp128", "speedup"] == pytest.approx(2.0)  # against the hidden=128 single run only


def test_identity_normalises_what_does_not_change_a_point():
    def key(*ov, timing=False):
        from harness.spec.identity import timing_key

        spec = build_spec(compose(["method=sp", "network=analytic", *ov]))
        return timing_key(spec) if timing else point_key(spec)

    assert key("network.bandwidth_mbps=100") == key("network.bandwidth_mbps=100.0") == \
        key("network.bandwidth_mbps=[100,100]")
    assert key("network.bandwidth_mbps=100") != key("network.bandwidth_mbps=[100,10]")
    assert key("device.cores=0.5") == key()  # the analytic backend enforces no CPU quota: only threads matter
    assert key("device.name=other") == key()
    assert key("verify=true") != key() and key("verify=true", timing=True) == key(timing=True)


def test_per_device_bandwidths_have_a_single_baseline():
    from harness.spec.identity import baseline_key, timing_key

    sp = build_spec(compose(["method=sp", "network=analytic", "network.bandwidth_mbps=[10,100]"]))
    single = build_spec(compose(["method=single", "network=analytic", "network.bandwidth_mbps=[10,100]"]),
                        in_sweep=True)
    assert baseline_key(sp) == timing_key(single)
