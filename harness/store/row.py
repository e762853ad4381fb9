"""The one place a result row is assembled: its settings, the measured columns summarised from the ranks' reports
(times ÷ the dilation k), the backend's own measurements, the fidelity verdict, provenance; or a failed point's row
with the settings it was asked to run."""

from __future__ import annotations

import json

from harness.errors import ConfigError
from harness.spec.build import build_spec
from harness.spec.identity import baseline_key, identity, point_key, timing_key
from harness.spec.schema import RunSpec


# ------------------------------------------------------------------------------------------------------ the result row
def row(spec: RunSpec, network: dict, reports: list[dict] | None = None, measured: dict | None = None,
        error: str | None = None, links_mbps: list[float] | None = None) -> dict:
    """The one result row of a point: its settings (``network`` = the backend's ``describe()``), the measured
    columns summarised from the ranks' ``reports`` (times ÷ the dilation k, real ones kept), the backend's own
    ``measured`` columns (``dilation`` there is the k measured in reference mode), the fidelity verdict, or
    ``error``."""
    from harness.emulation import dilation, fidelity
    from harness.store.provenance import provenance
    from harness.store.results import new_ids, summarize

    out = {
        "model": spec.model.name, "method": spec.method.name, "devices": spec.devices, "tokens": spec.tokens,
        "network": network["network"], "bandwidth_mbps": network.get("bandwidth_mbps"),
        "bandwidth_per_device": network.get("bandwidth_per_device"),
        "groups": None, "codebook_size": None, "repeats": spec.repeats if error is None else 0,  # timed inferences
        "latency_ms": None, "latency_p90_ms": None, "latency_ci_low_ms": None,
        "latency_ci_high_ms": None, "compute_ms": None, "comm_ms": None, "comm_hidden_ms": None,
        "payload_bytes": None,
        "wire_bytes": None, "max_abs_err": None,
        "cpu_per_device": network.get("cpu_per_device", float(spec.device.threads)),
        "oversubscribed": network.get("oversubscribed", False),
        "status": "ok" if error is None else "failed", "error": error, **new_ids(),
        "config": json.dumps(spec.config, sort_keys=True),
        "batch": spec.batch, "threads": spec.device.threads, "seed": spec.seed, "vq": None,
        "topology": network.get("topology"), "device": spec.device.name, "setup_s": None,
        "point_key": point_key(spec), "timing_key": timing_key(spec), "baseline_key": baseline_key(spec),
        "settings": json.dumps(identity(spec), sort_keys=True), "wall_s": None, **provenance(),
    }
    out.update(spec.method_class.columns(spec))
    out["dilation"] = spec.dilation
    out["idle_poll"] = spec.idle_poll if spec.backend_class.enforces_cores else None
    out["spread"] = bool(spec.cores_of_ranks) if spec.backend_class.enforces_cores else None
    out["tick_us"] = spec.tick_us if spec.backend_class.enforces_cores else None
    out["device_compute"] = spec.device.compute
    out["profile_id"] = spec.profile_id
    if spec.profile_path:
        from harness.comm.profile import load

        out["profile_scale"] = load(spec.profile_path).measured.get("scale", 1.0)
    out["cpu_real_per_device"] = network.get("cpu_real_per_device")
    if network.get("cores_per_device"):  # heterogeneous devices: the virtual cores of every rank
        out["cores_per_device"] = network["cores_per_device"]
    if spec.shares:
        out["split"] = json.dumps(spec.shares)
    if reports:
        out.update(summarize(reports))
        out["repeats"] = len(reports[0]["latency_s"])
        out["warmups"] = reports[0].get("warmups")
        from harness.store.stream import columns as stream_columns

        out.update(stream_columns(reports, spec))
    out.update(measured or {})
    if reports:
        k = out["dilation"] or 1.0
        out.update(dilation.scale_row(out, k))
        out.update(fidelity.assess(reports, bool(out.get("oversubscribed")), links_mbps, k,
                                   out.get("bandwidth_mbps") if spec.method_class.communicates else None,
                                   spec.device.cpu_ns_per_byte))
        out.update(fidelity.interleaved(reports, k))
        if not spec.backend_class.emulates:
            out["fidelity"] = None
    return out


def failed_row(cfg, error: str) -> tuple[dict, str | None]:
    """The row recording a failed point in a sweep, and its store path (None: no usable store to record it in)."""
    try:
        spec = build_spec(cfg, in_sweep=True, check_method=False)
    except ConfigError:  # the config itself is unreadable: record what can be read of it
        from omegaconf import OmegaConf

        from harness.store.results import check_store

        c = OmegaConf.to_container(cfg, resolve=True)
        c.pop("hydra", None)
        path = str(c.get("results", {}).get("path"))
        try:
            check_store(path)
        except ConfigError:
            return {}, None
        out = row_from_config(c, error)
        return out, path
    try:
        info = spec.backend_class(spec).describe()
    except ConfigError:
        info = {"network": spec.network.name}
    return row(spec, info, error=error), spec.results.path


def row_from_config(c: dict, error: str) -> dict:
    """A failed row from a config that does not even make a spec: its plain settings, the error, and ids."""
    from harness.store.provenance import provenance
    from harness.store.results import COLUMNS, new_ids

    def get(group, key):
        node = c.get(group)
        return node.get(key) if isinstance(node, dict) else None

    return {**dict.fromkeys(COLUMNS), "model": get("model", "name"), "method": get("method", "name"),
            "devices": c.get("devices"), "tokens": c.get("tokens"), "network": get("network", "name"),
            "repeats": 0, "status": "failed", "error": error, **new_ids(),
            "config": json.dumps(c, sort_keys=True, default=str), **provenance()}
