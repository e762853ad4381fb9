"""A rank's compute measured alone: the rank runs its real plan in this process with ``SimulatedComm``
(collectives return local copies), so its wall time is its compute time — for the analytic backend and the compute
benchmark (``profile_ranks``), and as the compute profiles a replay sleeps through (``record_profile``, cached by
``measured``, resolved for a point by ``prepare``)."""

from __future__ import annotations

import gc
import os
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
DRIFT = 0.05  # a cached profile is measured again when this machine's speed moved more than this since
SPREAD = 0.10  # a rank's recording is taken again (up to ATTEMPTS times) when its inferences spread more than this
ATTEMPTS = 3


def speed_probe(threads: int = 1, repeats: int = 7) -> float:
    """This machine's speed now, in ms: the median time of a fixed piece of Transformer work (an MLP block and an
    attention product on 256 tokens of width 768, about 25 ms on one core) at ``threads`` threads. A VM's speed
    drifts (its neighbours, its host): profiles measured at different moments are only comparable when their probes
    agree."""
    import statistics

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x, q = torch.randn(256, 768, generator=g), torch.randn(12, 256, 64, generator=g)
    w1, w2 = torch.randn(768, 3072, generator=g) / 30, torch.randn(3072, 768, generator=g) / 50

    def work():
        h = torch.nn.functional.gelu(x @ w1) @ w2
        return h.sum() + (torch.softmax(q @ q.transpose(1, 2), -1) @ q).sum()

    try:
        with torch.no_grad():
            for _ in range(2):
                work()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                work()
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 1e3 * statistics.median(times)


def fits_in_memory(parameters: int) -> bool:
    """Whether that many fp32 weights fill at most a quarter of this machine's memory."""
    return 4 * parameters <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4


def recorded_layers(spec) -> int:
    """How many of the model's blocks a profile of ``spec`` is recorded on (``device.profile_layers``): auto is every
    block unless the model's fp32 weights would fill more than a quarter of this machine's memory, then 2."""
    want, depth = spec.device.profile_layers, spec.model.layers
    if want != "auto":
        return min(int(want), depth)
    from harness.models.transformer import parameter_count

    return depth if fits_in_memory(parameter_count(spec.model)) else min(2, depth)


def shallow(spec, layers: int, workdir: Path):
    """``spec`` on the first ``layers`` blocks of its model, its method's files made for that depth (of the right
    shapes only: a profile's timing does not depend on their values). Refused for a method whose blocks differ."""
    import dataclasses

    from harness.errors import ConfigError

    if not spec.method_class.uniform_blocks:
        raise ConfigError(f"method={spec.method.name} runs blocks of different kinds, so a profile recorded on "
                          f"{layers} of {spec.model.name}'s {spec.model.layers} blocks cannot stand for the others: "
                          "set device.profile_layers to the model's depth, or use a smaller model")
    small = spec.replace(model=dataclasses.replace(spec.model, layers=layers), codebooks=None)
    return small.method_class.prepare_shapes(small, workdir)


def record_profile(spec, repeats: int = 3, warmup: int = 1, accelerator: str = "cpu") -> Profile:
    """Each rank of ``spec`` alone (``RecordingComm``: collectives answered locally) at this device's speed:
    ``record_profiles`` of this one point."""
    return record_profiles([spec], repeats, warmup, accelerator)[0]


def record_profiles(specs: list, repeats: int = 3, warmup: int = 1, accelerator: str = "cpu") -> list[Profile]:
    """The profiles of several points (a method's and its single device's), recorded together: ``warmup``
    inferences, then ``repeats`` recorded rounds in which every rank of every point runs one inference in turn (the
    order rotating from round to round); each segment's median. Recorded in rounds, a drift of this machine's speed
    (a VM's neighbours) lands on all ranks and points alike instead of on whichever rank ran during it, so ranks
    that do the same work get the same compute and the ratio of a method to its single device holds. A rank whose
    recorded inferences spread by more than ``SPREAD`` (the machine was disturbed) makes the rounds run again, up to
    ``ATTEMPTS`` times, the steadiest whole attempt kept. When the copies of the model would fill more than
    a quarter of this machine's memory (or on an accelerator), the ranks are recorded one after the other instead.
    On a CPU, ``speed_probe`` runs before and after; each profile keeps their mean (``probe_ms``) and the largest
    spread of its ranks. ``accelerator`` ``cuda``: the model and inputs on the GPU, the clock read after
    ``torch.cuda.synchronize``. A model deeper than ``recorded_layers`` is recorded on that many of its blocks and
    its last recorded block repeated to the full depth (``harness.comm.profile.repeat_blocks``)."""
    import tempfile

    from harness.comm.profile import repeat_blocks
    from harness.spec.identity import profile_point

    with tempfile.TemporaryDirectory(prefix="astra-shallow-") as tmp:
        depth = [recorded_layers(s) for s in specs]
        runs = [shallow(s, n, Path(tmp)) if n < s.model.layers else s for s, n in zip(specs, depth)]
        got = _record(runs, repeats, warmup, accelerator, marks=[n < s.model.layers for s, n in zip(specs, depth)])
    out = []
    for spec, n, profile in zip(specs, depth, got):
        if n < spec.model.layers:
            profile = Profile(profile_point(spec), profile.device, {**profile.measured, "layers_recorded": n},
                              [repeat_blocks(r, spec.model.layers) for r in profile.ranks])
        out.append(profile)
    return out


def _record(specs: list, repeats: int, warmup: int, accelerator: str, marks: list[bool]) -> list[Profile]:
    import torch

    from harness.comm.profile import RecordingComm, median_profile
    from harness.models import make_inputs
    from harness.models.transformer import parameter_count
    from harness.rank.worker import forget_model, fresh_model
    from harness.spec.identity import profile_point
    from harness.spec.schema import FaultOptions
    from harness.store.provenance import provenance

    specs = [s.replace(verify=False, fault=FaultOptions(), solo_repeats=0, budget_s=None, interleave=False)
             for s in specs]
    cuda = accelerator == "cuda"
    threads = specs[0].device.threads
    probes = [] if cuda else [speed_probe(threads)]
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if cuda else None
    members = [(i, r) for i, s in enumerate(specs) for r in range(s.devices)]
    # every member's copy of the model, and the one ``fresh_model`` keeps to copy from
    together = not cuda and fits_in_memory(sum(parameter_count(specs[i].model) for i, _ in [*members, members[0]]))
    best: dict = {}  # member -> (its spread, its runs)
    for group in ([members] if together else [[m] for m in members]):
        held = {}
        for i, r in group:
            spec, comm = specs[i], RecordingComm(r, specs[i].devices, sync)
            model = fresh_model(spec)
            inputs = make_inputs(spec.model, spec.tokens, spec.batch, seed=spec.seed)
            if cuda:
                model, inputs = model.cuda(), inputs.cuda()
            plan = spec.method_class.plan(model, comm, spec)
            if marks[i]:  # where each block starts (its first norm) and where the blocks end (the final norm)
                for b, blk in enumerate(plan.model.blocks):
                    blk.ln1.register_forward_pre_hook(lambda *_, b=b, c=comm: c.block_mark(f"block{b}"))
                plan.model.ln_f.register_forward_pre_hook(lambda *_, c=comm: c.block_mark("end"))
            held[(i, r)] = (comm, plan, inputs)
            del model
        kept = None  # (the worst spread, each member's spread, each member's runs) of the steadiest attempt
        for _ in range(ATTEMPTS):
            runs = {m: [] for m in group}
            with torch.no_grad():
                for k in range(warmup + repeats):
                    for m in group[k % len(group):] + group[:k % len(group)]:
                        comm, plan, inputs = held[m]
                        comm.start()
                        plan.forward(inputs)
                        tail = comm.finish()
                        if k >= warmup:
                            runs[m].append((comm.calls, tail))
            spreads = {}
            for m, got in runs.items():
                totals = [sum(c.compute_s for c in calls) + tail for calls, tail in got]
                spreads[m] = max(totals) / max(min(totals), 1e-9) - 1
            worst = max(spreads.values())
            if kept is None or worst < kept[0]:  # a whole attempt: the members' rounds stay together
                kept = (worst, spreads, runs)
            if worst <= SPREAD:
                break
        best.update({m: (kept[1][m], kept[2][m]) for m in group})
        del held, comm, plan, inputs  # before the next rank's copy: a large model is held once, not twice
        gc.collect()
    forget_model()  # the recording process goes on to run the point: it keeps no model
    gc.collect()
    if not cuda:
        probes.append(speed_probe(threads))
    p = provenance()
    device = {"name": specs[0].device.name, "threads": threads, "host": p["host"], "cpu_model": p["cpu_model"],
              "torch": p["torch_version"], "accelerator": torch.cuda.get_device_name() if cuda else "cpu"}
    out = []
    for i, spec in enumerate(specs):
        mine = [(r, best[(i, r)]) for r in range(spec.devices)]
        measured = {"repeats": repeats, "warmup": warmup, "scale": 1.0,
                    "spread": round(max(spread for _, (spread, _) in mine), 4)}
        if probes:
            measured["probe_ms"] = round(sum(probes) / 2, 3)
            measured["probe_drift"] = round(max(probes) / min(probes) - 1, 4)
        out.append(Profile(profile_point(spec), device, measured,
                           [median_profile(got, r) for r, (_, got) in mine]))
    return out


def measured(spec, log, repeats: int = 3, warmup: int = 1, single=None) -> Profile:
    """This point's profile measured here, from the cache (``cache_dir/profiles``) when this machine measured it
    before: keyed by what the profile is of, the device's threads, the CPU, torch and the weights. A cached profile
    is used only while this machine runs at the speed it was measured at (``speed_probe`` within ``DRIFT``);
    otherwise, and when the probe moved during the recording, it is measured again (up to ``ATTEMPTS`` times). A
    profile checked or recorded in this process less than ``FRESH_S`` ago is used as it is. With ``single`` (the
    spec of the point's single device), the profile is recorded in rounds together with that device
    (``record_profiles``) and keeps the single device's compute of the same rounds as ``measured["single_s"]``: the
    ratio a reference profile is scaled by then comes from one measurement, whatever this machine did between two."""
    import hashlib
    import json

    from harness.spec.identity import profile_point
    from harness.store.provenance import provenance

    p = provenance()
    point = profile_point(spec)
    layers = recorded_layers(spec)
    key = json.dumps([point, spec.seed, spec.model_state, spec.codebooks and Path(spec.codebooks).name,
                      spec.device.threads, p["cpu_model"], p["torch_version"], repeats, warmup,
                      *([layers] if layers < spec.model.layers else []), *(["with single"] if single else [])],
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(spec.cache_dir).resolve() / "profiles" / (f"{spec.model.name}-{spec.method.name}-N{spec.devices}-"
                                                           f"T{spec.tokens}-{digest}.json")
    what = f"{spec.method.name} N={spec.devices} T={spec.tokens}"
    fresh = _FRESH.get(path)
    if fresh and time.monotonic() - fresh[0] < FRESH_S:  # checked a moment ago (by the same sweep's previous point)
        return fresh[1]
    profile = _measured(spec, log, path, what, repeats, warmup, single)
    _FRESH[path] = (time.monotonic(), profile)
    return profile


FRESH_S = 120.0  # a profile checked or recorded this long ago is used again without probing the machine
_FRESH: dict = {}


def _measured(spec, log, path: Path, what: str, repeats: int, warmup: int, single=None) -> Profile:
    from harness.comm.profile import load

    if path.is_file():
        cached = load(path)
        then, now = cached.measured.get("probe_ms"), speed_probe(spec.device.threads)
        if then and abs(now / then - 1) <= DRIFT:
            return cached
        log(f"profile: {what}: this machine now runs at {then / now:.2f}x the speed it was measured at; measuring it "
            "again" if then else f"profile: {what}: the cached profile has no speed probe; measuring it again")
    t0 = time.perf_counter()
    profile = None
    for attempt in range(ATTEMPTS):
        got, *alongside = record_profiles([spec, *([single] if single else [])], repeats, warmup)
        if alongside:
            got.measured["single_s"] = alongside[0].ranks[0].compute_s
        if profile is None or got.measured["probe_drift"] < profile.measured["probe_drift"]:
            profile = got
        if got.measured["probe_drift"] <= DRIFT:
            break
        log(f"profile: {what}: this machine's speed moved {100 * got.measured['probe_drift']:.0f} % while it was "
            "measured" + ("; measuring it again" if attempt + 1 < ATTEMPTS else
                          f"; keeping the steadiest of {ATTEMPTS} recordings"))
    profile.save(path)
    log(f"profile: {what} measured in {time.perf_counter() - t0:.0f} s (cached in {path.parent})")
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
    if dev.profile == "measure":
        profile = measured(spec, log)
    elif dev.profile == "reference":  # the single device's compute of the same recording rounds sets the scale
        if spec.devices == 1 and spec.method_class.is_baseline:
            profile = measured(spec, log)
            base = profile.ranks[0].compute_s
        else:
            name = next(n for n, cls in METHODS.items() if cls.is_baseline)
            single = spec.replace(method=METHODS[name].Options(name=name), devices=1, shares=None)
            profile = measured(spec, log, single=single)
            base = profile.measured["single_s"]
        profile = profile.scaled(dev.reference_ms / (1e3 * base))
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
