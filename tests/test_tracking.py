"""MLflow tracking (``tracking.enabled=true``, harness/tracking.py): a sweep's points as child runs of its parent
run, which holds the sweep's figures; what a row becomes; nothing (not even an import) with tracking off; the
one-line refusal without MLflow; the Ray launcher's driver logging the jobs its workers ran."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from harness.store.results import load, record
from harness.sweep.progress import REMOTE_ENV
from harness.sweep.tracking import PARAM_MAX, PROVENANCE, describe

REPO = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "-m", "harness.bench"]
TINY = ["network=analytic", "model=vit_tiny", "tokens=16", "repeats=1", "warmup=0", "solo_repeats=0"]


def client(db: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def runs_of(db: Path, experiment: str) -> tuple:
    """(the parent runs, the child runs) of an experiment."""
    c = client(db)
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


@pytest.mark.slow
def test_sweep_logs_each_point_under_a_parent_run_with_the_figures(tmp_path):
    pytest.importorskip("mlflow")
    db, store = tmp_path / "mlflow.db", tmp_path / "r.parquet"
    # tp cannot split one head over two devices: a failed point in the sweep
    proc = subprocess.run([*BENCH, "-m", *TINY, "method=single,astra,tp", "devices=2", "model.heads=1",
                           "method.codebook_size=16", "tracking.enabled=true", f"tracking.uri={db}",
                           "tracking.experiment=test", f"results.path={store}", f"cache_dir={tmp_path / 'c'}",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]  # the failed tp point
    assert "tracking: could not" not in proc.stderr and "tracking: off" not in proc.stderr
    rows = load(store)
    assert sorted(rows["status"]) == ["failed", "ok", "ok"]
    (parent,), children = runs_of(db, "test")
    assert parent.info.status == "FINISHED" and "method=single,astra,tp" in parent.data.tags["sweep"]
    assert len(children) == 3 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    by_id = {c.data.tags["run_id"]: c for c in children}
    assert set(by_id) == set(rows["run_id"])
    for row in rows.to_dict("records"):
        run = by_id[row["run_id"]]
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        assert p["method"] == row["method"] and p["model"] == "vit_tiny" and p["model.heads"] == "1"
        assert t["status"] == row["status"] and t["point_key"] == row["point_key"]
        assert all(t[k] for k in PROVENANCE if k in row and row[k] is not None)  # the columns a store has
        if row["status"] == "ok":
            assert run.info.status == "FINISHED"
            for col in ("latency_ms", "compute_ms", "comm_ms", "payload_bytes", "speedup"):
                assert m[col] == pytest.approx(row[col]), col
        else:
            assert run.info.status == "FAILED" and "heads" in t["error"] and "latency_ms" not in m
        saved = json.loads((Path(run.info.artifact_uri.removeprefix("file://")) / "row.json").read_text())
        assert saved["run_id"] == row["run_id"]
    astra = by_id[rows.loc[rows.method == "astra", "run_id"].item()]
    assert astra.data.params["method.codebook_size"] == "16" and astra.data.params["devices"] == "2"
    assert astra.data.params["network.bandwidth_mbps"] == "[100.0, 100.0]"
    c = client(db)
    figures = {Path(a.path).name for a in c.list_artifacts(parent.info.run_id, "figures")}
    assert {"speedup_vs_bandwidth.png", "latency_breakdown.png"} <= figures, figures
    table = Path(parent.info.artifact_uri.removeprefix("file://")) / "points.md"
    assert "astra" in table.read_text() and "single" in table.read_text()


def test_a_row_becomes_params_metrics_and_tags():
    settings = {"method": {"name": "astra", "groups": 4, "note": "x" * 7000}, "weird key!": 1}
    row = {"model": "vit_tiny", "method": "astra", "devices": 2, "groups": 4, "codebook_size": None,
           "latency_ms": 5.0, "max_abs_err": float("nan"), "oversubscribed": False, "status": "ok", "error": None,
           "run_id": "r1", "settings": json.dumps(settings), "git_commit": "abc123", "git_dirty": True,
           "cpu_count": 8}
    params, metrics, tags = describe(row)
    assert params["method.groups"] == "4" and params["devices"] == "2" and "codebook_size" not in params
    assert len(params["method.note"]) == PARAM_MAX and params["method.note"].endswith("...")
    assert params["weird key_"] == "1"
    assert metrics == {"latency_ms": 5.0}  # not NaN, not a bool, not a setting, not provenance
    assert tags == {"status": "ok", "run_id": "r1", "git_commit": "abc123", "git_dirty": "true", "cpu_count": "8"}
    assert "git_commit" not in describe({**row, "git_commit": None})[2]


def blocked_env(tmp_path: Path) -> dict:
    """An environment in which ``import mlflow`` fails, as without the tracking extra."""
    import os

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['mlflow'] = None  # import mlflow fails\n")
    return {**os.environ, "PYTHONPATH": str(site)}


@pytest.mark.slow
def test_without_mlflow_tracking_is_refused_and_off_imports_nothing(tmp_path):
    env, db, store = blocked_env(tmp_path), tmp_path / "mlflow.db", tmp_path / "r.parquet"
    on = subprocess.run([*BENCH, *TINY, "method=single", "tracking.enabled=true", f"tracking.uri={db}",
                         f"results.path={store}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert on.returncode == 2, on.stderr[-2000:]
    assert on.stderr.strip().splitlines() == ["astra-bench: error: tracking.enabled=true needs MLflow, which is not "
                                              "installed: pip install -e '.[tracking]'"]
    assert not store.exists() and not db.exists()
    # off (the default), in a sweep: the callback is registered but never imports MLflow (here it would fail)
    off = subprocess.run([*BENCH, "-m", *TINY, "method=single", f"tracking.uri={db}", f"results.path={store}",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert off.returncode == 0, off.stderr[-2000:]
    assert len(load(store)) == 1 and "[astra-bench] tracking" not in off.stderr and not db.exists()
    assert not (tmp_path / "mlflow-artifacts").exists()


@pytest.mark.slow
def test_ray_driver_logs_the_jobs_its_workers_ran(tmp_path, monkeypatch):
    """The Ray launcher ships the callback to its workers (pickled), which log nothing; its driver hands every
    job's return to ``tracking.job_ended``, in the sweep's process."""
    pytest.importorskip("mlflow")
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from harness.sweep import tracking

    db, store = tmp_path / "mlflow.db", tmp_path / "r.parquet"
    cfg = OmegaConf.create({
        "tracking": {"enabled": True, "uri": str(db), "experiment": "ray"}, "results": {"path": str(store)},
        "hydra": {"sweep": {"dir": str(tmp_path / "sweep")}, "sweeper": {"params": {}},
                  "overrides": {"task": ["method=single,sp"]}}})
    rows = [{"model": "vit_tiny", "method": m, "devices": n, "tokens": 16, "network": "analytic",
             "bandwidth_mbps": 10.0, "latency_ms": ms, "compute_ms": ms, "comm_ms": 0.0, "payload_bytes": 0,
             "status": "ok", "run_id": f"row-{m}", "timestamp": "2026-01-01T00:00:00", "point_key": m,
             "git_commit": "abc123"} for m, n, ms in (("single", 1, 8.0), ("sp", 2, 4.0))]
    record(store, rows, "job")
    driver = tracking.MlflowTracking()
    driver.on_multirun_start(cfg)
    worker = pickle.loads(pickle.dumps(driver))
    returns = []
    for row in rows:
        ret = JobReturn(overrides=[f"method={row['method']}"], cfg=cfg, status=JobStatus.COMPLETED)
        ret.return_value = row
        returns.append(ret)
        monkeypatch.setenv(REMOTE_ENV, "1")
        worker.on_job_end(cfg, ret)
        monkeypatch.delenv(REMOTE_ENV)
    assert runs_of(db, "ray")[1] == []  # the workers logged nothing
    for ret in returns:
        tracking.job_ended(cfg, ret)
    driver.on_multirun_end(cfg)
    (parent,), children = runs_of(db, "ray")
    assert parent.info.status == "FINISHED"
    speedups = {c.data.tags["run_id"]: c.data.metrics["speedup"] for c in children}
    assert speedups == {"row-single": 1.0, "row-sp": 2.0}
    assert all(c.data.tags["git_commit"] == "abc123" for c in children)
    tracking.job_ended(cfg, returns[0])  # after the sweep: nothing is tracked any more
    assert len(runs_of(db, "ray")[1]) == 2
