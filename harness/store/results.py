"""The results store: one tidy row per experiment point, parquet or CSV by file extension, or a dataset.

A store file: appends are atomic (read, concatenate, write a temporary file, ``os.replace``) under an exclusive
lock, so a crash mid-write never loses earlier rows and concurrent writers on one machine do not interleave. The
lock is a hidden file beside the store (``.<name>.lock``) that exists only while a writer holds it.

Inside a ``-m`` sweep a row is not appended to the file (which would reread and rewrite it: a grid of n points
would cost O(n²)) but written as the job's own pending part, ``.<name>.parts/part-<job>.parquet`` beside it (a
retried job replaces its part). The sweep's end folds the parts into the file (``compact``), and so does the next
``load`` or direct append if a sweep was cut short; until then every reader (``load``, ``find_ok``) sees the file
and its parts as one table. Nothing is lost at any moment: a part is removed only after the file holding its row
was written.

A file is only ever appended to if it already is a store of that kind: it carries the kind's identifying columns
(``RESULT_KEYS`` for astra-bench's rows). Anything else (a paper table, a user's CSV) is refused before any work and
left byte for byte as it was.

A dataset (``results.path`` names a folder: no suffix) is for many writers (sweeps spread over a cluster, jobs on
several machines): every job writes its rows to its own part, ``part-<job>.parquet``, all at once (a temporary
name, then ``os.replace``), with no lock. The job's name is fixed by the sweep and the job number, so a retried job
replaces its earlier attempt's part instead of adding a second row. ``load`` reads a dataset as one table.
"""

from __future__ import annotations

import fcntl
import os
import statistics
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import ConfigError, atomic_write, check_writable
from harness.store.stream import SIDE_KEYS, is_side_table, side_path

# The contract (design.md): at least these columns, in this order first.
COLUMNS = [
    "model", "method", "devices", "tokens", "network", "bandwidth_mbps", "groups", "codebook_size", "repeats",
    "latency_ms", "latency_p90_ms", "latency_ci_low_ms", "latency_ci_high_ms", "compute_ms", "comm_ms",
    "payload_bytes", "wire_bytes", "max_abs_err",
    "cpu_per_device", "oversubscribed", "status", "error", "run_id", "timestamp", "config",
]


# The columns that make a file a results store: every row astra-bench writes, ok or failed, has them.
RESULT_KEYS = ("model", "method", "status", "run_id", "timestamp")


def new_ids() -> dict:
    """A fresh row's ``run_id`` and ``timestamp`` (UTC, seconds)."""
    import uuid
    from datetime import datetime, timezone

    return {"run_id": uuid.uuid4().hex[:12], "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def summarize(reports: list[dict]) -> dict:
    """Combine per-rank reports into the measured columns.

    Per repeat the end-to-end latency is the slowest rank's; that rank's time inside collectives is the
    communication time (it includes waiting for slower peers) and the rest is compute. Each column is the median
    over repeats; ``latency_p90_ms`` the 90th percentile; ``latency_ci_low_ms``/``latency_ci_high_ms`` a 95 %
    confidence interval of the median latency (``median_ci``).
    """
    repeats = len(reports[0]["latency_s"])
    lat, comm, hidden = [], [], []
    for i in range(repeats):
        slowest = max(reports, key=lambda r: r["latency_s"][i])
        lat.append(slowest["latency_s"][i])
        comm.append(slowest["comm_s"][i])
        hidden.append((slowest.get("comm_hidden_s") or [0.0] * repeats)[i])
    def worst(key: str) -> float | None:
        """Max over ranks of the per-rank median of a per-repeat quantity, in ms (None where not measured)."""
        vals = [statistics.median(r[key]) for r in reports if r.get(key)]
        return 1e3 * max(vals) if vals else None

    errs = [r["max_abs_err"] for r in reports if r.get("max_abs_err") is not None]
    wires = [statistics.median(r["wire_bytes"]) for r in reports if r.get("wire_bytes")]
    low, high = median_ci(lat)
    return {
        "latency_ms": 1e3 * statistics.median(lat),
        "latency_p90_ms": 1e3 * float(np.percentile(lat, 90)),
        "latency_ci_low_ms": None if low is None else 1e3 * low,
        "latency_ci_high_ms": None if high is None else 1e3 * high,
        "compute_ms": 1e3 * statistics.median(a - b for a, b in zip(lat, comm)),
        "comm_ms": 1e3 * statistics.median(comm),
        "comm_hidden_ms": 1e3 * statistics.median(hidden),
        "payload_bytes": max(r["payload_bytes"] for r in reports),
        "max_abs_err": max(errs) if errs else None,
        "wire_bytes": max(wires) if wires else None,
        "cpu_ms": worst("cpu_s"),
        "runqueue_wait_ms": worst("runqueue_wait_s"),
        "throttled_ms": worst("throttled_s"),
        "cpus": cpu_list(sorted({c for r in reports for c in r.get("cpus") or ()})),
    }


def median_ci(values, level: float = 0.95, resamples: int = 2000, seed: int = 0):
    """Percentile-bootstrap confidence interval of the median of ``values``: ``resamples`` resamples with
    replacement from a fixed seed, so a row is reproducible. (None, None) for fewer than two values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return None, None
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    medians = np.median(x[idx], axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def cpu_list(cpus: list[int]) -> str | None:
    """CPU numbers as a cpuset string: [0, 1, 2, 5] -> "0-2,5" (None: not reported)."""
    runs: list[list[int]] = []
    for c in cpus:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or None


def lock_path(path: Path) -> Path:
    """The lock of the store at ``path``: a hidden file beside it, present only while a writer holds it."""
    return path.with_name(f".{path.name}.lock")


@contextmanager
def _locked(path: Path):
    """Hold the store's exclusive lock. The last holder removes the lock file on leaving; a writer that locked a
    file someone removed meanwhile (its inode is no longer the path's) takes the lock again on the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # before unlocking: a waiter then sees its file gone and starts over
        os.close(fd)


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return pd.read_parquet(path)


def is_dataset(path: str | os.PathLike) -> bool:
    """Whether ``results.path`` names a dataset folder (no suffix) rather than a store file."""
    return Path(path).suffix == ""


def part_path(path: str | os.PathLike, job: str) -> Path:
    """The file a job records its rows in: the store file itself, or the job's own part of a dataset."""
    return Path(path) / f"part-{job}.parquet" if is_dataset(path) else Path(path)


def _check_suffix(path: Path, name: str = "results.path") -> None:
    if Path(path).suffix not in (".parquet", ".csv"):
        raise ConfigError(f"{name}={path} must end in .parquet or .csv: name a parquet or CSV store file (or a "
                          "folder without a suffix, for a dataset)")


def check_store(path: str | os.PathLike, name: str = "results.path", keys=RESULT_KEYS) -> None:
    """Refuse, before anything runs, a store path the point's row could not be appended to: a wrong suffix, a
    directory, an existing file that is not a store of this kind (it lacks ``keys``; it is left untouched), a
    folder that cannot be made or written."""
    path = Path(path)
    if is_dataset(path):  # a dataset: a folder (made on the first write) of parts, each one a store
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{name}={path} is a file, not a dataset folder: name a .parquet or .csv store file, "
                              "or a folder")
        check_writable(path, name)
        return
    _check_suffix(path, name)
    if path.is_dir():
        raise ConfigError(f"{name}={path} is a directory: name a .parquet or .csv file")
    if path.exists():
        check_columns(path, _header(path, name), keys, name)
    side = side_path(path)
    if keys == RESULT_KEYS and side.is_file():  # request streams append to the side table beside the store
        check_columns(side, _header(side, name), SIDE_KEYS, name)
    check_writable(path.parent, name, shown=path)


def _read_or_refuse(path: Path, name: str) -> pd.DataFrame:
    try:
        return _read(path)
    except Exception as exc:  # noqa: BLE001 - any reader error means: not a store we can append to
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{name}={path} exists but is not a readable {path.suffix[1:]} store ({reason}): "
                          "pass another path or move that file away") from None


def _header(path: Path, name: str) -> list[str]:
    """A store file's column names, read without its rows (a parquet schema, a CSV header)."""
    try:
        if path.suffix == ".csv":
            return list(pd.read_csv(path, nrows=0).columns)
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    except Exception as exc:  # noqa: BLE001 - any reader error means: not a store we can append to
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{name}={path} exists but is not a readable {path.suffix[1:]} store ({reason}): "
                          "pass another path or move that file away") from None


def check_columns(path: Path, df, keys, name: str = "results.path") -> None:
    """An existing file is appended to only if it carries the identifying columns ``keys`` of its kind of store."""
    columns = df.columns if isinstance(df, pd.DataFrame) else df
    missing = [k for k in keys if k not in columns]
    if missing:
        raise ConfigError(f"{name}={path} exists but is not an astra-bench store (no {', '.join(missing)} column"
                          f"{'s' if len(missing) > 1 else ''}), so it is left untouched: pass a new file or an "
                          "existing store")


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Atomically append one row to the store at ``path``."""
    append_rows(path, [row])


def append_rows(path: str | os.PathLike, rows: list[dict], order: list[str] | None = None,
                replace: bool = False, keys=RESULT_KEYS) -> None:
    """Atomically append ``rows`` to the store at ``path`` (columns in ``order`` first; default: the bench's).
    An existing file without the identifying columns ``keys`` is refused (ConfigError) and left as it was.
    ``replace``: write them as the file's whole content instead (a job's part of a dataset: no other writer, and a
    retry must not add to its earlier attempt)."""
    path = Path(path)
    _check_suffix(path)
    order = COLUMNS if order is None else order
    new = pd.DataFrame(rows)

    def write(df: pd.DataFrame) -> None:
        ordered = [c for c in order if c in df.columns] + [c for c in df.columns if c not in order]
        df = df[ordered]
        if path.suffix == ".csv":
            atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
        else:
            atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))

    if replace:
        write(new)
        return
    with _locked(path):
        pending = _parts(path) if keys == RESULT_KEYS else []
        if not path.exists() and not pending:
            write(new)
            return
        old = [_read_or_refuse(path, "store")] if path.exists() else []
        if old:
            check_columns(path, old[0], keys, "store")
        write(_unique(pd.concat([*old, *(_read(f) for f in pending), new], ignore_index=True)))
        for f in pending:  # folded into the file just written
            f.unlink(missing_ok=True)


def record(path: str | os.PathLike, rows: list[dict], job: str, order: list[str] | None = None,
           side: bool = False, pending: bool = False) -> Path:
    """Record a job's rows in the store ``results.path``: appended to a store file, or as the job's own part of a
    dataset (``job`` names it; a retry replaces it); ``side``: in the side table beside that file
    (``stream.side_path``); ``pending`` (a sweep's job): as the job's pending part beside a store file, folded into
    it by ``compact``. Returns the file written."""
    if pending and not side and not is_dataset(path):
        target = pending_dir(path) / f"part-{job}.parquet"
        append_rows(target, rows, order, replace=True)
        return target
    target = side_path(part_path(path, job)) if side else part_path(path, job)
    append_rows(target, rows, order, replace=is_dataset(path), keys=SIDE_KEYS if side else RESULT_KEYS)
    return target


def pending_dir(path: str | os.PathLike) -> Path:
    """Where a sweep's jobs leave their rows for a store file: ``.<name>.parts/`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.parts")


def _parts(path: Path) -> list[Path]:
    folder = pending_dir(path)
    return sorted(f for f in folder.glob("part-*.parquet")) if folder.is_dir() else []


def _unique(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: a pending part read just as it was folded into the file is not counted twice."""
    if "run_id" not in df.columns:
        return df
    return df[df["run_id"].isna() | ~df.duplicated("run_id", keep="last")]


def compact(path: str | os.PathLike) -> int:
    """Fold a store file's pending parts into it (under its lock); returns how many parts were folded. A folder
    (a dataset) or a store without parts is left as it is."""
    path = Path(path)
    if is_dataset(path) or not _parts(path):
        return 0
    with _locked(path):
        parts = _parts(path)
        if parts:
            frames = [_read(path)] if path.exists() else []
            df = _unique(pd.concat([*frames, *(_read(f) for f in parts)], ignore_index=True))
            ordered = [c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]
            df = df[ordered]
            if path.suffix == ".csv":
                atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
            else:
                atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))
            for f in parts:
                f.unlink(missing_ok=True)
        try:
            pending_dir(path).rmdir()
        except OSError:  # a part written meanwhile, or already gone
            pass
    return len(parts)


_CACHE: dict[tuple, pd.DataFrame] = {}  # (file, mtime, size, columns) -> its rows: a sweep rereads only what changed


def _cached(path: Path, columns: tuple | None = None) -> pd.DataFrame:
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, columns)
    if key not in _CACHE:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        if path.suffix == ".csv":
            df = pd.read_csv(path)
            _CACHE[key] = df[[c for c in columns if c in df.columns]] if columns else df
        else:
            have = set(_header(path, "results")) if columns else None
            _CACHE[key] = pd.read_parquet(path, columns=[c for c in columns if c in have] if columns else None)
    return _CACHE[key]


_OK_KEYS: dict[tuple, frozenset] = {}  # (file, mtime, size) -> the point keys of its ok rows


def _ok_keys(path: Path) -> set[str]:
    """The point keys of the ok rows of a store file and its pending parts, each file read once per change."""
    out: set[str] = set()
    while True:
        try:
            for f in ([path] if path.exists() else []) + _parts(path):
                st = f.stat()
                key = (str(f), st.st_mtime_ns, st.st_size)
                if key not in _OK_KEYS:
                    df = _cached(f, ("point_key", "status"))
                    _OK_KEYS[key] = frozenset(df.loc[df["status"] == "ok", "point_key"].dropna()) \
                        if "point_key" in df.columns else frozenset()
                out |= _OK_KEYS[key]
            return out
        except FileNotFoundError:  # a part folded into the file while we read: read again
            out = set()


def _file_and_parts(path: Path, columns: tuple | None = None) -> list[pd.DataFrame]:
    """A store file's rows and its pending parts', read so that a part folded meanwhile is never missed: the parts
    are listed before the file is read, and the read starts over if a listed part is gone."""
    while True:
        parts = _parts(path)
        frames = [_cached(path, columns)] if path.exists() else []
        try:
            return frames + [_cached(f, columns) for f in parts]
        except FileNotFoundError:  # folded while we read: the file now holds it
            continue


def find_ok(path: str | os.PathLike, point_key: str) -> dict | None:
    """The latest ok row with this ``point_key`` in the store at ``path`` (with its pending parts), or None. Reads
    only the key columns until a row matches, and each file once per change in a process."""
    path = Path(path)
    if not path.exists() and not _parts(path):
        return None
    if path.is_dir():
        frames = [_cached(f) for f in _files(path)]
    else:
        if point_key not in _ok_keys(path):
            return None
        frames = _file_and_parts(path)
    frames = [f for f in frames if "point_key" in f.columns]
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    hit = df[(df["point_key"] == point_key) & (df["status"] == "ok")]
    if hit.empty:
        return None
    row = hit.sort_values("timestamp").iloc[-1]
    return {k: (None if (not isinstance(v, str) and pd.isna(v)) else (v.item() if hasattr(v, "item") else v))
            for k, v in row.items()}


def load(path: str | os.PathLike) -> pd.DataFrame:
    """All rows of a store file, or of every store file under a directory; adds ``speedup`` over single."""
    path = Path(path)
    if not path.is_dir():
        if not path.exists() and not _parts(path):
            raise FileNotFoundError(f"no results at {path}: run astra-bench first (results.path=...)")
        if path.exists():
            check_columns(path, _header(path, "results"), RESULT_KEYS, "results")
        try:
            compact(path)  # compacted on read: a sweep that was cut short left its rows as parts
        except OSError:  # a store we may only read: its parts are read beside it
            pass
        frames = _file_and_parts(path)
        df = pd.concat(frames, ignore_index=True)
        return with_speedup(_unique(df) if len(frames) > 1 else df)
    frames = [f for f in (_read(f) for f in _files(path)) if all(k in f.columns for k in RESULT_KEYS)]
    if not frames:  # a folder's other tables (the paper's, accuracy rows) are not results
        raise FileNotFoundError(f"no results at {path}: run astra-bench first (results.path=...)")
    return with_speedup(pd.concat(frames, ignore_index=True))


def _files(folder: Path) -> list[Path]:
    """The stores under a folder (a dataset's parts, or store files side by side), without side tables and
    temporary files."""
    files = sorted([*folder.rglob("*.parquet"), *folder.rglob("*.csv")])
    stores = [f for f in files if not any(part.startswith(".") for part in f.relative_to(folder).parts)
              and not is_side_table(f)]
    return stores + [part for f in stores for part in _parts(f)]  # with any sweep's rows not folded in yet


JOIN_KEYS = ["model", "tokens", "network", "device", "batch"]  # rows written before baseline_key existed
# the baseline's columns a row carries beside its own: latency and its confidence interval
BASELINE = {"latency_ms": "single_latency_ms", "latency_ci_low_ms": "single_ci_low_ms",
            "latency_ci_high_ms": "single_ci_high_ms"}


def with_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """``speedup`` = latency of the point's single-device baseline / latency. A row names its baseline by
    ``baseline_key`` (the timing key of the same point run by ``single``); the latest ok row with that timing key is
    the baseline. Rows whose baseline is not found that way match older single rows (without timing keys) on model,
    tokens, network backend, device and batch.

    ``speedup_ci_low``/``speedup_ci_high``: a conservative interval of the speedup from the two latencies' 95 %
    intervals (baseline low / own high, baseline high / own low; a latency without an interval counts as exact);
    NaN where neither has one."""
    derived = [*BASELINE.values(), "speedup", "speedup_ci_low", "speedup_ci_high"]
    df = df.drop(columns=derived, errors="ignore").reset_index(drop=True)
    for col in COLUMNS:  # a store of failed rows only may lack measured columns
        if col not in df.columns:
            df[col] = None
    ok = df[df["status"] == "ok"].sort_values("timestamp", kind="stable")
    base = pd.DataFrame(np.nan, index=df.index, columns=list(BASELINE))
    new_rows = df["timing_key"].notna() if "timing_key" in df.columns else pd.Series(False, index=df.index)
    if new_rows.any():
        latest = ok.dropna(subset=["timing_key"]).drop_duplicates("timing_key", keep="last").set_index("timing_key")
        for col in BASELINE:
            base[col] = pd.to_numeric(df["baseline_key"].map(latest[col]), errors="coerce")
    old = base["latency_ms"].isna()
    if old.any():
        from harness.parallel import METHODS

        baseline = next(name for name, cls in METHODS.items() if cls.is_baseline)
        keys = [k for k in JOIN_KEYS if k in df.columns]
        old_single = ok["timing_key"].isna() if "timing_key" in ok.columns else True
        singles = ok[(ok["method"] == baseline) & old_single].drop_duplicates(keys, keep="last")[[*keys, *BASELINE]]
        merged = df.loc[old, keys].merge(singles, on=keys, how="left")
        for col in BASELINE:
            base.loc[old, col] = pd.to_numeric(merged[col], errors="coerce").to_numpy(dtype=float)
    for col, name in BASELINE.items():
        df[name] = base[col]
    lat = pd.to_numeric(df["latency_ms"], errors="coerce")
    low = pd.to_numeric(df["latency_ci_low_ms"], errors="coerce")
    high = pd.to_numeric(df["latency_ci_high_ms"], errors="coerce")
    single = df["single_latency_ms"]
    df["speedup"] = single / lat
    has = df["single_ci_low_ms"].notna() | low.notna()
    df["speedup_ci_low"] = (df["single_ci_low_ms"].fillna(single) / high.fillna(lat)).where(has)
    df["speedup_ci_high"] = (df["single_ci_high_ms"].fillna(single) / low.fillna(lat)).where(has)
    return df


def in_sweep() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - not running under Hydra (a caller composing configs itself)
        return False


def job_name(cfg=None) -> str:
    """This job's name in a dataset store (its part file): in a sweep, fixed by the sweep's directory (which holds
    the sweep's own id, ``conf/config.yaml``) and the job's number, so a job retried by a launcher replaces its
    earlier attempt's part; otherwise a fresh id. ``cfg``: a job's full config (with its ``hydra`` node), for a
    launcher naming its jobs."""
    import hashlib
    import uuid

    if cfg is not None:
        sweep_dir, num = cfg.hydra.sweep.dir, cfg.hydra.job.num
    elif in_sweep():
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        sweep_dir, num = hc.sweep.dir, hc.job.num
    else:
        return uuid.uuid4().hex[:16]
    return hashlib.sha1(f"{Path(str(sweep_dir)).resolve()}|{num}".encode()).hexdigest()[:16]
