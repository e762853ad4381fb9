"""Beyond one machine: the dataset store for many writers, sweeps on a Ray cluster (hydra/launcher=ray), and the
same worker on real devices under torchrun (astra-device), with HTB shaping inside namespaces the test creates."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import ConfigError
from harness.store.results import check_store, find_ok, is_dataset, load, part_path, record
from harness.store.stream import is_side_table, side_path

ROOT = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "-m", "harness.bench"]
TINY = ["model=vit_tiny", "tokens=16", "repeats=1", "warmup=0", "solo_repeats=0"]
HAS_RAY = all(importlib.util.find_spec(m) for m in ("ray", "hydra_plugins.hydra_ray_launcher"))
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="the cluster extra is not installed: pip install -e '.[cluster]'")


def row(run_id: str, method: str = "single", latency: float = 10.0, key: str | None = None) -> dict:
    return {"model": "vit_tiny", "method": method, "devices": 1 if method == "single" else 2, "tokens": 16,
            "network": "loopback", "latency_ms": latency, "status": "ok", "run_id": run_id,
            "timestamp": f"2026-01-01T00:00:{len(run_id):02d}", "point_key": key or run_id}


# ------------------------------------------------------------------------------------------------ dataset store
def _writer(args) -> None:
    folder, store_file, w = args
    for i in range(5):
        record(folder, [row(f"w{w}-{i}")], f"job{w}-{i}")
        record(store_file, [row(f"w{w}-{i}")], f"job{w}-{i}")


@pytest.mark.slow
def test_dataset_takes_concurrent_writers_without_loss(tmp_path):
    folder, store_file = tmp_path / "runs", tmp_path / "one.parquet"
    with multiprocessing.get_context("fork").Pool(6) as pool:
        pool.map(_writer, [(str(folder), str(store_file), w) for w in range(6)])
    want = sorted(f"w{w}-{i}" for w in range(6) for i in range(5))
    assert sorted(load(folder)["run_id"]) == want  # one part per job, read back as one table
    assert sorted(load(store_file)["run_id"]) == want  # the single file, under its lock
    assert len(list(folder.glob("part-*.parquet"))) == 30
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_retried_job_replaces_its_part_and_side_tables_stay_beside(tmp_path):
    folder = tmp_path / "runs"
    assert is_dataset(folder) and not is_dataset(tmp_path / "x.parquet")
    record(folder, [row("first", key="p1")], "jobA")
    record(folder, [row("retry", key="p1")], "jobA")  # the same job again: not a second row
    record(folder, [row("other", method="sp", latency=5.0, key="p2")], "jobB")
    side = side_path(part_path(folder, "jobA"))
    assert side.name == "part-jobA.requests.parquet" and is_side_table(side)
    pd.DataFrame([{"request": 0, "latency_ms": 1.0}]).to_parquet(side)
    df = load(folder)
    assert sorted(df["run_id"]) == ["other", "retry"]
    assert dict(zip(df["method"], df["speedup"])) == pytest.approx({"single": 1.0, "sp": 2.0})
    assert find_ok(folder, "p1")["run_id"] == "retry"
    assert find_ok(folder, "p3") is None and find_ok(tmp_path / "none", "p1") is None


def test_dataset_paths_are_checked(tmp_path):
    check_store(tmp_path / "new" / "runs")  # made on the first write
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a dataset folder"):
        check_store(tmp_path / "afile")
    with pytest.raises(ConfigError, match="or a folder without a suffix"):
        check_store(tmp_path / "runs.txt")


def test_job_names_are_fixed_by_sweep_and_number(tmp_path):
    from omegaconf import OmegaConf

    from harness.store.results import job_name

    def cfg(d, n):
        return OmegaConf.create({"hydra": {"sweep": {"dir": str(d)}, "job": {"num": n}}})

    assert job_name(cfg(tmp_path / "s1", 3)) == job_name(cfg(tmp_path / "s1", 3))
    assert len({job_name(cfg(tmp_path / "s1", 3)), job_name(cfg(tmp_path / "s1", 4)),
                job_name(cfg(tmp_path / "s2", 3))}) == 3
    assert job_name() != job_name()  # outside a sweep: a fresh name each time


# ------------------------------------------------------------------------------------------------ torchrun
def torchrun(*args, timeout=300, env=None, prefix=()):
    cmd = [*prefix, sys.executable, "-m", "torch.distributed.run", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


TIMING = ("latency", "compute", "comm", "cpu", "wall", "runqueue", "throttled", "idle", "solo", "analytic",
          "speedup", "single", "fidelity")  # fidelity: the verdict on the timings


def comparable(r: dict) -> dict:
    """A row without its timings, its ids and where it was stored."""
    out = {k: v for k, v in r.items() if not k.startswith(TIMING) and k not in ("run_id", "timestamp")}
    config = json.loads(out["config"])
    config.pop("results")
    out["config"] = json.dumps(config, sort_keys=True)
    return out


@pytest.mark.slow
def test_torchrun_on_loopback_makes_the_loopback_row(tmp_path):
    point = ["model=vit_tiny", "method=astra", "devices=2", "tokens=16", "repeats=2", "warmup=0", "verify=true",
             "method.codebook_size=16", "network=loopback", f"cache_dir={tmp_path}/cache"]
    r = torchrun("--standalone", "--nproc-per-node", "2", "-m", "harness.device", *point,
                 f"results.path={tmp_path}/device.parquet")
    assert r.returncode == 0, r.stderr[-3000:]
    b = subprocess.run([*BENCH, *point, f"results.path={tmp_path}/bench.parquet"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert b.returncode == 0, b.stderr[-3000:]
    dev, bench = pd.read_parquet(tmp_path / "device.parquet"), pd.read_parquet(tmp_path / "bench.parquet")
    assert len(dev) == 1 and dev["status"].iloc[0] == "ok"
    a, b = comparable(dev.iloc[0].to_dict()), comparable(bench.iloc[0].to_dict())
    assert set(a) == set(b)
    differ = {k for k in a if not (a[k] == b[k] or (pd.isna(a[k]) and pd.isna(b[k])) if not isinstance(a[k], str)
                                   else a[k] == b[k])}
    assert differ <= {"max_abs_err"}, {k: (a[k], b[k]) for k in differ}
    # the same codebooks and weights on the same ranks: the same error against the single device, to float noise
    assert a["max_abs_err"] == pytest.approx(b["max_abs_err"], rel=1e-4, abs=1e-6) and a["payload_bytes"] > 0


@pytest.mark.slow
def test_astra_device_refuses_bad_starts(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    r = subprocess.run([sys.executable, "-m", "harness.device", "method=sp"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 2 and "start astra-device with torchrun" in r.stderr and len(r.stderr.splitlines()) == 1
    # what torchrun would set for rank 0 of 2: the checks come before the rank joins any group
    env.update(RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29599")
    for args, needle in [(["devices=3"], "torchrun started 2 ranks but the point has devices=3"),
                         (["devices=2", "network=mininet"], "is not for real devices")]:
        r = subprocess.run([sys.executable, "-m", "harness.device", *TINY, "method=sp", *args,
                            f"results.path={tmp_path}/x.parquet"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env=env)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.splitlines()) == 1, (args, r.stderr)
    assert not (tmp_path / "x.parquet").exists()
    b = subprocess.run([*BENCH, *TINY, "method=sp", "network=real", f"results.path={tmp_path}/x.parquet"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert b.returncode == 2 and "runs on real devices: start `torchrun" in b.stderr


def _netns_ok() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs {tool} (iproute2)"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_netns_ok() is not None, reason=str(_netns_ok()))
def test_torchrun_on_two_namespaces_with_htb_shaping(tmp_path):
    """Two "devices" in network namespaces this test creates, joined by a veth pair: torchrun in each, the point
    shaped to 20 Mbit/s by each rank on its own interface; the interfaces' queueing is back to default after."""
    from netns import veth_pair

    ips = ["10.213.7.1", "10.213.7.2"]
    with veth_pair("astd", ips) as (ns, veth):
        point = [*TINY, "method=sp", "devices=2", "tokens=512", "repeats=3", "network=real"]

        def run(port, *extra):
            procs = []
            for rank, n in enumerate(ns):
                args = ["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr",
                        ips[0], "--master-port", str(port), "-m", "harness.device", *point, *extra,
                        f"results.path={tmp_path}/real.parquet"]
                procs.append(subprocess.Popen(["ip", "netns", "exec", n, sys.executable, "-m",
                                               "torch.distributed.run", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True))
            outs = [p.communicate(timeout=300) for p in procs]
            assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]

        run(29561)
        run(29562, "network.bandwidth_mbps=20")
        df = pd.read_parquet(tmp_path / "real.parquet")
        assert len(df) == 2 and (df["network"] == "real").all() and df["fidelity"].isna().all()
        free, shaped = df.iloc[0], df.iloc[1]
        assert pd.isna(free["bandwidth_mbps"]) and shaped["bandwidth_mbps"] == 20
        assert shaped["wire_bytes"] >= shaped["payload_bytes"] > 100_000
        # the bytes on the shaped link take at least most of their time at 20 Mbit/s (HTB lets a 25 kB burst by)
        at_rate_ms = shaped["wire_bytes"] * 8 / 20e6 * 1e3
        assert shaped["comm_ms"] >= 0.7 * at_rate_ms > free["comm_ms"], (shaped["comm_ms"], free["comm_ms"], at_rate_ms)
        for n, v in zip(ns, veth):
            q = subprocess.run(["ip", "netns", "exec", n, "tc", "qdisc", "show", "dev", v], capture_output=True,
                               text=True).stdout
            assert "htb" not in q, q


# ------------------------------------------------------------------------------------------------ Ray launcher
@pytest.fixture(scope="module")
def ray_cluster():
    """Ray's own test cluster: a head and a second node of 1 CPU each, on this machine."""
    if not HAS_RAY:
        pytest.skip("the cluster extra is not installed: pip install -e '.[cluster]'")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def ray_sweep(tmp_path, cluster, *extra, timeout=600):
    cmd = [*BENCH, "-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={cluster.address}", *TINY,
           "network=loopback", "devices=2", f"hydra.sweep.dir={tmp_path}/hydra", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@needs_ray
@pytest.mark.slow
def test_ray_sweep_on_a_two_node_cluster_retries_a_killed_worker(tmp_path, ray_cluster):
    """Six points over two nodes into a dataset; the worker of one job is killed (SIGKILL) right after that job
    recorded its row: Ray runs the job again, which finds its point in the store, so every row is there once."""
    folder = tmp_path / "runs"
    r = ray_sweep(tmp_path, ray_cluster, "method=single,sp,astra", "tokens=16,32", f"results.path={folder}",
                  f"fault.kill_job_once={tmp_path}/killed", "fault.kill_job_at=end")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "killed").exists()
    df = load(folder)
    assert len(df) == 6 and df["point_key"].is_unique and (df["status"] == "ok").all()
    assert "point 6/6 finished (ok)" in r.stderr and "ETA" in r.stderr  # the driver shows the whole sweep


@needs_ray
@pytest.mark.slow
def test_ray_records_a_point_whose_worker_keeps_dying(tmp_path, ray_cluster):
    folder = tmp_path / "runs"
    r = ray_sweep(tmp_path, ray_cluster, "method=single,sp", f"results.path={folder}",
                  f"fault.kill_job_once={tmp_path}/killed", "hydra.launcher.max_retries=0")
    assert r.returncode == 1, r.stderr[-3000:]  # the sweep goes on, and its exit status says a point failed
    df = load(folder).sort_values("status")
    assert list(df["status"]) == ["failed", "ok"] and "Ray could not finish this point" in df["error"].iloc[0]
    assert "finished (failed)" in r.stderr
    assert "[astra-bench] sweep finished: 1 ok, 1 failed (method=" in r.stderr


@needs_ray
@pytest.mark.slow
def test_ray_sweep_measures_a_point_named_by_several_jobs_once(tmp_path, ray_cluster):
    """The single baseline named by every device count of the sweep is one point: one row, as with the basic
    launcher; the other jobs report it skipped."""
    store = tmp_path / "r.parquet"
    r = ray_sweep(tmp_path, ray_cluster, "method=single,sp", "devices=2,3", f"results.path={store}")
    assert r.returncode == 0, r.stderr[-3000:]
    df = load(store)
    assert sorted(df["method"]) == ["single", "sp", "sp"] and df["point_key"].is_unique
    assert "finished (skipped: the same point as devices=2)" in r.stderr
    assert "[astra-bench] sweep finished: 3 ok, 0 failed, 1 skipped" in r.stderr
