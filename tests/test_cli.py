"""End-to-end tests of the ``astra-bench`` CLI, run as real subprocesses (``python -m harness.bench ...``).

Every CLI case gets its own directory holding ``results.path``, ``cache_dir`` and a private ``TMPDIR``. The
controller creates its per-run work directory (``astra-run-*``, holding the spec the ranks read) under ``TMPDIR``, so
every ``harness.rank.worker`` process a case starts carries that case's directory in its command line: that is how the
tests find (only) their own worker processes in /proc, even with other cases, or other people's runs, in flight.

The CLI cases are independent, so a module-scoped runner starts the ones this session selected on a small thread
pool up front (each one a subprocess with a timeout) and each test waits for its own case.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from harness.store.results import COLUMNS, cpu_list, load

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "results" / "paper"
USER_CSV = "name,score\nalice,3\nbob,5\n"  # somebody's own table, named by mistake as the results store
POINT_TIMEOUT_S = 180  # one point takes ~3-8 s alone; generous for a loaded 2-core machine
SWEEP_TIMEOUT_S = 300
POOL_SIZE = 2  # concurrent CPU-bound CLI cases (the machine has 2 cores)


# --------------------------------------------------------------------------------------------------------------------
# Running the CLI and finding our own worker processes
# --------------------------------------------------------------------------------------------------------------------


def worker_pids(marker: str) -> set[int]:
    """PIDs of live ``harness.rank.worker`` processes whose command line mentions ``marker`` (a case directory)."""
    pids = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # exited while we looked
            continue
        if "harness.rank.worker" in argv and any(marker in a for a in argv):
            pids.add(int(d.name))
    return pids


def kill_our_workers(marker: str) -> None:
    """Last-resort cleanup after a timed-out case: SIGKILL this case's workers, by PID."""
    for pid in worker_pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Run:
    args: list[str]
    dir: Path
    rc: int
    stdout: str
    stderr: str
    wall_s: float
    leftover_workers: set[int]  # our harness.rank.worker processes still alive right after the controller exited
    extra: dict = field(default_factory=dict)

    @property
    def results(self) -> Path:
        return self.dir / "r.parquet"

    @property
    def cache(self) -> Path:
        return self.dir / "cache"

    @property
    def tmp(self) -> Path:
        return self.dir / "tmp"

    def row(self) -> dict:
        lines = [ln for ln in self.stdout.splitlines() if ln.strip()]
        assert lines, f"no stdout; stderr:\n{self.stderr}"
        return json.loads(lines[-1])

    def stderr_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    def describe(self) -> str:
        return (
            f"astra-bench {' '.join(self.args)}\n rc={self.rc}\n"
            f" stdout:\n{self.stdout[-3000:]}\n stderr:\n{self.stderr[-3000:]}"
        )


def cli_command(d: Path, args: list[str]) -> list[str]:
    defaults = [f"results.path={d / 'r.parquet'}", f"cache_dir={d / 'cache'}"]
    given = {a.split("=", 1)[0].lstrip("+~") for a in args}
    return [sys.executable, "-m", "harness.bench", *args, *(a for a in defaults if a.split("=", 1)[0] not in given)]


def cli_env(d: Path) -> dict:
    (d / "tmp").mkdir(parents=True, exist_ok=True)
    # one torch thread in the controller (k-means): several cases share 2 cores; ranks get threads= anyway
    env = dict(os.environ, TMPDIR=str(d / "tmp"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def start_cli(d: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command(d, args), cwd=REPO, env=cli_env(d), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def finish(p: subprocess.Popen, d: Path, args: list[str], timeout: float, t0: float) -> Run:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        kill_our_workers(str(d))
        raise AssertionError(
            f"astra-bench {' '.join(args)} did not exit within {timeout} s\n{out[-2000:]}\n{err[-2000:]}"
        )
    return Run(args, d, p.returncode, out, err, time.monotonic() - t0, worker_pids(str(d)))


def run_cli(d: Path, args: list[str], timeout: float = POINT_TIMEOUT_S) -> Run:
    t0 = time.monotonic()
    return finish(start_cli(d, args), d, args, timeout, t0)


def run_sigterm(d: Path, args: list[str]) -> Run:
    """Start a long point, SIGTERM the controller once its workers exist, and record how it ended."""
    t0 = time.monotonic()
    p = start_cli(d, args)
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while not seen and p.poll() is None and time.monotonic() < deadline:
        seen = worker_pids(str(d))
        time.sleep(0.05)  # polling interval only; nothing is measured by it
    running = p.poll() is None
    if running:
        p.send_signal(signal.SIGTERM)
    t_sig = time.monotonic()
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        kill_our_workers(str(d))
    exit_s = time.monotonic() - t_sig
    run = Run(args, d, p.returncode, out, err, time.monotonic() - t0, worker_pids(str(d)))
    run.extra.update(workers_seen=seen, running_at_signal=running, exit_after_signal_s=exit_s)
    return run


def run_sigkill_rank(d: Path, args: list[str], rank: int = 1) -> Run:
    """Start a long point and SIGKILL one of its ranks (found by its RANK variable) once it runs."""
    t0 = time.monotonic()
    p = start_cli(d, args)
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and p.poll() is None and time.monotonic() < deadline:
        for pid in worker_pids(str(d)):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                victim = pid
        time.sleep(0.05)  # polling interval only
    if victim is not None:
        time.sleep(2)  # let it get into its timed loop (not a measurement)
        os.kill(victim, signal.SIGKILL)
    run = finish(p, d, args, 90, t0)
    run.extra["killed"] = victim
    return run


# --------------------------------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------------------------------

MODELS = ("vit_tiny", "gpt2_tiny")
METHODS = ("single", "tp", "sp", "astra", "bp_ag", "bp_sp", "ring_attn", "galaxy")
POINT = ["devices=2", "tokens=50", "verify=true", "repeats=2", "warmup=1"]


def point_args(model: str, method: str, *extra: str) -> list[str]:
    args = [f"model={model}", f"method={method}", *POINT]
    if method == "astra":
        args.append("method.codebook_size=64")  # keeps k-means fast
    return args + list(extra)


def make_wrong_shape_weights(d: Path) -> Path:
    """An HF GPT2 directory (config.json + model.safetensors) with hidden 32, where gpt2_tiny has hidden 64."""
    import transformers

    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=512, n_positions=256)
    path = d / "gpt2_h32"
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    return path


# Bad input: case -> (overrides, substrings the error line must contain). "{dir}" is the case directory.
BAD = {
    "model-nope": (["model=nope"], ["model", "nope"]),
    "method-nope": (["method=nope"], ["method", "nope"]),
    "network-nope": (["network=nope"], ["network", "nope"]),
    "devices-0": (["devices=0"], ["devices=0"]),
    "devices-100-tokens-10": (["devices=100", "tokens=10"], ["devices=100"]),
    "astra-groups-3": (["model=vit_tiny", "method=astra", "method.groups=3"], ["groups=3"]),
    "astra-K-1000": (["method=astra", "method.codebook_size=1000"], ["codebook_size=1000"]),
    "astra-K-131072": (["method=astra", "method.codebook_size=131072"], ["codebook_size=131072"]),
    "tp-devices-5": (["model=vit_tiny", "method=tp", "devices=5"], ["heads", "at most 4 devices"]),
    "bp-retained-3": (["model=vit_tiny", "method=bp_ag", "method.retained=3"], ["retained=3", "divide"]),
    "bp-devices-3": (["model=vit_tiny", "method=bp_sp", "devices=3"], ["hidden size 64", "devices=3"]),
    "weights-missing": (["model=vit_tiny", "model.weights={dir}/missing"], ["missing"]),
    "weights-wrong-shape": (["model=gpt2_tiny", "model.weights={dir}/gpt2_h32"], ["shape"]),
    "astra-vq-checkpoint-without-path": (["method=astra", "method.vq=checkpoint"], ["checkpoint"]),
    # every numeric key's type and range, every path key, every list key, every key name
    "seed-abc": (["seed=abc"], ["seed=abc", "integer"]),
    "repeats-0": (["repeats=0"], ["repeats=0"]),
    "warmup-negative": (["warmup=-1"], ["warmup=-1"]),
    "batch-0": (["batch=0"], ["batch=0"]),
    "timeout-0": (["timeout_s=0"], ["timeout_s=0"]),
    "device-threads-0": (["device.threads=0"], ["device.threads=0"]),
    "device-cores-0": (["device.cores=0"], ["device.cores=0"]),
    "verify-maybe": (["verify=maybe"], ["verify=maybe"]),
    "collectives-nope": (["collectives=nope"], ["collectives=nope", "p2p"]),
    "crash-rank-out-of-range": (["method=sp", "fault.crash_rank=5"], ["fault.crash_rank=5"]),
    "record-failures-maybe": (["results.record_failures=maybe"], ["record_failures=maybe"]),
    "results-path-txt": (["results.path={dir}/out.txt"], [".parquet or .csv"]),
    "results-path-not-a-store": (["results.path={dir}/broken.parquet"], ["not a readable parquet store"]),
    "results-path-directory": (["results.path={dir}/bucket.parquet"], ["is a directory"]),
    "results-path-paper-table": (["results.path={dir}/fig1_speedup.csv"], ["not an astra-bench store", "untouched"]),
    "results-path-user-csv": (["results.path={dir}/mine.csv"], ["not an astra-bench store", "run_id"]),
    "results-path-unwritable": (["results.path=/proc/astra/out.parquet"], ["cannot write in /proc/astra"]),
    "results-path-sweep-user-csv": (["-m", "method=sp,tp", "results.path={dir}/mine.csv"], ["not an astra-bench"]),
    "experiment-without-m": (["experiment=quickstart"], ["experiment=quickstart is a sweep", "-m"]),
    "cache-dir-file": (["cache_dir={dir}/afile"], ["cache_dir", "is a file"]),
    "checkpoint-missing": (["method=astra", "method.checkpoint={dir}/nothing"], ["does not exist"]),
    "typo-method-key": (["method.group=4"], ["method.group", "did you mean groups"]),
    "typo-top-key": (["bandwith=10"], ["bandwith", "did you mean network.bandwidth_mbps"]),
    "appended-key": (["+method.group=4"], ["method.group", "did you mean groups"]),
    "appended-existing-key": (["+devices=3"], ["+devices", "write devices=<value>"]),
    "deleted-key": (["~devices"], ["~devices"]),
    "several-values-without-m": (["devices=2,3"], ["-m"]),
    "tp-astra-knob": (["method=tp", "method.groups=16"], ["method=tp has no option groups"]),
    "sp-sweep-astra-knob": (["-m", "method=sp", "method.groups=2"], ["method=sp has no option groups"]),
    "single-astra-knob": (["method=single", "method.codebook_size=64"], ["no option codebook_size"]),
    "loopback-bandwidth": (["network=loopback", "network.bandwidth_mbps=10"], ["network=loopback has no option"]),
    "reference-ms-0": (["device.reference_ms=0"], ["device.reference_ms=0"]),
    "dilation-below-1": (["device.dilation=0.5"], ["device.dilation=0.5", "auto or a number"]),
    "dilation-word": (["device.dilation=fast"], ["device.dilation=fast", "auto or a number"]),
    "dilation-on-loopback": (["device.dilation=2"], ["device.dilation=2", "network=mininet"]),
    "reference-on-loopback": (["device.reference_ms=100"], ["device.reference_ms=100", "network=mininet"]),
    "budget-0": (["budget_s=0"], ["budget_s=0"]),
    "analytic-bandwidth-list": (["network=analytic", "network.bandwidth_mbps=[10,abc]"], ["abc is not a number"]),
    "analytic-bandwidth-count": (["network=analytic", "network.bandwidth_mbps=[10,20,30]"], ["lists 3 values"]),
    "analytic-model": (["network=analytic", "network.collective_model=tree"], ["collective_model=tree"]),
    "analytic-unit": (["network=analytic", "network.mbps_unit=0"], ["mbps_unit=0"]),
    "gpt2-positions": (["model=gpt2_tiny", "tokens=300"], ["tokens=300", "256 positions"]),
    "model-tokens": (["model.tokens=5"], ["tokens="]),
    "model-hidden-heads": (["model.hidden=65"], ["not divisible"]),
    "weight-bits-5": (["model.weight_bits=5"], ["model.weight_bits=5", "32", "8 or 4"]),
    "weight-group-7": (["model.weight_bits=4", "model.weight_group=7"], ["model.weight_group=7", "divisor"]),
    "kv-table-maybe": (["method.kv_table=maybe"], ["kv_table=maybe"]),
    "K-not-a-number": (["method.codebook_size=lots"], ["codebook_size=lots"]),
}

FAULTS = {
    "fault-crash": ["model=vit_tiny", "method=sp", "devices=2", "fault.crash_rank=1"],
    "fault-hang": ["model=vit_tiny", "method=sp", "devices=2", "fault.hang_rank=1", "timeout_s=8"],
    # one rank, so no collective times out: only the controller's deadline can end this run
    "fault-hang-single": ["model=vit_tiny", "method=single", "fault.hang_rank=0", "timeout_s=3"],
}
SIGTERM_ARGS = ["model=vit_tiny", "method=sp", "devices=2", "repeats=200", "tokens=64"]


def build_cases() -> dict[str, Callable[[Path], Run | None]]:
    cases: dict[str, Callable[[Path], Run | None]] = {}
    for model in MODELS:
        for method in METHODS:
            cases[f"{model}-{method}"] = lambda d, a=point_args(model, method): run_cli(d, a)
    d3 = [a for a in point_args("vit_tiny", "astra") if a != "devices=2"] + ["devices=3"]
    cases["vit_tiny-astra-devices3"] = lambda d: run_cli(d, d3)
    cases["vit_tiny-astra-lossless"] = lambda d: run_cli(d, point_args("vit_tiny", "astra", "method.vq=lossless"))

    def bad(d: Path, key: str) -> Run | None:
        if key == "weights-wrong-shape":
            try:
                make_wrong_shape_weights(d)
            except ImportError:
                return None  # the test skips
        (d / "broken.parquet").write_text("not a parquet file\n")
        shutil.copy(PAPER / "fig1_speedup.csv", d / "fig1_speedup.csv")
        (d / "mine.csv").write_text(USER_CSV)
        (d / "bucket.parquet").mkdir()
        (d / "afile").write_text("")
        return run_cli(d, [a.format(dir=d) for a in BAD[key][0]], timeout=120)

    for key in BAD:
        cases[f"bad-{key}"] = lambda d, k=key: bad(d, k)
    for key, args in FAULTS.items():
        cases[key] = lambda d, a=args: run_cli(d, a, timeout=90)
    cases["sigterm"] = lambda d: run_sigterm(d, SIGTERM_ARGS)
    cases["sigkill-rank"] = lambda d: run_sigkill_rank(d, SIGTERM_ARGS)
    cases["sweep"] = lambda d: run_cli(
        d, ["-m", "experiment=quickstart", f"hydra.sweep.dir={d / 'sweep'}"], timeout=SWEEP_TIMEOUT_S
    )
    return cases


CASES = build_cases()
FIRST = ("sweep",)  # longest-running first, so it does not end up as the tail
# Cases that mostly wait (a hung rank) run on their own small pool, beside the CPU-bound ones.
IDLE = ("fault-hang", "fault-hang-single")
DEPENDS = {"vit_tiny-astra-lossless": ["vit_tiny-astra", "vit_tiny-sp"]}  # cases a test compares against


class Runner:
    """Runs CLI cases on a thread pool; ``result(key)`` waits for one (starting it if nobody asked before)."""

    def __init__(self, factory: pytest.TempPathFactory):
        self.factory = factory
        self.pool = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="astra-cli")
        self.idle_pool = ThreadPoolExecutor(len(IDLE), thread_name_prefix="astra-cli-idle")
        self.futures: dict[str, Future] = {}
        self.lock = threading.Lock()

    def submit(self, key: str) -> Future:
        with self.lock:
            if key not in self.futures:
                d = self.factory.mktemp(key, numbered=True)
                pool = self.idle_pool if key in IDLE else self.pool
                self.futures[key] = pool.submit(CASES[key], d)
            return self.futures[key]

    def result(self, key: str) -> Run | None:
        return self.submit(key).result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.idle_pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    wanted = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "module", None) is request.module and params.get("case") in CASES:
            wanted += [params["case"], *DEPENDS.get(params["case"], [])]
    wanted = list(dict.fromkeys(wanted))
    runner = Runner(tmp_path_factory)
    for key in sorted(wanted, key=lambda k: (k not in FIRST, FIRST.index(k) if k in FIRST else 0)):
        runner.submit(key)
    yield runner
    runner.close()


def assert_nothing_written(run: Run) -> None:
    """No results file (nor its lock or a temp file), no cache files, no leftover run directory or worker."""
    assert not run.results.exists(), run.describe()
    assert not [p.name for p in run.dir.glob("*r.parquet*")], run.describe()
    cached = [p for p in run.cache.rglob("*") if p.is_file()] if run.cache.exists() else []
    assert not cached, f"cache files written by a failed run: {cached}"
    assert not list(run.tmp.glob("astra-run-*")), f"run directory left behind: {list(run.tmp.iterdir())}"
    assert not run.leftover_workers, f"worker processes left running: {run.leftover_workers}"


def the_error_line(run: Run) -> str:
    """The single ``astra-bench: error:`` line; other stderr lines may only be the controller's own log lines."""
    errors = [ln for ln in run.stderr_lines() if "error" in ln.lower()]
    others = [ln for ln in run.stderr_lines() if ln not in errors and not ln.startswith("[astra-bench]")]
    assert len(errors) == 1 and not others, run.describe()
    assert errors[0].startswith("astra-bench: error: "), run.describe()
    return errors[0]


# --------------------------------------------------------------------------------------------------------------------
# 1. Every model x method point runs, prints its row and stores it
# --------------------------------------------------------------------------------------------------------------------

POINT_CASES = [f"{m}-{meth}" for m in MODELS for meth in METHODS] + ["vit_tiny-astra-devices3"]


@pytest.mark.slow
@pytest.mark.parametrize("case", POINT_CASES)
def test_point_runs_and_is_recorded(runs, case):
    run = runs.result(case)
    assert run.rc == 0, run.describe()
    row = run.row()
    model, method = case.split("-")[:2]
    devices = 3 if case.endswith("devices3") else 2
    missing = [c for c in COLUMNS if c not in row]
    assert not missing, f"row lacks contract columns {missing}"

    assert (row["model"], row["method"], row["tokens"], row["repeats"]) == (model, method, 50, 2)
    assert row["devices"] == (1 if method == "single" else devices)  # single always runs on one device
    assert (row["network"], row["bandwidth_mbps"], row["wire_bytes"]) == ("loopback", None, None)
    assert (row["status"], row["error"]) == ("ok", None)
    assert (row["groups"], row["codebook_size"]) == ((1, 64) if method == "astra" else (None, None))
    assert row["oversubscribed"] == (row["devices"] * row["cpu_per_device"] > (os.cpu_count() or 1))
    assert json.loads(row["config"])["cache_dir"] == str(run.cache)

    lat = row["latency_ms"]
    assert math.isfinite(lat) and lat > 0
    # where the time went: the rank's own CPU time and its wait for a CPU are recorded beside the latency
    assert 0 < row["cpu_ms"] and row["runqueue_wait_ms"] >= 0 and row["throttled_ms"] in (None, 0.0)
    assert row["cpus"] == cpu_list(sorted(os.sched_getaffinity(0)))
    # nothing is dilated on loopback; every row carries its fidelity verdict, multi-device ones their inflation
    assert row["dilation"] == 1.0 and row["latency_real_ms"] == lat
    assert row["fidelity"] == "ok" or row["fidelity"].startswith(("compute inflated", "machine saturated", "oversub"))
    assert (row["compute_inflation"] is None) == (method == "single")
    assert row["latency_p90_ms"] >= lat
    assert row["compute_ms"] > 0 and row["comm_ms"] >= 0
    if method == "single":
        assert row["payload_bytes"] == 0 and row["comm_ms"] == 0
    else:
        assert row["payload_bytes"] > 0
    err = row["max_abs_err"]
    assert err is not None and math.isfinite(err)
    if method != "astra":
        assert err <= 1e-4, f"{case}: max_abs_err {err} (exact methods must match the single-device output)"
    if method == "astra":
        assert list(run.cache.glob("*.safetensors")), "k-means codebooks were not cached in cache_dir"

    raw = pd.read_parquet(run.results)
    assert list(raw.columns[: len(COLUMNS)]) == COLUMNS
    df = load(run.results)
    assert len(df) == 1
    stored = df.iloc[0]
    assert stored["run_id"] == row["run_id"]
    for col in ("model", "method", "devices", "payload_bytes", "status"):
        assert stored[col] == row[col], col
    for col in ("latency_ms", "latency_p90_ms", "max_abs_err"):
        assert stored[col] == pytest.approx(row[col]), col
    if method == "single":
        assert stored["speedup"] == pytest.approx(1.0)
    else:  # no single row in this store to compare with
        assert math.isnan(stored["speedup"])
    assert not run.leftover_workers
    assert not list(run.tmp.glob("astra-run-*")), "the run's work directory was not removed"


# --------------------------------------------------------------------------------------------------------------------
# 2. Lossless ASTRA is exact and sends fp32 activations
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", ["vit_tiny-astra-lossless"])
def test_astra_lossless_is_exact_and_ships_fp32(runs, case):
    run = runs.result(case)
    assert run.rc == 0, run.describe()
    row = run.row()
    assert row["method"] == "astra" and row["max_abs_err"] <= 1e-4
    assert not list(run.cache.glob("*")), "lossless ASTRA needs no codebooks"
    kmeans, sp = runs.result("vit_tiny-astra"), runs.result("vit_tiny-sp")
    assert kmeans.rc == 0 and sp.rc == 0
    k_bytes, sp_bytes = kmeans.row()["payload_bytes"], sp.row()["payload_bytes"]
    assert row["payload_bytes"] > k_bytes
    # fp32 activations (2048 bits per token) against 6-bit indices: an order of magnitude at least
    assert row["payload_bytes"] >= 10 * k_bytes
    assert row["payload_bytes"] >= sp_bytes, "lossless ASTRA exchanges the same fp32 tokens sp does"


# --------------------------------------------------------------------------------------------------------------------
# 3. Bad input: one error line, exit != 0, nothing written
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", [f"bad-{k}" for k in BAD])
def test_bad_input_fails_cleanly(runs, case):
    key = case.removeprefix("bad-")
    if key == "weights-wrong-shape":
        pytest.importorskip("transformers")
    run = runs.result(case)
    assert run is not None
    assert run.rc != 0, run.describe()
    assert run.rc == 2, f"bad input should exit 2 (1 is for a failed run)\n{run.describe()}"
    lines = run.stderr_lines()
    assert len(lines) == 1 and "error" in lines[0], run.describe()
    for word in BAD[key][1]:
        assert word.lower() in lines[0].lower(), f"error line does not name {word!r}: {lines[0]}"
    assert not run.stdout.strip(), f"a failed single point printed a row:\n{run.stdout}"
    assert "Traceback" not in run.stderr
    assert_nothing_written(run)
    assert (run.dir / "broken.parquet").read_text() == "not a parquet file\n", "a broken store was touched"
    assert (run.dir / "fig1_speedup.csv").read_bytes() == (PAPER / "fig1_speedup.csv").read_bytes()
    assert (run.dir / "mine.csv").read_text() == USER_CSV
    assert not [p.name for p in run.dir.iterdir() if p.name.endswith(".lock")], "a lock file was left"
    assert not list((run.dir / "bucket.parquet").iterdir()) and (run.dir / "afile").read_text() == ""


# --------------------------------------------------------------------------------------------------------------------
# 4. A rank that crashes or hangs fails the run with one line and leaves no process behind
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FAULTS))
def test_rank_failure_fails_cleanly(runs, case):
    run = runs.result(case)
    assert run.rc == 1, run.describe()
    line = the_error_line(run)
    assert "rank" in line, line
    if case.startswith("fault-hang"):
        assert "time" in line.lower(), f"a hang should be reported as a timeout: {line}"
    assert not run.stdout.strip(), run.describe()
    assert_nothing_written(run)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fault-crash"])
def test_crash_error_names_the_crashed_rank(runs, case):
    line = the_error_line(runs.result(case))
    assert "rank 1" in line and "injected crash" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fault-hang"])
def test_hang_error_names_the_hung_rank(runs, case):
    line = the_error_line(runs.result(case))
    assert "ranks [1] stopped responding" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fault-hang-single"])
def test_hang_error_reports_the_configured_timeout(runs, case):
    line = the_error_line(runs.result(case))
    assert "timeout_s=3" in line and "timeout_s=33" not in line, line


@pytest.mark.slow
@pytest.mark.parametrize("case", ["sigkill-rank"])
def test_rank_killed_by_signal_is_named(runs, case):
    run = runs.result(case)
    assert run.extra["killed"], f"rank 1 never appeared\n{run.describe()}"
    assert run.rc == 1, run.describe()
    line = the_error_line(run)
    assert "rank 1 was killed by signal 9 (SIGKILL)" in line, line
    assert_nothing_written(run)


# --------------------------------------------------------------------------------------------------------------------
# 5. SIGTERM to the controller stops the run and its workers
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", ["sigterm"])
def test_sigterm_stops_controller_and_workers(runs, case):
    run = runs.result(case)
    assert run.extra["workers_seen"], f"no worker process ever appeared\n{run.describe()}"
    assert run.extra["running_at_signal"], f"the point finished before SIGTERM could test anything\n{run.describe()}"
    assert run.extra["exit_after_signal_s"] < 10, run.extra
    assert run.rc != 0, run.describe()
    assert run.rc > 0, f"controller was killed by the signal (rc={run.rc}) instead of handling it"
    assert not run.leftover_workers, f"workers {run.leftover_workers} outlived the controller"
    assert not run.results.exists()
    assert not list(run.tmp.glob("astra-run-*")), "the run's work directory was not removed"


# --------------------------------------------------------------------------------------------------------------------
# 6. A real Hydra sweep
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", ["sweep"])
def test_quickstart_sweep(runs, case):
    run = runs.result(case)
    assert run.rc == 0, run.describe()
    printed = [json.loads(ln) for ln in run.stdout.splitlines() if ln.startswith("{")]
    quick = ["single", "tp", "sp", "astra"]  # experiment=quickstart's methods
    assert sorted(r["method"] for r in printed) == sorted(quick)
    df = load(run.results)
    assert len(df) == 4
    assert sorted(df["method"]) == sorted(quick)
    assert (df["status"] == "ok").all() and (df["model"] == "vit_tiny").all() and (df["tokens"] == 64).all()
    by = df.set_index("method")
    assert by.loc["single", "devices"] == 1 and (by.drop(index="single")["devices"] == 2).all()
    assert by.loc["single", "speedup"] == pytest.approx(1.0)
    for method in ("tp", "sp", "astra"):
        s = by.loc[method, "speedup"]
        assert math.isfinite(s) and s > 0, (method, s)
        assert s == pytest.approx(by.loc["single", "latency_ms"] / by.loc[method, "latency_ms"])
    assert (by.loc[["single", "tp", "sp"], "max_abs_err"] <= 1e-4).all()
    assert math.isfinite(by.loc["astra", "max_abs_err"])
    assert not run.leftover_workers
