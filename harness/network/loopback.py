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


def check_port_free(port: int) -> None:
    from ..config import ConfigError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(f"network.port={port} is already in use on 127.0.0.1: choose another port or leave "
                              "network.port unset (a free one is picked)") from None


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


# Errors a rank raises because a *peer* failed (connection dropped, collective timed out): not the root cause.
SECONDARY = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Timed out waiting",
             "Socket Timeout", "timed out", "Connection refused")


def is_secondary(message: str) -> bool:
    return any(s in message for s in SECONDARY)


def blame(failed: dict[int, str], running: list[int]) -> str:
    """One line naming the rank that most likely caused the failure: a rank with a primary error if any; else
    (every failure is a peer error) the ranks that were still running, i.e. hung; else the first failed rank."""
    primary = [r for r, msg in failed.items() if not is_secondary(msg)]
    if primary:
        r = primary[0]
        return f"rank {r} failed: {failed[r]}"
    r = min(failed)
    if running:
        return (f"ranks {running} stopped responding (rank {r} gave up waiting for them: {failed[r]}); "
                "raise timeout_s if the point is just slow")
    return f"rank {r} failed: {failed[r]}"


STARTUP_GRACE_S = 30.0  # process start-up (Python + torch import) on a loaded machine, on top of timeout_s


def supervise(procs: list[subprocess.Popen], logs: list[Path], reports: list[Path], timeout_s: float) -> list[dict]:
    """Wait for every rank; on the first failure or at the deadline (``timeout_s`` plus start-up grace) stop the
    rest and raise ``RunFailed`` naming the culprit."""
    deadline = time.monotonic() + timeout_s + STARTUP_GRACE_S
    try:
        while True:
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):
                time.sleep(1.0)  # let peers of a failed rank fail too, so the root cause can be told apart
                codes = [p.poll() for p in procs]
                failed = {r: f"exit code {c}: {last_error_line(logs[r])}" for r, c in enumerate(codes)
                          if c not in (None, 0)}
                raise RunFailed(blame(failed, [r for r, c in enumerate(codes) if c is None]))
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                waiting = [r for r, c in enumerate(codes) if c is None]
                raise RunFailed(f"ranks {waiting} did not finish within timeout_s={timeout_s:g} (plus "
                                f"{STARTUP_GRACE_S:g} s start-up grace); raise timeout_s if the point is just slow")
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

    def __init__(self, cfg):
        from ..config import cpu_budget

        self.budget = cpu_budget(cfg, enforced_cores=False)
        self.net_cfg = cfg.network
        self.port = self.net_cfg.get("port")
        if self.port is not None:
            check_port_free(int(self.port))

    def describe(self) -> dict:
        return {"network": self.name, "bandwidth_mbps": None, "wire_bytes": None, **self.budget}

    def run(self, spec: dict, workdir: Path) -> list[dict]:
        return launch(spec, workdir, self.port)


def launch(spec: dict, workdir: Path, port: int | None = None) -> list[dict]:
    """Start one worker process per rank on loopback, supervise them, return their reports."""
    world = int(spec["devices"])
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    port = int(port) if port is not None else free_port()
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
    return supervise(procs, logs, reports, float(spec["timeout_s"]))


def install_signal_handlers() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop our children and tear networks down."""

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
