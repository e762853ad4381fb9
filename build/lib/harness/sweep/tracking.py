"""Experiment tracking with MLflow: ``tracking.enabled=true`` (the ``tracking`` extra).

``MlflowTracking`` is a Hydra callback, always registered (``conf/config.yaml``), that does nothing and imports
nothing unless tracking is on. Then every point is an MLflow run: its settings as params (the row's ``settings``
JSON flattened, e.g. ``method.groups``, plus its main columns), every other number of its row as a metric, its
status, fidelity, error, ids and provenance as tags, and the whole row as the artifact ``row.json``. A failed point
is a run too (status FAILED, its error as a tag). A ``-m`` sweep is a parent run with its points as child runs; at
its end every child gets its ``speedup`` (``results.load`` works it out from the whole store) and the parent the
figures of the sweep's rows (``astra-plot``'s ``plot_all``) and their table (``points.md``).

Where the rows are: Hydra calls ``on_job_end`` with the job's return value, its row, where the job ran. The basic
launcher runs the jobs in the sweep's process. The Ray launcher (``harness.cluster``) runs them in Ray workers,
which log nothing: its driver hands every job's return to ``job_ended``, so all runs are written by the sweep's
process and the store need not be shared with the workers' machines.

The store: a path is a SQLite file, with the artifacts in a folder beside it (MLflow 3 refuses a new plain-folder
store unless told otherwise); browse it with ``mlflow ui --backend-store-uri sqlite:///<path>``. Any other MLflow
tracking URI (``sqlite:///...``, ``http://host:5000``) is used as it is.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import tempfile
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.errors import log as _log
from harness.sweep.progress import REMOTE_ENV

INSTALL = "pip install -e '.[tracking]'"
PARAM_COLUMNS = ("model", "method", "devices", "tokens", "network", "bandwidth_mbps", "groups", "codebook_size")
TAG_COLUMNS = ("status", "fidelity", "error", "run_id", "point_key", "timestamp", "skipped")
PROVENANCE = ("git_commit", "git_dirty", "host", "kernel", "cpu_model", "cpu_count", "torch_version")
KEY_MAX, PARAM_MAX, TAG_MAX = 250, 6000, 8000  # MLflow's limits on a key and on a param's and a tag's value
BATCH_PARAMS = 100  # params (with tags) in one log_batch
SCHEME = re.compile(r"[A-Za-z][\w+.-]*:")  # a tracking URI, not a path
_SWEEP: MlflowTracking | None = None  # the sweep this process is tracking (for the Ray launcher's driver)


def log(msg: str) -> None:
    _log("astra-bench", f"tracking: {msg}")


def _why(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# ------------------------------------------------------------------------------------------------ settings
def options(cfg: DictConfig):
    """The ``tracking`` settings of a composed config when tracking is on, else None."""
    from harness.options import parse_options
    from harness.spec.schema import TrackingOptions

    node = OmegaConf.select(cfg, "tracking", default=None)
    if node is None:
        return None
    opts = parse_options(TrackingOptions, OmegaConf.to_container(node, resolve=True), "tracking.", "tracking")
    return opts if opts.enabled else None


def store_uri(uri: str) -> tuple[str, str | None]:
    """MLflow's tracking URI for ``tracking.uri``, and where a new experiment keeps its artifacts: a path is a
    SQLite file, its artifacts beside it (``results/mlflow.db``: ``results/mlflow-artifacts/``); a URI
    (``scheme:...``) is MLflow's to resolve."""
    if SCHEME.match(uri):
        return uri, None
    path = Path(uri).resolve()
    return f"sqlite:///{path}", path.with_name(f"{path.stem}-artifacts").as_uri()


def check(values: dict, overrides: list) -> None:
    """Before Hydra (``config.check_argv``): the config's ``tracking`` values with the command line's ``tracking.*``
    overrides applied. Refuses in one line a sweep over them, tracking without MLflow, a store it cannot write."""
    import yaml

    from harness.errors import check_writable
    from harness.options import parse_options
    from harness.spec.schema import TrackingOptions

    values = dict(values or {})
    for ov in overrides:
        if ov.is_sweep_override():
            raise ConfigError(f"{ov.input_line}: tracking settings cannot be swept (one sweep is one MLflow parent "
                              "run): give one value")
        values[ov.key_or_group.lstrip("+").split(".", 1)[1]] = yaml.safe_load(ov.get_value_element_as_str())
    opts = parse_options(TrackingOptions, values, "tracking.", "tracking")
    if not opts.enabled:
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(f"tracking.enabled=true needs MLflow, which is not installed: {INSTALL}") from None
    if not SCHEME.match(opts.uri):
        path = Path(opts.uri)
        if path.is_dir():
            raise ConfigError(f"tracking.uri={opts.uri} is a directory: name a SQLite file (results/mlflow.db) or "
                              "give an MLflow tracking URI")
        check_writable(path.parent, "tracking.uri", shown=path)


# ------------------------------------------------------------------------------------------------ rows
def _text(value, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _key(name) -> str:
    """A name MLflow takes: its characters (letters, digits, _ - . / and space), at most its length."""
    return re.sub(r"[^\w.\- /]", "_", str(name))[:KEY_MAX]


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def describe(row: dict) -> tuple[dict, dict, dict]:
    """A row's MLflow params (its settings: ``settings`` or else ``config`` flattened, and the main columns),
    metrics (every other finite number: what was measured) and tags (status, fidelity, error, ids, and the
    provenance columns the row has), keys and values cut to fit MLflow's limits."""
    from harness.report.plot import _flat

    raw = row.get("settings") or row.get("config")
    try:
        flat = _flat(json.loads(raw)) if isinstance(raw, str) else {}
    except ValueError:
        flat = {}
    params = {**flat, **{k: row[k] for k in PARAM_COLUMNS if k in row}}
    named = {*params, *TAG_COLUMNS, *PROVENANCE}
    params = {_key(k): _text(v, PARAM_MAX) for k, v in params.items() if _present(v)}
    tags = {_key(k): _text(row[k], TAG_MAX) for k in (*TAG_COLUMNS, *PROVENANCE) if _present(row.get(k))}
    metrics = {_key(k): float(v) for k, v in row.items() if k not in named and isinstance(v, numbers.Real)
               and not isinstance(v, bool) and math.isfinite(v)}
    return params, metrics, tags


def run_name(row: dict) -> str:
    if not row.get("method"):
        return "failed point"
    bw = f" {row['bandwidth_mbps']:g} Mbps" if isinstance(row.get("bandwidth_mbps"), numbers.Real) else ""
    return f"{row['method']} N={row.get('devices')} T={row.get('tokens')} {row.get('network')}{bw}"


# ------------------------------------------------------------------------------------------------ the callback
class MlflowTracking(Callback):
    """Hydra callback: every point an MLflow run, a sweep their parent run (see the module's doc)."""

    def __init__(self) -> None:
        self.opts = None  # the tracking settings of this run or sweep, when on
        self.parent: str | None = None  # the sweep's MLflow run
        self.children: list[tuple[str, str, str]] = []  # (results.path, row run_id, MLflow run id) per point
        self.experiment_id: str | None = None
        self._client = None

    def __getstate__(self) -> dict:  # the Ray launcher ships callbacks to its workers: not the client
        return {**self.__dict__, "_client": None}

    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            uri, artifacts = store_uri(self.opts.uri)
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(self.opts.experiment)
            if exp is None:
                self.experiment_id = client.create_experiment(self.opts.experiment, artifact_location=artifacts)
            else:
                if exp.lifecycle_stage == "deleted":
                    client.restore_experiment(exp.experiment_id)
                self.experiment_id = exp.experiment_id
            self._client = client
        return self._client

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.opts = options(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        global _SWEEP
        self.opts = options(config)
        if self.opts is None:
            return
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        sweep = " ".join(params + list(config.hydra.overrides.task))
        try:
            run = self.client().create_run(self.experiment_id, run_name=Path(str(config.hydra.sweep.dir)).name,
                                           tags={"sweep": _text(sweep, TAG_MAX),
                                                 "sweep_dir": str(config.hydra.sweep.dir)})
        except Exception as exc:  # noqa: BLE001 - tracking never stops a sweep: its rows are in the store
            log(f"off for this sweep: cannot start its run in {self.opts.uri} ({_why(exc)})")
            self.opts = None
            return
        self.parent, _SWEEP = run.info.run_id, self
        log(f"sweep logged as MLflow run {self.parent} (experiment {self.opts.experiment}, {self.opts.uri})")

    def on_job_end(self, config: DictConfig, job_return=None, **kwargs) -> None:
        if self.opts is not None and not os.environ.get(REMOTE_ENV):  # a Ray worker: the driver logs its job
            self.log_job(config, job_return)

    def log_job(self, config: DictConfig, job_return) -> None:
        """One point's run: its row, or (no row: a job that raised, or a failure not recorded) its overrides."""
        from hydra.core.utils import JobStatus

        value = getattr(job_return, "_return_value", None)
        if isinstance(value, dict) and job_return.status == JobStatus.COMPLETED:
            row, extra = value, {}
        else:
            error = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else \
                "the job returned no row"
            row = {"status": "failed", "error": error}
            extra = dict(o.lstrip("+").split("=", 1) for o in (job_return.overrides or []) if "=" in o)
        try:
            from mlflow.entities import Metric, Param

            client = self.client()
            params, metrics, tags = describe(row)
            params.update({_key(k): _text(v, PARAM_MAX) for k, v in extra.items()})
            if self.parent:
                tags["mlflow.parentRunId"] = self.parent
            run = client.create_run(self.experiment_id, run_name=run_name(row), tags=tags).info.run_id
            now = int(time.time() * 1000)
            items = list(params.items())
            for i in range(0, max(len(items), 1), BATCH_PARAMS):
                client.log_batch(run, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()] if i == 0 else [],
                                 params=[Param(k, v) for k, v in items[i:i + BATCH_PARAMS]])
            client.log_text(run, json.dumps(row, indent=1, default=str), "row.json")
            client.set_terminated(run, "FINISHED" if row.get("status") == "ok" else "FAILED")
        except Exception as exc:  # noqa: BLE001 - the point's row is in the store whatever happens here
            log(f"could not log the point {run_name(row)} ({_why(exc)})")
            return
        if self.parent and row.get("run_id"):
            self.children.append((str(OmegaConf.select(config, "results.path")), row["run_id"], run))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        global _SWEEP
        if self.parent is None:
            return
        _SWEEP = None
        try:
            self.log_sweep()
            self.client().set_terminated(self.parent)
        except Exception as exc:  # noqa: BLE001 - the rows are in the store; `astra-plot` draws them too
            log(f"could not log the sweep's figures ({_why(exc)})")

    def log_sweep(self) -> None:
        """Each child's speedup (from the whole store), and the figures and table of the sweep's rows."""
        import pandas as pd

        from harness.report.plot import latest_points, markdown_table, plot_all
        from harness.store.results import load

        client = self.client()
        frames = []
        for path in dict.fromkeys(p for p, _, _ in self.children):
            df = load(path)
            frames.append(df[df["run_id"].isin({r for p, r, _ in self.children if p == path})])
        if not frames:
            return
        df = pd.concat(frames, ignore_index=True)
        speedup = dict(zip(df["run_id"], pd.to_numeric(df["speedup"], errors="coerce")))
        for _, row_id, run in self.children:
            if math.isfinite(speedup.get(row_id, math.nan)):
                client.log_metric(run, "speedup", float(speedup[row_id]))
        points = latest_points(df)
        client.log_text(self.parent, markdown_table(points), "points.md")
        with tempfile.TemporaryDirectory(prefix="astra-figures-") as tmp:
            written = plot_all(points, Path(tmp), note=log)
            if written:
                client.log_artifacts(self.parent, tmp, "figures")


def job_ended(config: DictConfig, job_return) -> None:
    """A launcher whose jobs run elsewhere (``harness.cluster``) hands each job's return here, in the sweep's
    process: logged as the job's run when this sweep is tracked."""
    if _SWEEP is not None:
        _SWEEP.log_job(config, job_return)
