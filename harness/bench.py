"""``astra-bench``: a Hydra app where one job is one experiment point.

    astra-bench model=vit_tiny method=astra devices=3 tokens=50 verify=true
    astra-bench -m experiment=quickstart

The job validates the point, prepares codebooks (ASTRA), runs the ranks through the network backend, appends one
row to the results store, and prints that row as a single JSON object on its last stdout line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import (
    ConfigError,
    check_group_overrides,
    effective_devices,
    model_config,
    point_key,
    run_hydra_app,
    run_spec,
    validate,
)
from .network import make_backend
from .network.loopback import RunFailed
from .results import append_row, find_ok, summarize


def log(msg: str) -> None:
    print(f"[astra-bench] {msg}", file=sys.stderr, flush=True)


def vq_mode(cfg: DictConfig) -> str:
    """``method.vq``; a ``method.checkpoint`` given with the default k-means mode means the checkpoint."""
    mode = str(cfg.method.vq)
    return "checkpoint" if (mode == "kmeans" and cfg.method.get("checkpoint")) else mode


def checkpoint_model_state(cfg: DictConfig) -> str | None:
    """For an astra-train checkpoint directory: check it fits this run and return its fine-tuned weights file."""
    if cfg.method.name != "astra" or vq_mode(cfg) != "checkpoint":
        return None
    path = Path(cfg.method.checkpoint)
    if not (path.is_dir() and (path / "manifest.json").is_file()):
        return None  # a bare codebook file: random (or model.weights) weights with these codebooks
    from .train.pipeline import TrainError, check_checkpoint, read_manifest

    mc = model_config(cfg)
    try:
        manifest = read_manifest(path)
        warnings = check_checkpoint(manifest, mc, int(cfg.method.groups), int(cfg.method.codebook_size),
                                    int(cfg.tokens), str(path),
                                    f"use the model it was trained with (model={manifest['model'].get('name')})")
    except TrainError as exc:
        raise ConfigError(str(exc)) from None
    if manifest.get("devices") != effective_devices(cfg):
        warnings.append(f"checkpoint {path} was fine-tuned for {manifest.get('devices')} devices, this run uses "
                        f"{effective_devices(cfg)} (the paper retrains per device count)")
    if manifest.get("dct") is not None and bool(manifest["dct"]) != bool(cfg.method.dct):
        warnings.append(f"checkpoint {path} was fine-tuned with dct={manifest['dct']}, this run uses "
                        f"method.dct={cfg.method.dct}")
    for w in warnings:
        log(f"WARNING: {w}")
    return str((path / "model.safetensors").resolve())


def prepare_codebooks(cfg: DictConfig) -> str | None:
    """Path of the codebooks an ASTRA point uses (computing k-means ones on first use), or None."""
    if cfg.method.name != "astra" or vq_mode(cfg) == "lossless":
        return None
    mc = model_config(cfg)
    g, k = int(cfg.method.groups), int(cfg.method.codebook_size)
    if vq_mode(cfg) == "checkpoint":
        from .codebooks import load_codebooks

        path = os.path.abspath(cfg.method.checkpoint)
        try:
            books = load_codebooks(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        want = (mc.layers, g, k, mc.hidden // g)
        if tuple(books.shape) != want:
            raise ConfigError(
                f"codebooks in {path} have shape {tuple(books.shape)}, this run needs {want} "
                "(layers, groups, codebook_size, hidden/groups): set method.groups/codebook_size to match"
            )
        return path
    from .codebooks import cached_kmeans_codebooks, calibration_samples

    n_vec = calibration_samples(int(cfg.tokens), k) * (int(cfg.tokens) + mc.prefix_tokens)
    t0 = time.perf_counter()
    path = cached_kmeans_codebooks(
        mc, int(cfg.tokens), g, k, int(cfg.seed), int(cfg.method.kmeans_iters), os.path.abspath(cfg.cache_dir)
    )
    if time.perf_counter() - t0 > 1:
        log(f"codebooks: k-means G={g} K={k} on {n_vec} activations per block took "
            f"{time.perf_counter() - t0:.0f} s (cached in {cfg.cache_dir})")
    return str(path)


def check_weights(cfg: DictConfig) -> None:
    """Load HF weights once in the controller so a bad directory fails with one line before any rank starts."""
    mc = model_config(cfg)
    if not mc.weights:
        return
    from .models import build_model
    from .models.hf import WeightLoadError

    try:
        build_model(mc)
    except WeightLoadError as exc:
        raise ConfigError(str(exc)) from None


def base_row(cfg: DictConfig, backend_info: dict) -> dict:
    astra = cfg.method.name == "astra"
    devices = effective_devices(cfg)
    threads = int(cfg.device.threads)
    return {
        "model": cfg.model.name,
        "method": cfg.method.name,
        "devices": devices,
        "tokens": int(cfg.tokens),
        "network": backend_info["network"],
        "bandwidth_mbps": backend_info["bandwidth_mbps"],
        "bandwidth_per_device": backend_info.get("bandwidth_per_device"),
        "groups": int(cfg.method.groups) if astra else None,
        "codebook_size": int(cfg.method.codebook_size) if astra and vq_mode(cfg) != "lossless" else None,
        "repeats": int(cfg.repeats),
        "latency_ms": None,
        "latency_p90_ms": None,
        "compute_ms": None,
        "comm_ms": None,
        "payload_bytes": None,
        "wire_bytes": backend_info.get("wire_bytes"),
        "max_abs_err": None,
        "cpu_per_device": backend_info.get("cpu_per_device", float(threads)),
        "oversubscribed": backend_info.get("oversubscribed", devices * threads > (os.cpu_count() or 1)),
        "status": "ok",
        "error": None,
        "run_id": uuid.uuid4().hex[:12],
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True),
        "batch": int(cfg.batch),
        "threads": threads,
        "seed": int(cfg.seed),
        "vq": vq_mode(cfg) if astra else None,
        "topology": backend_info.get("topology"),
        "device": cfg.device.name,
        "setup_s": None,
        "point_key": None,
        "wall_s": None,
    }


def failed_bandwidth(cfg: DictConfig) -> dict:
    """Bandwidth columns for a failed point's row (None where the value itself was the problem)."""
    from .config import bandwidth_columns, parse_bandwidths

    try:
        n = effective_devices(cfg)
        return bandwidth_columns(parse_bandwidths(cfg.network.get("bandwidth_mbps"), max(n, 1)), n)
    except (ConfigError, TypeError, ValueError):
        return {"bandwidth_mbps": None, "bandwidth_per_device": None}


def in_sweep() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - not running under Hydra (tests calling run_point directly)
        return False


def run_point(cfg: DictConfig) -> dict:
    """Validate, run and record one point. Raises ConfigError (bad input) or RunFailed (a rank failed)."""
    t0 = time.perf_counter()
    validate(cfg)
    check_weights(cfg)
    model_state = checkpoint_model_state(cfg)
    backend = make_backend(cfg)
    key = point_key(cfg)
    skip = cfg.results.get("skip_existing", "auto")
    if (in_sweep() if str(skip) == "auto" else bool(skip)):
        existing = find_ok(cfg.results.path, key)
        if existing is not None:
            log(f"skipped: this point is already in {cfg.results.path} (run {existing['run_id']}); "
                "results.skip_existing=false re-runs it")
            existing["skipped"] = True
            return existing
    row = base_row(cfg, backend.describe())
    row["point_key"] = key
    if row["oversubscribed"]:
        log(
            f"WARNING: {row['devices']} devices x {row['cpu_per_device']:g} cores exceed this machine's "
            f"{os.cpu_count()} cores: ranks compete for CPU (row marked oversubscribed=true)"
        )
    codebooks = prepare_codebooks(cfg)
    spec = run_spec(cfg, codebooks)
    spec["model_state"] = model_state
    with tempfile.TemporaryDirectory(prefix="astra-run-") as wd:
        reports = backend.run(spec, Path(wd))
    row.update(summarize(reports))
    row.update(backend.measured(reports) if hasattr(backend, "measured") else {})
    row["wall_s"] = round(time.perf_counter() - t0, 3)
    append_row(cfg.results.path, row)
    return row


def job(cfg: DictConfig) -> None:
    sweep = in_sweep()
    record = cfg.results.record_failures
    record = sweep if str(record) == "auto" else bool(record)
    try:
        row = run_point(cfg)
    except (ConfigError, RunFailed) as exc:
        print(f"astra-bench: error: {exc}", file=sys.stderr, flush=True)
        if record:
            backend_info = {"network": cfg.network.name, **failed_bandwidth(cfg)}
            row = base_row(cfg, backend_info)
            row.update(status="failed", error=str(exc))
            append_row(cfg.results.path, row)
            print(json.dumps(row), flush=True)
        if not sweep:
            sys.exit(2 if isinstance(exc, ConfigError) else 1)
        return
    if row.get("skipped"):
        print(json.dumps(row, default=str), flush=True)
        return
    log(
        f"{row['model']} {row['method']} N={row['devices']} T={row['tokens']} {row['network']}"
        + (f" {row['bandwidth_mbps']} Mbps" if row['bandwidth_mbps'] is not None else "") + ": "
        f"latency {row['latency_ms']:.1f} ms (compute {row['compute_ms']:.1f}, comm {row['comm_ms']:.1f}), "
        f"payload {row['payload_bytes']} B" + (f", max_abs_err {row['max_abs_err']:.2e}" if row["max_abs_err"] is not None else "")
    )
    print(json.dumps(row), flush=True)


def main() -> None:
    run_hydra_app("astra-bench", "config", job, check_group_overrides)


if __name__ == "__main__":
    main()
