"""``astra-device``: one rank of a point on a real device. Start it with ``torchrun`` (or any launcher that sets
torch.distributed's env:// variables: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) on every device, with the same
overrides as ``astra-bench``; rank 0 writes the point's row to the store and prints it.

    # two machines, 100 Mbit/s shaped on each one's interface to the other (root):
    torchrun --nnodes 2 --nproc-per-node 1 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500 \\
        -m harness.device model=vit_base method=astra devices=2 tokens=1024 network=real network.bandwidth_mbps=100
    # ... and the same with --node-rank 1 on the other machine.
    # one machine, ranks over loopback (the row of astra-bench network=loopback):
    torchrun --standalone --nproc-per-node 2 -m harness.device method=sp devices=2 network=loopback

Every rank checks the overrides (a bad one: one line, exit 2, on every rank). Rank 0 prepares what the method
needs (ASTRA's codebooks, a checkpoint's weights) and hands it to the others with the spec, so every device runs
the same codebooks whatever its own floating point. Each rank then runs ``worker.run_rank`` (the code every
backend runs); the reports are gathered on rank 0, which makes the row (``spec.row``) and records it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from harness.errors import ConfigError, RunFailed

PROG = "astra-device"
ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
BACKENDS = ("loopback", "real")


def log(msg: str) -> None:
    from harness.errors import log as _log

    _log(PROG, msg)


def build(argv: list[str]):
    """The point's spec from the command line's overrides, checked like astra-bench's."""
    from harness.config import check_argv, split_argv
    from harness.spec.build import build_spec, compose

    overrides, multirun = split_argv(argv)
    if multirun:
        raise ConfigError("astra-device runs one point: drop -m (sweep by running torchrun once per point)")
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set: start astra-device with torchrun on every device, e.g. "
                          "`torchrun --standalone --nproc-per-node 2 -m harness.device devices=2 ...`")
    overrides, _ = split_argv(check_argv(argv))
    spec = build_spec(compose(overrides))
    from harness.store.results import check_store

    check_store(spec.results.path)
    world = int(os.environ["WORLD_SIZE"])
    if spec.network.name not in BACKENDS:
        raise ConfigError(f"network={spec.network.name} is not for real devices: use network=real (devices on "
                          "their own machines) or network=loopback (all ranks on this machine)")
    if world != spec.devices:
        raise ConfigError(f"torchrun started {world} ranks but the point has devices={spec.devices}: make "
                          "--nnodes x --nproc-per-node equal devices")
    if spec.network.name == "loopback" and int(os.environ.get("LOCAL_WORLD_SIZE", world)) != world:
        raise ConfigError("network=loopback needs every rank on this machine: use network=real across machines")
    return spec


def is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return addr == "localhost"


def share_prepared(spec, rank: int, folder: Path):
    """Rank 0 prepares the method's files and sends the spec with their bytes; the others write them to
    ``folder`` and point the spec there. A preparation error on rank 0 ends every rank."""
    import torch.distributed as dist

    from harness.spec.schema import RunSpec

    box: list = [None]
    if rank == 0:
        try:
            spec = spec.method_class.prepare(spec, log)
            files = {k: Path(getattr(spec, k)).read_bytes() for k in ("codebooks", "model_state")
                     if getattr(spec, k, None)}
            box = [(spec.to_json(), files, None)]
        except ConfigError as exc:
            box = [(None, {}, str(exc))]
    dist.broadcast_object_list(box, src=0)
    text, files, error = box[0]
    if error is not None:
        raise ConfigError(error if rank == 0 else f"rank 0 could not prepare the point: {error}")
    spec = RunSpec.from_json(text)
    if rank != 0:
        for key, data in files.items():
            path = folder / f"{key}{Path(getattr(spec, key)).suffix}"
            path.write_bytes(data)
            spec = spec.replace(**{key: str(path)})
    return spec


def run(argv: list[str]) -> dict | None:
    """This rank's part of the point; rank 0's row (None on the others)."""
    import torch.distributed as dist

    from harness.bench import summary
    from harness.comm.collectives import DistComm
    from harness.network.real import Shaper, route_iface
    from harness.rank.worker import run_rank
    from harness.store.results import job_name, record
    from harness.store.row import row

    t0 = time.perf_counter()
    spec = build(argv)
    backend = spec.backend_class(spec)
    rank, addr = int(os.environ["RANK"]), os.environ["MASTER_ADDR"]
    iface = None
    if spec.network.name == "real":
        iface = spec.network.iface or route_iface(addr)
    if "GLOO_SOCKET_IFNAME" not in os.environ:  # gloo's own guess goes by the host name
        ifname = "lo" if spec.network.name == "loopback" or is_loopback(addr) else iface
        if ifname:
            os.environ["GLOO_SOCKET_IFNAME"] = ifname
    bw = backend.bandwidths()
    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=spec.timeout_s))
    try:
        with tempfile.TemporaryDirectory(prefix="astra-device-") as folder:
            spec = share_prepared(spec, rank, Path(folder))
            if iface:
                spec = spec.replace(wire_ifaces=[iface])
            net = spec.network
            shaping = Shaper(iface, bw[rank], net.htb_burst_ms, net.htb_ack_class) if bw else contextlib.nullcontext()
            dist.barrier()
            with shaping:
                comm = DistComm(spec.collectives)
                try:
                    report = run_rank(spec, comm)
                finally:
                    comm.close()
                reports: list | None = [None] * spec.devices if rank == 0 else None
                dist.gather_object(report, reports, dst=0)
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return None
    links = bw if bw and spec.method_class.communicates else None
    out = row(spec, backend.describe(), reports, {"link_real_mbps": min(links)} if links else {}, links_mbps=links)
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    record(spec.results.path, [out], job_name())
    log(summary(out))
    return out


def main(argv: list[str] | None = None) -> None:
    import json

    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        sys.exit(0)
    try:
        out = run(argv)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except RunFailed as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    if out is not None:
        print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()
