"""Starting, supervising, blaming and stopping rank processes: one place for every backend.

A backend hands ``supervise`` one *handle* per rank (or per profiling process). A handle says, when polled, whether
its rank is still running, finished, or failed and why. ``supervise`` waits for all of them against one deadline,
stops waiting a moment after the first failure (so peers of a failed rank can fail too and the root cause can be
told apart from its echoes), and raises ``RunFailed`` with one line naming the culprit:

    rank 1 was killed by signal 9 (SIGKILL)
    rank 0 failed: RuntimeError: injected crash on rank 0 (fault.crash_rank)
    ranks [1] stopped responding (rank 0 gave up waiting for them: ...); raise timeout_s if the point is just slow

Processes are only ever stopped by the PID we started them with.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from harness.errors import ConfigError, RunFailed, atomic_write
from harness.paths import ROOT as REPO_ROOT

STARTUP_GRACE_S = 30.0  # process start-up (Python + torch import) on a loaded machine, on top of timeout_s
PEER_GRACE_S = 1.0  # after a first failure, how long the peers get to fail too before the blame is decided

# Errors a rank raises because a *peer* failed (connection dropped, collective timed out): not the root cause.
SECONDARY = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Timed out waiting",
             "Socket Timeout", "timed out", "Connection refused")


# ----------------------------------------------------------------------------------------------- rank environment
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(f"network.port={port} is already in use on 127.0.0.1: choose another port or leave "
                              "network.port unset (a free one is picked)") from None


def worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.rank.worker", *args]


def rank_env(rank: int, world: int, addr: str, port: int, ifname: str, threads: int) -> dict:
    """The environment of one rank: torch.distributed's env:// variables, gloo's interface, the thread budget."""
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


# ------------------------------------------------------------------------------------------------ reading failures
def last_error_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln
    return lines[-1] if lines else "no output"


def describe_exit(code: int, log: Path | None) -> str:
    """How a process ended, as the tail of "rank N ...": a signal by name, else the exit code and its log's error."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-code} ({name})"
    return f"failed (exit code {code}): {last_error_line(log) if log else 'no log'}"


def is_secondary(message: str) -> bool:
    return any(s in message for s in SECONDARY)


def blame(failed: dict[str, str], running: list[str]) -> str:
    """One line naming who most likely caused a failure. ``failed`` maps a handle's name to how it ended. A failure
    with a primary cause wins (a signal, a crash); if every failure is a peer error, the handles still running hung;
    else the first failure."""
    primary = [n for n, msg in failed.items() if not is_secondary(msg)]
    if primary:
        return f"{primary[0]} {failed[primary[0]]}"
    first = next(iter(failed))
    if running:
        names = ", ".join(n.removeprefix("rank ") for n in running)
        why = re.sub(r"^failed( \(exit code -?\d+\))?:\s*", "", failed[first])
        return (f"ranks [{names}] stopped responding ({first} gave up waiting for them: {why}); raise timeout_s "
                "if the point is just slow")
    return f"{first} {failed[first]}"


# ------------------------------------------------------------------------------------------------------ supervising
class Handle(Protocol):
    name: str

    def poll(self) -> tuple[bool, str] | None:
        """None while running; (True, "") when done; (False, how it ended) when it failed."""


class ProcessHandle:
    """A rank that is one process: done when it exits 0."""

    def __init__(self, name: str, proc: subprocess.Popen, log: Path | None):
        self.name, self.proc, self.log = name, proc, log

    def poll(self) -> tuple[bool, str] | None:
        code = self.proc.poll()
        if code is None:
            return None
        return (True, "") if code == 0 else (False, describe_exit(code, self.log))


def supervise(handles: list, timeout_s: float, grace_s: float = STARTUP_GRACE_S) -> None:
    """Wait until every handle is done; raise ``RunFailed`` on the first failure (after ``PEER_GRACE_S``) or at the
    deadline ``timeout_s + grace_s``. Stopping the processes is the caller's job (``finally: stop_processes``)."""
    deadline = time.monotonic() + timeout_s + grace_s
    ended: dict[str, tuple[bool, str]] = {}
    first_failure = None
    while True:
        for h in handles:
            if h.name not in ended:
                res = h.poll()
                if res is not None:
                    ended[h.name] = res
                    if not res[0] and first_failure is None:
                        first_failure = time.monotonic()
        running = [h.name for h in handles if h.name not in ended]
        if not running:
            break
        now = time.monotonic()
        if first_failure is not None and now > first_failure + PEER_GRACE_S:
            break
        if first_failure is None and now > deadline:
            names = ", ".join(n.removeprefix("rank ") for n in running)
            raise RunFailed(f"ranks [{names}] did not finish within timeout_s={timeout_s:g} (plus {grace_s:g} s "
                            "start-up grace); raise timeout_s if the point is just slow")
        time.sleep(0.02)
    failed = {h.name: ended[h.name][1] for h in handles if h.name in ended and not ended[h.name][0]}  # rank order
    if failed:
        raise RunFailed(blame(failed, [h.name for h in handles if h.name not in ended]))


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


def read_reports(paths: list[Path], logs: list[Path], names: list[str]) -> list:
    out = []
    for path, log, name in zip(paths, logs, names):
        if not path.is_file():
            raise RunFailed(f"{name} exited without a report: {last_error_line(log)}")
        out.append(json.loads(path.read_text()))
    return out


# -------------------------------------------------------------------------------------------------- local launching
def launch_local(spec, workdir: Path, port: int | None = None) -> list[dict]:
    """One worker process per rank on 127.0.0.1 (no shaping); supervised; returns the ranks' reports."""
    world = spec.devices
    spec_path = atomic_write(workdir / "spec.json", spec.to_json())
    port = int(port) if port is not None else free_port()
    procs, logs, reports = [], [], []
    try:
        for r in range(world):
            logs.append(workdir / f"rank{r}.log")
            reports.append(workdir / f"rank{r}.json")
            with open(logs[-1], "wb") as log:
                procs.append(subprocess.Popen(
                    worker_command("--spec", str(spec_path), "--report", str(reports[-1])),
                    env=rank_env(r, world, "127.0.0.1", port, "lo", spec.device.threads),
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT))
        supervise([ProcessHandle(f"rank {r}", p, lg) for r, (p, lg) in enumerate(zip(procs, logs))], spec.timeout_s)
    finally:
        stop_processes(procs)
    return read_reports(reports, logs, [f"rank {r}" for r in range(world)])


def install_signal_handlers() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop our children and tear networks down."""

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
