"""Sweeps spread over a Ray cluster: ``astra-bench -m hydra/launcher=ray ...`` (its settings:
``hydra_plugins.astra_ray_launcher.CONFIG``).

Built on the Hydra Ray launcher (``hydra-ray-launcher``, which ships each job's config, Hydra's state and the task
function to a Ray task and runs it with Hydra's own ``run_job``). What this subclass adds, for benchmarks:

- **Resources per point.** A Mininet point needs a machine to itself: it asks for the ``mininet`` resource (one per
  machine: start each node with ``ray start --resources='{"mininet": 1}'``; a local cluster gets it by itself) and
  for every CPU of the smallest such machine, so nothing else runs beside an emulated network. A loopback point asks
  for one CPU per device (at most a machine's), an analytic one for one; they run side by side up to the cores.
- **Progress for the whole sweep** on the driver: each finished point, how many are done and an ETA.
- **Failures.** Ray retries a job whose worker died (``max_retries``); a job that still fails is recorded as a
  failed row (``results.record_failures``) and the sweep goes on. Points already in the store are skipped on a
  re-run, as with the basic launcher.
- **Rows back to the driver.** Every job returns its row; with a dataset store (``results.path`` a folder) the
  driver writes a job's part if the job's machine could not (no shared filesystem), under the job's own name, so
  a row is never written twice. With ``tracking.enabled=true`` the driver logs each job's MLflow run
  (``harness.sweep.tracking.job_ended``); the workers log nothing.

The jobs run in the driver's working directory when their machine has it (a shared filesystem), else in Ray's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from harness.sweep.progress import REMOTE_ENV, TALLY, fmt, shown
from harness.sweep.tracking import job_ended
from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as HydraRayLauncher


def _remote_job(hydra_context, sweep_config, task_function, singleton_state, cwd: str) -> JobReturn:
    """One job in a Ray worker: the driver's working directory if this machine has it, then Hydra's run_job."""
    from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job

    os.environ[REMOTE_ENV] = "1"
    if os.path.isdir(cwd):
        os.chdir(cwd)
    try:
        return _run_job(hydra_context, sweep_config, task_function, singleton_state)
    finally:
        if "harness.network.mininet.session" in sys.modules:  # a Ray worker may be killed at any time: no session kept
            sys.modules["harness.network.mininet.session"].close_session()


def point_of(cfg: DictConfig) -> str | None:
    """The point key of a job's config (None where the config does not make a point: the job will say why)."""
    from harness.errors import ConfigError
    from harness.spec.build import build_spec
    from harness.spec.identity import point_key

    try:
        return point_key(build_spec(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), in_sweep=True))
    except ConfigError:
        return None


def repeated(ret: JobReturn, cfg: DictConfig) -> JobReturn:
    """The return of a job whose point an earlier job of the sweep measured: that job's row, marked skipped."""
    value = ret._return_value
    if ret.status == JobStatus.COMPLETED and isinstance(value, dict) and value.get("status") == "ok":
        value = {**value, "skipped": True}
    return JobReturn(overrides=list(cfg.hydra.overrides.task), cfg=cfg, status=ret.status, _return_value=value)


class AstraRayLauncher(HydraRayLauncher):
    """The launcher's code; Hydra instantiates its subclass in ``hydra_plugins.astra_ray_launcher``."""

    def __init__(self, ray: DictConfig, mininet_resource: str = "mininet", max_retries: int = 2) -> None:
        super().__init__(ray)
        self.mininet_resource, self.max_retries = mininet_resource, int(max_retries)

    # ------------------------------------------------------------------------------------------------ resources
    def _start(self) -> dict:
        """Start or join the cluster; the CPUs of its largest machine and of the smallest Mininet machine."""
        import ray

        from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

        init = OmegaConf.to_container(self.ray_cfg.init, resolve=True) or {}
        if init.get("address") in (None, "local"):  # a cluster of this machine alone: it can run Mininet
            init["address"] = None
            init.setdefault("resources", {self.mininet_resource: 1})
        init.setdefault("log_to_driver", True)
        start_ray(OmegaConf.create(init))
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        cpus = [n.get("CPU", 0) for n in nodes]
        mn = [n.get("CPU", 0) for n in nodes if n.get(self.mininet_resource, 0) >= 1]
        return {"max_cpus": max(cpus, default=1), "mininet_cpus": min(mn) if mn else None}

    def options(self, cfg: DictConfig, cluster: dict) -> dict:
        """``ray.remote`` options of one job: the configured ones, then what its point needs."""
        from harness.errors import ConfigError

        opts: dict[str, Any] = OmegaConf.to_container(self.ray_cfg.remote, resolve=True) or {}
        opts.setdefault("max_retries", self.max_retries)
        network = OmegaConf.select(cfg, "network.name", default="loopback")
        devices = int(OmegaConf.select(cfg, "devices", default=1) or 1)
        if network == "mininet":
            if cluster["mininet_cpus"] is None:
                raise ConfigError(f"no machine of the Ray cluster offers the '{self.mininet_resource}' resource a "
                                  "Mininet point needs: start each Mininet node (root, Mininet installed) with "
                                  f"ray start --resources='{{\"{self.mininet_resource}\": 1}}'")
            opts["resources"] = {**opts.get("resources", {}), self.mininet_resource: 1}
            opts.setdefault("num_cpus", cluster["mininet_cpus"])
        elif network == "loopback":
            opts.setdefault("num_cpus", min(devices, cluster["max_cpus"]))
        else:
            opts.setdefault("num_cpus", 1)
        return opts

    # ------------------------------------------------------------------------------------------------ the sweep
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides, setup_globals

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        cluster = self._start()
        remote = ray.remote(_remote_job)
        configs, names, texts = [], {}, []
        first: dict[str, int] = {}  # point key -> the job that measures it
        same: dict[int, int] = {}  # a job repeating an earlier job's point -> that job
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = f"ray_{idx}"
                cfg.hydra.job.num = idx
            configs.append(cfg)
            texts.append(shown(filter_overrides(overrides), cfg))  # the point as the user names it
            key = point_of(cfg)
            if key in first:  # e.g. the single baseline named by every device count: measured once
                same[i] = first[key]
                continue
            if key is not None:
                first[key] = i
            opts = self.options(cfg, cluster)
            ref = remote.options(**opts).remote(self.hydra_context, cfg, self.task_function, Singleton.get_state(),
                                                os.getcwd())
            names[ref] = i
        total = len(job_overrides) + initial_job_idx
        out: dict[int, JobReturn] = {}
        pending, t0 = list(names), time.monotonic()

        def report(i: int, ret: JobReturn, status: str) -> None:
            out[i] = ret
            job_ended(configs[i], ret)  # tracking: the workers log nothing, the driver logs each job
            TALLY.add(ret._return_value if ret.status == JobStatus.COMPLETED else None, texts[i])
            n = initial_job_idx + len(out)
            elapsed = time.monotonic() - t0
            eta = f" | ETA {fmt(elapsed / len(out) * (total - n))}" if total > n else ""
            print(f"[astra-bench] point {n}/{total} finished ({status}) | elapsed {fmt(elapsed)}{eta} | "
                  f"{' '.join(texts[i])}",
                  file=sys.stderr, flush=True)

        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                i = names[ref]
                try:
                    ret = ray.get(ref)
                    status = "ok" if ret.status == JobStatus.COMPLETED else "error"
                except Exception as exc:  # noqa: BLE001 - the worker died, retries spent: record it, sweep on
                    ret = self._failed(configs[i], exc)
                    status = "failed"
                self._deliver(configs[i], ret)
                report(i, ret, status)
                for j in [j for j, f in same.items() if f == i]:
                    other = " ".join(o for o in texts[i] if o not in texts[j])
                    report(j, repeated(ret, configs[j]), f"skipped: the same point as {other}")
        return [out[i] for i in range(len(job_overrides))]

    def _failed(self, cfg: DictConfig, exc: Exception) -> JobReturn:
        """A job whose worker died every time: recorded as a failed row (unless failures are not recorded, or the
        job had recorded its row before it died), and the sweep goes on."""
        from harness.store.results import is_dataset, job_name, part_path, record
        from harness.store.row import failed_row

        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"Ray could not finish this point ({type(exc).__name__}: {reason})"
        print(f"[astra-bench] error: {error}", file=sys.stderr, flush=True)
        ret = JobReturn(overrides=list(cfg.hydra.overrides.task), cfg=cfg, status=JobStatus.COMPLETED)
        ret.return_value = None
        job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        record_failures = str(OmegaConf.select(job_cfg, "results.record_failures", default="auto")).lower()
        if record_failures == "false":
            return ret
        row, path = failed_row(job_cfg, error)
        job = job_name(cfg)
        if path is not None and not (is_dataset(path) and part_path(path, job).exists()):
            record(path, [row], job)
            ret.return_value = row
        return ret

    def _deliver(self, cfg: DictConfig, ret: JobReturn) -> None:
        """A dataset store: write the job's part here if its machine's copy is not visible (no shared filesystem)."""
        from harness.store.results import is_dataset, job_name, part_path, record

        row = ret._return_value if ret.status == JobStatus.COMPLETED else None
        path = OmegaConf.select(cfg, "results.path", default=None)
        if not isinstance(row, dict) or row.get("skipped") or path is None or not is_dataset(path):
            return
        job = job_name(cfg)
        if not part_path(path, job).exists():
            record(path, [row], job)
