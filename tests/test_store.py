"""The results store (harness.store.results), without running points: atomic appends under a lock that leaves no file
behind, concurrent writers, loading folders, refusing files that are not stores (left untouched), pending parts of a
sweep folded in once."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import ConfigError
from harness.store.results import COLUMNS, append_row, append_rows, check_store, load, lock_path

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "results" / "paper"
USER_CSV = "name,score\nalice,3\nbob,5\n"  # somebody's own table, named by mistake as the results store


def store_row(method: str = "single", latency: float = 10.0, run_id: str = "r0", timestamp: str = "2024-01-01") -> dict:
    row = {c: None for c in COLUMNS}
    row.update(
        model="vit_tiny", method=method, devices=1 if method == "single" else 2, tokens=64, network="loopback",
        repeats=3, latency_ms=latency, latency_p90_ms=latency, compute_ms=latency, comm_ms=0.0, payload_bytes=0,
        max_abs_err=0.0, cpu_per_device=1.0, oversubscribed=False, status="ok", run_id=run_id, timestamp=timestamp,
        config="{}",
    )  # fmt: skip
    # extra columns first and the contract columns reversed: the store must put the contract first, in order
    return {"wall_s": 1.5, "seed": 0, **dict(reversed(list(row.items())))}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_append_row_twice(tmp_path, suffix):
    path = tmp_path / "sub" / f"store{suffix}"
    append_row(path, store_row(run_id="a"))
    append_row(path, store_row(method="sp", latency=4.0, run_id="b"))
    raw = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    assert len(raw) == 2
    assert list(raw.columns) == COLUMNS + ["wall_s", "seed"]
    assert list(raw["run_id"]) == ["a", "b"]
    df = load(path)
    assert list(df["speedup"]) == pytest.approx([1.0, 2.5])
    assert not [p.name for p in path.parent.iterdir() if ".tmp" in p.name], "temporary file left behind"


def test_append_row_rejects_other_extensions(tmp_path):
    with pytest.raises(ValueError, match=r"\.parquet or \.csv"):
        append_row(tmp_path / "store.txt", store_row())
    assert not list(tmp_path.iterdir())


def test_concurrent_appends_lose_nothing(tmp_path):
    path = tmp_path / "store.parquet"
    ids = [f"t{t}-{i}" for t in range(4) for i in range(5)]

    def writer(t):
        for i in range(5):
            append_row(path, store_row(run_id=f"t{t}-{i}"))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert sorted(pd.read_parquet(path)["run_id"]) == sorted(ids)


def test_load_directory_concatenates_files(tmp_path):
    append_row(tmp_path / "a.parquet", store_row(run_id="a", latency=10.0))
    append_row(tmp_path / "nested" / "b.csv", store_row(method="sp", latency=2.5, run_id="b"))
    append_row(tmp_path / "nested" / "b.csv", store_row(method="tp", latency=5.0, run_id="c"))
    df = load(tmp_path)
    assert sorted(df["run_id"]) == ["a", "b", "c"]
    speedup = dict(zip(df["method"], df["speedup"]))  # the single baseline comes from the other file
    assert speedup == pytest.approx({"single": 1.0, "sp": 4.0, "tp": 2.0})


def test_load_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nothing.parquet")
    with pytest.raises(FileNotFoundError):
        load(tmp_path)  # an empty directory


@pytest.mark.parametrize("name", sorted(p.name for p in PAPER.iterdir() if p.suffix == ".csv") + ["mine.csv"])
def test_a_file_that_is_not_a_store_is_refused_and_untouched(tmp_path, name):
    path = tmp_path / name
    if name == "mine.csv":
        path.write_text(USER_CSV)
    else:
        shutil.copy(PAPER / name, path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="is not an astra-bench store .* left untouched"):
        check_store(path)
    with pytest.raises(ConfigError, match="is not an astra-bench store"):
        append_row(path, store_row())
    with pytest.raises(ConfigError, match="is not an astra-bench store"):
        load(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "nothing beside it either (lock, temporary file)"


def test_a_folder_of_stores_and_other_tables_loads_only_the_stores(tmp_path):
    shutil.copy(PAPER / "fig1_speedup.csv", tmp_path / "fig1_speedup.csv")
    (tmp_path / "mine.csv").write_text(USER_CSV)
    append_row(tmp_path / "r.parquet", store_row(run_id="a"))
    assert list(load(tmp_path)["run_id"]) == ["a"]


def test_the_lock_is_hidden_and_gone_when_the_writer_leaves(tmp_path):
    from harness.store.results import _locked

    path = tmp_path / "r.parquet"
    assert lock_path(path).name == ".r.parquet.lock"
    with _locked(path):
        assert lock_path(path).exists()
    append_row(path, store_row())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.parquet"]


def test_unwritable_store_folder_is_refused_and_nothing_is_made(tmp_path):
    with pytest.raises(ConfigError, match="cannot write in /proc/astra"):
        check_store("/proc/astra/out.parquet")
    check_store(tmp_path / "new" / "deeper" / "r.parquet")  # can be made: made to try, then removed again
    assert not list(tmp_path.iterdir())


def test_accuracy_and_side_stores_keep_their_own_keys(tmp_path):
    from harness.store.stream import SIDE_KEYS
    from harness.train.evaluate import ACC_COLUMNS, ACC_KEYS

    acc = tmp_path / "acc.parquet"
    append_rows(acc, [{"task": "digits", "metric": "top1", "value": 0.9, "run_id": "a", "timestamp": "t"}],
                ACC_COLUMNS, keys=ACC_KEYS)
    check_store(acc, "results_path", keys=ACC_KEYS)
    with pytest.raises(ConfigError, match="not an astra-bench store"):
        check_store(acc)  # an accuracy store is not a results store
    side = tmp_path / "r.requests.parquet"
    append_rows(side, [{"run_id": "a", "point_key": "p", "kind": "request"}], keys=SIDE_KEYS)
    with pytest.raises(ConfigError, match="not an astra-bench store"):
        append_rows(side, [store_row()])


def test_a_sweeps_rows_wait_as_parts_and_are_folded_in_once(tmp_path):
    """Inside a sweep a row is the job's pending part beside the store (no rewrite of the store per point); readers
    see file and parts as one table; compact (the sweep's end, or the next read) folds them in, losing nothing."""
    from harness.store.results import compact, find_ok, pending_dir, record

    path = tmp_path / "r.parquet"
    append_row(path, store_row(run_id="before"))
    before = path.read_bytes()
    for i in range(3):
        row = {**store_row(method="sp", run_id=f"p{i}", latency=float(i + 1)), "point_key": f"k{i}"}
        record(path, [row], f"job{i}", pending=True)
    record(path, [{**store_row(method="sp", run_id="p1-retry", latency=9.0), "point_key": "k1"}], "job1",
           pending=True)  # a retried job replaces its part
    assert path.read_bytes() == before, "a sweep's row rewrote the store"
    assert sorted(p.name for p in pending_dir(path).iterdir()) == ["part-job0.parquet", "part-job1.parquet",
                                                                    "part-job2.parquet"]
    assert find_ok(path, "k2")["run_id"] == "p2" and find_ok(path, "k9") is None
    assert compact(path) == 3
    assert not pending_dir(path).exists()
    assert sorted(pd.read_parquet(path)["run_id"]) == ["before", "p0", "p1-retry", "p2"]
    record(path, [{**store_row(method="tp", run_id="late"), "point_key": "k3"}], "job3", pending=True)
    assert sorted(load(path)["run_id"]) == ["before", "late", "p0", "p1-retry", "p2"]  # compacted on read
    assert not pending_dir(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.parquet"]
