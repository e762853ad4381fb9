"""``astra-bench``: a Hydra app where one job is one experiment point.

    astra-bench model=vit_tiny method=astra devices=3 tokens=50 verify=true
    astra-bench -m experiment=quickstart

The path of a point: the composed config becomes a checked ``RunSpec`` (``spec.build_spec``); the backend checks
what it can honour (``network/``); the method prepares what its ranks need (``parallel/``, e.g. ASTRA's codebooks);
the backend runs the ranks and returns their reports; ``spec.row`` makes the row, appended to the store and
printed as one JSON object on the last stdout line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import DictConfig

from harness.errors import ConfigError, RunFailed
from harness.errors import log as _log
from harness.spec.build import build_spec
from harness.spec.identity import point_key
from harness.spec.schema import RunSpec
from harness.store import stream
from harness.store.results import check_store, find_ok, in_sweep, job_name, record
from harness.store.row import failed_row, row
from harness.sweep.progress import REMOTE_ENV

PROG = "astra-bench"
_DONE_IN_SWEEP: dict[str, dict] = {}  # point key -> row, for the points already measured in this -m sweep


def log(msg: str) -> None:
    _log(PROG, msg)


def check_weights(spec: RunSpec) -> None:
    """Load HF weights once in the controller so a bad directory fails with one line before any rank starts."""
    if not spec.model.weights:
        return
    from harness.models import build_model
    from harness.models.hf import WeightLoadError

    try:
        build_model(spec.model)
    except WeightLoadError as exc:
        raise ConfigError(str(exc)) from None


def skip_row(spec: RunSpec, sweep: bool) -> dict | None:
    """An earlier row of this very point, when the point should not be measured again."""
    key = point_key(spec)
    if sweep and key in _DONE_IN_SWEEP:
        log(f"skipped: this sweep already measured this point (run {_DONE_IN_SWEEP[key]['run_id']}): "
            "a setting of another method does not change it")
        return _DONE_IN_SWEEP[key]
    skip = spec.results.skip_existing
    if (sweep if skip == "auto" else skip):
        existing = find_ok(spec.results.path, key)
        if existing is not None:
            log(f"skipped: this point is already in {spec.results.path} (run {existing['run_id']}); "
                "results.skip_existing=false re-runs it")
            return existing
    return None


def run_point(cfg: DictConfig | RunSpec, sweep: bool | None = None) -> dict:
    """Check, run and record one point. Raises ConfigError (bad input, before anything runs or is written) or
    RunFailed (a rank failed)."""
    t0 = time.perf_counter()
    sweep = in_sweep() if sweep is None else sweep
    spec = cfg if isinstance(cfg, RunSpec) else build_spec(cfg, in_sweep=sweep)
    check_store(spec.results.path)  # a path that cannot take the row refuses the point before anything runs
    backend = spec.backend_class(spec)  # refuses what it cannot honour
    if backend.launched_outside:
        raise ConfigError(f"network={backend.name} runs on real devices: start `torchrun ... -m harness.device "
                          "<overrides>` on each device (docs/cluster.md: real devices), not astra-bench")
    check_weights(spec)
    existing = skip_row(spec, sweep)
    if existing is not None:
        return {**existing, "skipped": True}
    info = backend.describe()
    if info.get("oversubscribed"):
        log(f"WARNING: {spec.devices} devices x {info['cpu_real_per_device']:g} cores exceed this machine's "
            f"{os.cpu_count()} cores: ranks compete for CPU (row marked oversubscribed=true)")
    replay = spec.device.compute == "replay"
    if replay:
        from harness.rank.profile import prepare, recorded_layers
    # e.g. k-means codebooks, for ranks that will run their plan or a profile's recording (replayed ranks need none;
    # a recording on fewer blocks than the model's makes its own, of that depth)
    if (backend.runs_ranks and not replay) or (replay and recorded_layers(spec) == spec.model.layers):
        spec = spec.method_class.prepare(spec, log)
    if replay:  # the compute profile every rank replays
        spec = prepare(spec, log)
    with tempfile.TemporaryDirectory(prefix="astra-run-") as wd:
        result = backend.run(spec, Path(wd))
    out = row(spec, info, result.reports, result.measured, links_mbps=result.links_mbps)
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    side = stream.side_rows(out, result.reports, spec, result.trace)
    job = job_name()
    if side:  # before the row: a row in the store always has its requests beside it
        record(spec.results.path, side, job, stream.SIDE_COLUMNS, side=True)
    record(spec.results.path, [out], job, pending=sweep)  # a sweep's rows are folded into the file at its end
    if sweep:
        _DONE_IN_SWEEP[out["point_key"]] = out
    return out


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def summary(r: dict) -> str:
    bw = f" {r['bandwidth_mbps']:g} Mbps" if r["bandwidth_mbps"] is not None else ""
    if r.get("trace") and r["bandwidth_mbps"] is not None:
        bw = f" trace {Path(str(r['trace'])).name} (mean {r['bandwidth_mbps']:.3g} Mbps)"
    err = f", max_abs_err {r['max_abs_err']:.2e}" if r["max_abs_err"] is not None else ""
    k = r.get("dilation") or 1.0
    dil = f", dilated k={k:.3g} (real {r['latency_real_ms']:.0f} ms)" if k != 1.0 else ""
    fid = f"; fidelity: {r['fidelity']}" if r.get("fidelity") else ""
    runs = (f"{plural(r['repeats'], 'request')}, {r['requests']} served in {r['stream_s']:g} s" if r.get("stream_s")
            else plural(r["repeats"], "repeat"))
    return (f"{r['model']} {r['method']} N={r['devices']} T={r['tokens']} {r['network']}{bw}: latency "
            f"{r['latency_ms']:.1f} ms (compute {r['compute_ms']:.1f}, comm {r['comm_ms']:.1f}; {runs}{dil}), "
            f"payload {r['payload_bytes']} B{err}{fid}")


def job(cfg: DictConfig) -> dict | None:
    """One Hydra job: the point's row (also the job's return value, for launchers that collect rows), or its failed
    row inside a sweep."""
    from omegaconf import OmegaConf

    sweep = in_sweep()
    kill_job(cfg, "start")
    try:
        out = run_point(cfg, sweep)
    except (ConfigError, RunFailed) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        wanted = OmegaConf.select(cfg, "results.record_failures", default="auto")
        wanted = sweep if str(wanted).lower() == "auto" else str(wanted).lower() == "true"
        failed, path = failed_row(cfg, str(exc)) if wanted else ({}, None)
        if path is not None:
            record(path, [failed], job_name(), pending=sweep)
            if not os.environ.get(REMOTE_ENV):
                print(json.dumps(failed), flush=True)
        if not sweep:
            sys.exit(2 if isinstance(exc, ConfigError) else 1)
        return failed or None
    kill_job(cfg, "end")
    if not out.get("skipped"):
        log(summary(out))
    if not os.environ.get(REMOTE_ENV):  # a launcher's remote job returns its row to the driver instead
        print(json.dumps(out, default=str), flush=True)
    return out


def kill_job(cfg: DictConfig, when: str) -> None:
    """Fault injection (``fault.kill_job_once``): the first attempt of the job (no marker file yet) is killed with
    SIGKILL ``fault.kill_job_at`` its start or its end (after its row is recorded), as a machine or a launcher's
    worker dying would end it; the marker lets the next attempt run."""
    from omegaconf import OmegaConf

    marker = OmegaConf.select(cfg, "fault.kill_job_once", default=None)
    if not marker or OmegaConf.select(cfg, "fault.kill_job_at", default="start") != when:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    from harness.config import run_hydra_app

    run_hydra_app(PROG, "config", job, __doc__)


if __name__ == "__main__":
    main()
