"""The result row (harness.store.row): a point refused inside a sweep is recorded with the settings it was asked to
run."""

from __future__ import annotations

import json

from harness.spec.build import compose
from harness.store.results import append_row, load


def test_a_refused_point_in_a_sweep_is_recorded(tmp_path):
    from harness.store.row import failed_row

    store = tmp_path / "r.parquet"
    cfg = compose(["model=vit_tiny", "method=tp", "devices=3", f"results.path={store}"])
    out, path = failed_row(cfg, "tp splits heads over devices ...")
    assert path == str(store) and out["status"] == "failed" and out["method"] == "tp" and out["devices"] == 3
    # the settings it was asked to run, and no timed inference: it never ran
    assert out["repeats"] == 0 and json.loads(out["settings"])["repeats"] == 5
    bad = compose(["seed=abc", f"results.path={store}"])
    out, path = failed_row(bad, "seed=abc is not an integer")
    assert path == str(store) and out["status"] == "failed" and out["error"].startswith("seed=abc")
    append_row(store, out)
    assert list(load(store)["status"]) == ["failed"]
