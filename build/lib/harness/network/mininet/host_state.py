"""Our footprint on the host machine while Mininet runs: the name prefix of everything we create, the state file a
later run uses to remove what a SIGKILLed controller left behind (by PID, after checking the process is ours), and
the lock that keeps one emulated network per machine."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from harness.emulation.tick import TICK_MARK
from harness.errors import ConfigError

PREFIX = "astr"
STATE_DIR = Path(os.environ.get("ASTRA_STATE_DIR", "/run/astra-bench"))
STATE_FILE = STATE_DIR / "mininet-state.json"
LOCK_FILE = STATE_DIR / "mininet.lock"
OUR_IFACE = re.compile(rf"^{PREFIX}[hs]\d+(-eth\d+)?$")


def _ours(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return (f"mininet:{PREFIX}h" in cmd or f"mininet:{PREFIX}s" in cmd or "harness.rank.worker" in cmd
            or ("cyclictest" in cmd and TICK_MARK in cmd))  # a device.tick_us ticker (harness.tick)


def cleanup_leftovers() -> list[str]:
    """Remove what an earlier, killed controller left: its host shells and workers (PIDs from the state file,
    verified), our root-namespace interfaces and bridge, our cgroups. Returns what was removed."""
    removed = []
    if STATE_FILE.is_file():
        try:
            pids = json.loads(STATE_FILE.read_text()).get("pids", [])
        except (OSError, ValueError):
            pids = []
        for pid in pids:
            if _ours(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                    removed.append(f"pid {pid}")
                except ProcessLookupError:
                    pass
        STATE_FILE.unlink(missing_ok=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for name in re.findall(r"^\d+: ([^:@]+)[:@]", links, flags=re.M):
        if OUR_IFACE.match(name):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
            removed.append(name)
    for d in Path(tempfile.gettempdir()).glob(f"{TICK_MARK}*"):  # a ticker that ended without its owner's clean-up
        if (d / "stats.json").is_file():  # (a running one has not written its statistics yet)
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    for ctl in ("cpu", "cpuacct", "cpuset", "cpu,cpuacct"):
        base = Path("/sys/fs/cgroup") / ctl
        for d in base.glob(f"{PREFIX}[hs]*") if base.is_dir() else []:
            try:
                d.rmdir()
                removed.append(str(d))
            except OSError:
                pass
    return removed


def our_objects() -> dict:
    """What of ours exists now (for tests and the leak check): root-namespace interfaces, processes."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    ifaces = [n for n in re.findall(r"^\d+: ([^:@]+)[:@]", links, flags=re.M) if OUR_IFACE.match(n)]
    procs = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"mininet:{PREFIX}" in cmd:
                procs.append(int(p.name))
    return {"interfaces": ifaces, "host_shells": procs}


def save_state(pids: list[int]) -> None:
    from harness.errors import atomic_write

    atomic_write(STATE_FILE, json.dumps({"pids": pids, "controller": os.getpid()}))


_LOCK_FH = None


def acquire_lock() -> None:
    """One Mininet session per machine at a time (host and bridge names are fixed)."""
    global _LOCK_FH
    if _LOCK_FH is None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        _LOCK_FH = open(LOCK_FILE, "w")
        try:
            fcntl.flock(_LOCK_FH, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _LOCK_FH.close()
            _LOCK_FH = None
            raise ConfigError("another astra-bench Mininet run holds this machine's emulated network "
                              f"({LOCK_FILE}): wait for it to finish") from None


def release_lock() -> None:
    global _LOCK_FH
    if _LOCK_FH is not None:
        _LOCK_FH.close()
        _LOCK_FH = None
