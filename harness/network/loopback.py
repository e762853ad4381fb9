"""``network=loopback``: N worker processes on 127.0.0.1, no shaping. Also the process supervision every
process-based backend shares: wait with a deadline, fail fast when a rank dies, kill our own children by PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class RunFailed(RuntimeError):
    """A rank crashed, hung past the timeout, or wrote no report. The message is one line."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_command(spec_path: Path, report_path: Path) -> list[str]:
    return [sys.executable, "-m", "harness.worker", "--spec", str(spec_path), "--report", str(report_path)]


def rank_env(rank: int, world: int, addr: str, port: int, ifname: str, threads: int) -> dict:
    env = dict(os.environ)
    env.update(
        MASTER_ADDR=addr,
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK="0",
        WORLD_SIZE=str(world),
        GLOO_SOCKET_IFNAME=ifname,
        OMP_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    return env


def last_error_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln
    return lines[-1] if lines else "no output"


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """Terminate, then kill, the processes we started (by PID only)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 3
    for p in procs:
        try:
            p.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def supervise(procs: list[subprocess.Popen], logs: list[Path], reports: list[Path], timeout_s: float) -> list[dict]:
    """Wait for every rank; on the first failure or at the deadline stop the rest and raise ``RunFailed``."""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            codes = [p.poll() for p in procs]
            bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                r = bad[0]
                raise RunFailed(f"rank {r} exited with code {codes[r]}: {last_error_line(logs[r])}")
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                waiting = [r for r, c in enumerate(codes) if c is None]
                raise RunFailed(f"ranks {waiting} did not finish within timeout_s={timeout_s:g}; raise timeout_s "
                                "if the point is just slow")
            time.sleep(0.05)
    finally:
        stop_processes(procs)
    out = []
    for r, path in enumerate(reports):
        if not path.is_file():
            raise RunFailed(f"rank {r} exited without a report: {last_error_line(logs[r])}")
        out.append(json.loads(path.read_text()))
    return out


class LoopbackBackend:
    name = "loopback"

    def __init__(self, net_cfg):
        self.net_cfg = net_cfg

    def describe(self) -> dict:
        return {"network": self.name, "bandwidth_mbps": None, "wire_bytes": None}

    def run(self, spec: dict, workdir: Path) -> list[dict]:
        world = int(spec["devices"])
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        port = free_port()
        procs, logs, reports = [], [], []
        try:
            for r in range(world):
                logs.append(workdir / f"rank{r}.log")
                reports.append(workdir / f"rank{r}.json")
                with open(logs[-1], "wb") as log:
                    procs.append(
                        subprocess.Popen(
                            worker_command(spec_path, reports[-1]),
                            env=rank_env(r, world, "127.0.0.1", port, "lo", int(spec["threads"])),
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            cwd=REPO_ROOT,
                        )
                    )
        except BaseException:
            stop_processes(procs)
            raise
        return supervise(procs, logs, reports, float(spec["timeout_s"]) + 30)


def install_signal_handlers() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop our children and tear networks down."""

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
