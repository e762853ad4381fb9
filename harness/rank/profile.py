"""A rank's compute measured alone: the rank runs its real plan in this process with ``SimulatedComm``
(collectives return local copies), so its wall time is its compute time — for the analytic backend and the compute
benchmark (``profile_ranks``), and as the compute profiles a replay sleeps through (``record_profile``, cached by
``measured``, resolved for a point by ``prepare``)."""

from __future__ import annotations

import time
from pathlib import Path

from harness.comm.collectives import SimulatedComm
from harness.comm.profile import Profile
from harness.rank.worker import run_rank


def profile_ranks(spec, ranks: list[int] | None = None) -> list[dict]:
    """Reports (as ``worker.run_rank`` returns them) for the given ranks of ``spec``, measured one at a time.

    ``latency_s - comm_s`` per repeat is the rank's compute time; ``comm_s`` here is only the time to copy the
    simulated shards, and ``payload_bytes`` is exactly what the real rank would hand to its collectives.
    """
    from harness.spec.schema import FaultOptions

    world = spec.devices
    spec = spec.replace(verify=False, fault=FaultOptions(), solo_repeats=0, budget_s=None, interleave=False)
    return [run_rank(spec, SimulatedComm(r, world)) for r in (ranks if ranks is not None else range(world))]


def compute_ms(report: dict) -> float:
    """Median compute time of a profiled rank, in ms."""
    vals = sorted(a - b for a, b in zip(report["latency_s"], report["comm_s"]))
    return 1e3 * vals[len(vals) // 2]


# ------------------------------------------------------------------------------------------- compute profiles
def record_profile(spec, repeats: int = 3, warmup: int = 1, accelerator: str = "cpu") -> Profile:
    """Each rank of ``spec`` alone (``RecordingComm``: collectives answered locally) at this device's speed:
    ``warmup`` inferences, then ``repeats`` recorded ones; each segment's median. ``accelerator`` ``cuda``: the
    model and inputs on the GPU, the clock read after ``torch.cuda.synchronize``."""
    import torch

    from harness.comm.profile import RecordingComm, median_profile
    from harness.models import make_inputs
    from harness.rank.worker import fresh_model
    from harness.spec.identity import profile_point
    from harness.spec.schema import FaultOptions
    from harness.store.provenance import provenance

    spec = spec.replace(verify=False, fault=FaultOptions(), solo_repeats=0, budget_s=None, interleave=False)
    torch.set_num_threads(spec.device.threads)
    cuda = accelerator == "cuda"
    sync = torch.cuda.synchronize if cuda else None
    ranks = []
    for r in range(spec.devices):
        comm = RecordingComm(r, spec.devices, sync)
        model = fresh_model(spec)
        inputs = make_inputs(spec.model, spec.tokens, spec.batch, seed=spec.seed)
        if cuda:
            model, inputs = model.cuda(), inputs.cuda()
        plan = spec.method_class.plan(model, comm, spec)
        runs = []
        with torch.no_grad():
            for i in range(warmup + repeats):
                comm.start()
                plan.forward(inputs)
                tail = comm.finish()
                if i >= warmup:
                    runs.append((comm.calls, tail))
        ranks.append(median_profile(runs, r))
    p = provenance()
    device = {"name": spec.device.name, "threads": spec.device.threads, "host": p["host"], "cpu_model": p["cpu_model"],
              "torch": p["torch_version"],
              "accelerator": torch.cuda.get_device_name() if cuda else "cpu"}
    return Profile(profile_point(spec), device, {"repeats": repeats, "warmup": warmup, "scale": 1.0}, ranks)


def measured(spec, log, repeats: int = 3, warmup: int = 1) -> Profile:
    """This point's profile measured here, from the cache (``cache_dir/profiles``) when this machine measured it
    before: keyed by what the profile is of, the device's threads, the CPU, torch and the weights."""
    import hashlib
    import json

    from harness.comm.profile import load
    from harness.spec.identity import profile_point
    from harness.store.provenance import provenance

    p = provenance()
    point = profile_point(spec)
    key = json.dumps([point, spec.seed, spec.model_state, spec.codebooks and Path(spec.codebooks).name,
                      spec.device.threads, p["cpu_model"], p["torch_version"], repeats, warmup],
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(spec.cache_dir).resolve() / "profiles" / (f"{spec.model.name}-{spec.method.name}-N{spec.devices}-"
                                                           f"T{spec.tokens}-{digest}.json")
    if path.is_file():
        return load(path)
    t0 = time.perf_counter()
    profile = record_profile(spec, repeats, warmup)
    profile.save(path)
    log(f"profile: {spec.method.name} N={spec.devices} T={spec.tokens} measured in {time.perf_counter() - t0:.0f} s "
        f"(cached in {path.parent})")
    return profile


def prepare(spec, log):
    """``device.compute=replay``: the profile every rank replays, as a file (``spec.profile_path``): measured here
    (cached), measured and scaled so that the single device takes ``device.reference_ms``, or found in the files
    ``device.profile`` names."""
    import hashlib

    from harness.comm.profile import find, load
    from harness.parallel import METHODS
    from harness.spec.identity import profile_point

    dev = spec.device
    if dev.profile in ("measure", "reference"):
        profile = measured(spec, log)
        if dev.profile == "reference":
            name = next(n for n, cls in METHODS.items() if cls.is_baseline)
            single = measured(spec.replace(method=METHODS[name].Options(name=name), devices=1, shares=None), log)
            profile = profile.scaled(dev.reference_ms / (1e3 * single.ranks[0].compute_s))
    else:
        profile = load(find(dev.profile, profile_point(spec)))
    text = profile.to_json()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(spec.cache_dir).resolve() / "profiles" / "replay" / f"{digest}.json"
    if not path.is_file():
        profile.save(path)
    return spec.replace(profile_path=str(path), profile_id=digest)


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.profile --spec S --report R``: profile every rank of a spec in a fresh process (so the
    thread budget and allocator state are those of a real worker), one rank at a time; write the reports."""
    import argparse
    import json
    from pathlib import Path

    from harness.errors import atomic_write
    from harness.spec.schema import RunSpec

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--ranks", default=None, help="comma-separated ranks to profile (default: all)")
    args = ap.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")] if args.ranks else None
    reports = profile_ranks(RunSpec.from_json(Path(args.spec).read_text()), ranks)
    atomic_write(args.report, json.dumps(reports))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
