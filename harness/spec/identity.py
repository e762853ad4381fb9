"""What makes a point a point: ``identity`` lists every setting that changes what is measured (not where results go,
time limits, fault injection or names); ``point_key`` hashes it, ``timing_key`` leaves out what changes no timing
(``verify``), ``baseline_key`` names the single-device run a point's speedup divides."""

from __future__ import annotations

import hashlib
import json

from harness.parallel import METHODS
from harness.spec.schema import RunSpec


# ----------------------------------------------------------------------------------------------------- identities
def identity(spec: RunSpec, timing: bool = False) -> dict:
    """Every setting that changes what a point measures (not where results go, time limits, fault injection, names).
    ``timing``: only what changes its timings (``verify`` adds an error measurement after the timed repeats)."""
    from harness.models.ptq import model_identity

    cls = spec.method_class
    backend = spec.backend_class
    ident = {
        "model": model_identity(spec.model),
        "method": cls.identity(spec),
        "devices": spec.devices,
        "tokens": spec.tokens, "batch": spec.batch, "seed": spec.seed, "repeats": spec.repeats,
        "warmup": spec.warmup, "verify": None if timing else spec.verify, "collectives": spec.collectives,
        "budget_s": spec.budget_s,
        **({"stream_s": spec.stream_s} if spec.stream_s else {}),  # absent when unset: older keys stay valid
        "interleave": spec.interleave if cls.communicates and not timing else None,
        **({"shares": spec.shares} if spec.shares else {}),
        "device": replay_identity(spec) if spec.device.compute == "replay" else {"threads": spec.device.threads, **({
            "cores": spec.device.cores, "cfs_period_us": spec.device.cfs_period_us,
            **({"pin_cores": spec.device.pin_cores} if spec.device.pin_cores else {}),  # absent: keys stay valid
            # absent when off, so points measured before these knobs keep their keys; spread's cores follow from the
            # quotas, so the single baseline of a spread sweep (one core) is the point its speedups name
            **({"idle_poll": True} if spec.idle_poll else {}),
            **({"spread": True} if spec.cores_of_ranks else {}),
            **({"tick_us": spec.tick_us} if spec.tick_us else {}),
            "dilation": None if spec.dilation is None else round(spec.dilation, 6),
            "reference_ms": spec.device.reference_ms} if backend.enforces_cores else {})},
        "topology": spec.topology.name if backend.uses_topology else None,
    }
    # one device: bandwidth, topology and the network's knobs do not matter
    ident["network"] = backend.identity(spec) if cls.communicates else backend.identity_alone(spec)
    if not cls.communicates:
        ident["topology"] = None
        ident["collectives"] = None
    return ident


def profile_point(spec: RunSpec) -> dict:
    """What a compute profile is a profile of: the settings that change what each rank computes and sends (the
    model, the method and its options, devices, tokens, batch, the token shares)."""
    from harness.models.ptq import model_identity

    return {"model": model_identity(spec.model), "method": spec.method_class.identity(spec), "devices": spec.devices,
            "tokens": spec.tokens, "batch": spec.batch, "shares": spec.shares}


def replay_identity(spec: RunSpec) -> dict:
    """A replayed device: where its profile comes from (measured here; scaled to a reference latency; a recorded
    file, by its content), how its ranks are scheduled and whether idle CPUs poll (both decide how late a sleeping
    rank wakes)."""
    from harness.comm.profile import file_sha, find

    dev = spec.device
    if dev.profile == "measure":
        source = "measure"
    elif dev.profile == "reference":
        source = {"reference_ms": dev.reference_ms}
    else:
        source = {"sha": file_sha(find(dev.profile, profile_point(spec)))}
    return {"threads": dev.threads, "compute": "replay", "profile": source, "sched": dev.replay_sched,
            **({"idle_poll": True} if spec.idle_poll else {})}


def point_key(spec: RunSpec) -> str:
    return hashlib.sha256(json.dumps(identity(spec), sort_keys=True).encode()).hexdigest()[:16]


def timing_key(spec: RunSpec) -> str:
    """Like ``point_key``, but equal for points whose timings are the same experiment (``verify`` aside)."""
    return hashlib.sha256(json.dumps(identity(spec, timing=True), sort_keys=True).encode()).hexdigest()[:16]


def baseline_key(spec: RunSpec) -> str:
    """The timing key of the single-device run this point's speedup is measured against."""
    single = next(n for n, cls in METHODS.items() if cls.is_baseline)
    base = spec.replace(method=METHODS[single].Options(name=single), devices=1)
    return timing_key(base)
