"""One rank of a run. Initialises torch.distributed from ``env://`` (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE),
so the same worker runs under the loopback and Mininet backends and under ``torchrun`` on real machines:

    python -m harness.rank.worker --spec spec.json --report rank0.json

The spec is the resolved run (``harness.spec.RunSpec`` as JSON). Each rank builds the same model and inputs from the
same seed, applies its method, runs ``warmup`` untimed inferences and ``repeats`` timed ones, each started right
after a barrier, and writes a JSON report: latency and communication time per repeat, payload bytes per inference,
payload per collective tag, and (``verify``) the max abs error of its output against the single-device output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

from harness.comm.collectives import Comm, DistComm, LocalComm
from harness.errors import atomic_write
from harness.models import build_model, make_inputs
from harness.models.ptq import quantize_model
from harness.rank.timing import Timing, solo_compute
from harness.spec.schema import RunSpec


def reference_output(model, inputs) -> torch.Tensor:
    """Single-device output with every position (GPT2) / the class prediction (ViT)."""
    with torch.no_grad():
        return model(inputs, all_positions=True) if model.cfg.decoder else model(inputs)


_MODEL: dict[str, torch.nn.Module] = {}  # a persistent worker's last built model, kept pristine


def forget_model() -> None:
    """Drop the kept model (a process that goes on without it frees its memory)."""
    _MODEL.clear()


def fresh_model(spec: RunSpec) -> torch.nn.Module:
    """The point's model with its weights (random from the seed, or an astra-train checkpoint's). A persistent
    worker builds it once per sweep and hands each point a copy (plans may change the model they are given, and a
    copy of ViT-Base takes a fraction of a second where building it takes seconds on a dilated device)."""
    import copy

    state = [spec.model_state, os.stat(spec.model_state).st_mtime_ns] if spec.model_state else None
    key = json.dumps([spec.model.to_dict(), spec.seed, state], sort_keys=True, default=str)
    if key not in _MODEL:
        _MODEL.clear()
        model = build_model(spec.model, seed=spec.seed)
        if spec.model_state:  # fine-tuned weights from an astra-train checkpoint
            from safetensors.torch import load_file

            model.load_state_dict(load_file(spec.model_state))
        quantize_model(model, spec.model.weight_bits, spec.model.weight_group)  # no-op at 32 bits
        _MODEL[key] = model
    return copy.deepcopy(_MODEL[key])


def run_rank(spec: RunSpec, comm: Comm) -> dict:
    """Run one rank's share of the point described by ``spec`` over ``comm``; return its report."""
    torch.set_num_threads(spec.device.threads)
    if spec.fault.crash_rank == comm.rank:
        raise RuntimeError(f"injected crash on rank {comm.rank} (fault.crash_rank)")
    if spec.device.compute == "replay":
        return replay_rank(spec, comm)
    model = fresh_model(spec)
    if spec.inputs_path:  # a given input batch (astra-train's runtime check) instead of random inputs
        from safetensors.torch import load_file

        inputs = load_file(spec.inputs_path)["inputs"]
    else:
        inputs = make_inputs(spec.model, spec.tokens, spec.batch, seed=spec.seed)
    ref = reference_output(spec.method_class.reference_model(model, spec), inputs) if spec.verify else None
    plan = spec.method_class.plan(model, comm, spec)
    if spec.fault.hang_rank == comm.rank:
        while True:  # injected hang: the controller's timeout must end this run
            time.sleep(1)

    comm.wire_ifaces = list(spec.wire_ifaces)
    baseline = None
    if spec.interleave and comm.world > 1 and comm.rank == 0 and not comm.local:
        from harness.parallel import METHODS

        single = next(cls for cls in METHODS.values() if cls.is_baseline)
        baseline = single(fresh_model(spec), LocalComm(), {})
    timing = Timing(spec, comm, plan, inputs, baseline)
    timing.run_stream() if spec.stream_s else timing.run()
    out = timing.out
    solo = (solo_compute(spec, comm, plan, inputs)
            if spec.solo_repeats and comm.world > 1 and not comm.local and not timing.paired else None)
    per_tag: dict[str, int] = {}
    for rec in timing.records:
        per_tag[rec.tag] = per_tag.get(rec.tag, 0) + rec.payload_bytes
    report = {
        "rank": comm.rank,
        "world": comm.world,
        "threads": torch.get_num_threads(),
        **timing.report(),
        "payload_bytes": sum(rec.payload_bytes for rec in timing.records),
        "collectives": len(timing.records),
        "payload_by_tag": per_tag,
        # the last repeat's collectives: op, tag, payload bytes, seconds, wire bytes of the busiest interface, start,
        # and for a started one when the rank waited, when its post returned and how long it ran hidden
        "records": [rec.row() for rec in timing.records],
        "solo_compute_s": solo,
        "has_output": out is not None and out.logits is not None,
        "max_abs_err": None,
    }
    if ref is not None:
        comm.barrier()
        full = plan.forward(inputs, all_positions=True)
        if full.logits is not None:
            report["max_abs_err"] = float((full.logits - plan.reference_slice(ref, full)).abs().max())
    if spec.outputs_dir:  # every position's logits (GPT2) / the class logits (ViT), for comparison
        from safetensors.torch import save_file

        comm.barrier()
        full = plan.forward(inputs, all_positions=True)
        if full.logits is not None:
            tensors = {"logits": full.logits.contiguous()}
            if full.positions is not None:
                tensors["positions"] = full.positions.contiguous()
            atomic_write(Path(spec.outputs_dir) / f"rank{comm.rank}.safetensors",
                         lambda tmp: save_file(tensors, str(tmp)))
    return report


def replay_rank(spec: RunSpec, comm: Comm) -> dict:
    """A rank that replays its compute profile (``device.compute=replay``): no model; the same timing loop, the
    same calls and bytes; its report adds how late every wake-up came."""
    from harness.comm.profile import load
    from harness.rank.replay import ReplayPlan

    plan = ReplayPlan(load(spec.profile_path).ranks[comm.rank], comm)
    if spec.fault.hang_rank == comm.rank:
        while True:  # injected hang: the controller's timeout must end this run
            time.sleep(1)
    comm.wire_ifaces = list(spec.wire_ifaces)
    timing = Timing(spec, comm, plan, None)
    timing.run_stream() if spec.stream_s else timing.run()
    per_tag: dict[str, int] = {}
    for rec in timing.records:
        per_tag[rec.tag] = per_tag.get(rec.tag, 0) + rec.payload_bytes
    return {"rank": comm.rank, "world": comm.world, "threads": torch.get_num_threads(), **timing.report(),
            "payload_bytes": sum(rec.payload_bytes for rec in timing.records), "collectives": len(timing.records),
            "payload_by_tag": per_tag,
            "records": [rec.row() for rec in timing.records],
            "solo_compute_s": [plan.profile.compute_s], "has_output": False, "max_abs_err": None,
            "lateness_s": plan.lateness_s, "segments_s": plan.segments_s}


def realtime(on: bool) -> bool:
    """Switch this thread to SCHED_FIFO at priority 1 (``on``) or back to the normal scheduler; threads it starts
    afterwards (gloo's) inherit the policy. Returns whether the thread now runs SCHED_FIFO (False where the
    process may not: no root, or no such policy)."""
    try:
        if on:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        else:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, PermissionError, OSError):
        pass
    return getattr(os, "SCHED_FIFO", None) is not None and os.sched_getscheduler(0) == os.SCHED_FIFO


def run_job(spec: RunSpec, world: int) -> dict:
    """Join the group described by the env:// variables, run this rank, leave the group. A replayed rank runs
    SCHED_FIFO from before the group starts (so gloo's threads inherit it) until it has left it
    (``device.replay_sched``); its report says which it got."""
    if world == 1:
        return run_rank(spec, LocalComm())
    import torch.distributed as dist

    fifo = spec.device.compute == "replay" and spec.device.replay_sched == "fifo"
    sched = "fifo" if fifo and realtime(True) else "other"
    try:
        dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=spec.timeout_s))
        comm = DistComm(spec.collectives)
        try:
            return {**run_rank(spec, comm), "sched": sched}
        finally:
            comm.close()
            dist.destroy_process_group()
    finally:
        if sched == "fifo":
            realtime(False)


def serve() -> int:
    """Persistent mode: one JSON job per stdin line ({"spec", "report", "env"}), one JSON status line per job on
    stdout ({"ok": true} or {"ok": false, "error": ...}). Used by backends that keep hosts and processes up across
    the points of a sweep, so process start-up (Python + torch import) is paid once."""
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        os.environ.update({k: str(v) for k, v in job["env"].items()})
        try:
            spec = RunSpec.from_json(Path(job["spec"]).read_text())
            atomic_write(job["report"], json.dumps(run_job(spec, int(job["env"]["WORLD_SIZE"]))))
            print(json.dumps({"ok": True}), flush=True)
        except Exception as exc:  # noqa: BLE001 - reported to the controller, which ends the session
            import traceback

            traceback.print_exc(file=sys.stderr)
            print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one astra-bench rank (torch.distributed env:// init)")
    ap.add_argument("--spec", help="JSON run spec written by the controller")
    ap.add_argument("--report", help="where to write this rank's JSON report")
    ap.add_argument("--serve", action="store_true", help="persistent mode: read jobs from stdin")
    args = ap.parse_args(argv)
    if args.serve:
        return serve()
    if not (args.spec and args.report):
        ap.error("--spec and --report are required (or --serve)")
    spec = RunSpec.from_json(Path(args.spec).read_text())
    atomic_write(args.report, json.dumps(run_job(spec, int(os.environ.get("WORLD_SIZE", "1")))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
