"""``network=mininet``: the ranks run inside Mininet hosts whose links are shaped with HTB, over a real TCP stack.

What it does for a point:
- builds the topology (``topologies/star.py``: star on a Linux bridge, or a full mesh of direct links; no
  controller, no Open vSwitch), with ``CPULimitedHost`` hosts holding each device's CPU budget;
- shapes every link direction with one HTB class at ``network.bandwidth_mbps``. Unlike stock Mininet (fixed 15 kB
  burst, default cburst) we set ``ceil`` = rate and ``burst`` = ``cburst`` = max(2 frames, rate × ``htb_burst_ms``):
  the small default cburst is what costs stock Mininet 5-13 % of the configured rate, and a 15 kB burst lets short
  messages through at line rate (12 ms worth at 10 Mbit/s);
- sets reno and no slow-start-after-idle in every host (bbr is erratic under HTB);
- starts one persistent worker per host (``python -m harness.worker --serve``) with the gloo environment
  (``GLOO_SOCKET_IFNAME=<host>-eth0``), sends it the point, collects its report, and reads the hosts' interface tx
  counters around every timed inference for ``wire_bytes``.

Hosts and workers stay up across the points of a sweep with the same topology, device count and CPU budget
(bandwidth changes are applied live with ``tc class change``), so Python/torch start-up is paid once per session.
Everything is torn down on every exit path: normal end, a failed or hung rank (the session is discarded), SIGINT,
SIGTERM (turned into SystemExit) and interpreter exit. All our objects carry the ``astr`` prefix (hosts ``astrh1..``,
bridge ``astrs1``, cgroups of the same names); PIDs of host shells are kept in a state file so a later run can
remove what a SIGKILLed controller left behind — by PID, after checking the process is one of ours.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..config import ConfigError, bandwidth_columns, parse_bandwidths
from .loopback import REPO_ROOT, STARTUP_GRACE_S, RunFailed, blame, last_error_line, rank_env

PREFIX = "astr"
STATE_DIR = Path(os.environ.get("ASTRA_STATE_DIR", "/run/astra-bench"))
STATE_FILE = STATE_DIR / "mininet-state.json"
LOCK_FILE = STATE_DIR / "mininet.lock"
OUR_IFACE = re.compile(rf"^{PREFIX}[hs]\d+(-eth\d+)?$")
MAX_BW = 1000.0


# ---------------------------------------------------------------------------------------------------------- checks
def check_environment() -> None:
    """Root, Mininet's Python package, mnexec, brctl and tc must be there; otherwise one line on what to do."""
    if os.geteuid() != 0:
        raise ConfigError("network=mininet needs root (Mininet creates namespaces and links): "
                          "run as root, or use network=analytic / network=loopback")
    try:
        import mininet  # noqa: F401
    except ImportError:
        raise ConfigError("Mininet is not installed: run scripts/setup.sh (apt mininet bridge-utils; pip mininet), "
                          "or use network=analytic") from None
    for tool, pkg in (("mnexec", "mininet"), ("brctl", "bridge-utils"), ("tc", "iproute2")):
        if not shutil.which(tool):
            raise ConfigError(f"{tool} is missing: apt-get install {pkg} (scripts/setup.sh does), "
                              "or use network=analytic")


_NETEM: bool | None = None


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc, tried in a throwaway network namespace (nothing is left behind)."""
    global _NETEM
    if _NETEM is None:
        r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up && tc qdisc add dev lo root netem delay 1ms"],
                           capture_output=True, text=True)
        _NETEM = r.returncode == 0
    return _NETEM


def bandwidths(net_cfg, n: int) -> list[float]:
    return parse_bandwidths(net_cfg.bandwidth_mbps, n, MAX_BW, ", the range HTB shaping handles here")


def validate(cfg) -> None:
    net = cfg.network
    bandwidths(net, max(1, int(cfg.devices)))
    if cfg.topology.name not in ("star", "mesh"):
        raise ConfigError(f"unknown topology '{cfg.topology.name}': choose star or mesh")
    impaired = {k: net.get(k) for k in ("delay_ms", "loss_pct", "max_queue") if net.get(k) not in (None, 0)}
    if impaired and not netem_available():
        names = ", ".join(f"network.{k}={v}" for k, v in impaired.items())
        raise ConfigError(f"{names} needs the netem qdisc, which this kernel does not have: remove the option(s) "
                          "(a link must never come up different from its config) or use network=analytic")
    check_environment()


# ------------------------------------------------------------------------------------------------- leftover cleanup
def _ours(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return f"mininet:{PREFIX}h" in cmd or f"mininet:{PREFIX}s" in cmd or "harness.worker" in cmd


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


# ----------------------------------------------------------------------------------------------------- the session
MIN_BURST = 3028  # two full Ethernet frames


def htb_burst(bw: float, burst_ms: float) -> int:
    """Bytes HTB may send at line rate after idle: ``burst_ms`` worth of the rate, at least two frames.

    Measured here (astra-calibrate, iperf3, reno): with 1 ms, 1 Gbit/s reaches only 0.91-0.93 of its rate (HTB's
    dequeue granularity on a 2-core machine); with 10 ms all of 10/100/1000 reach 0.957, which is the TCP goodput
    ceiling of 1448-byte segments in 1514-byte frames. The price: a transfer starting after idle gains at most
    10 ms (stock Mininet's 15 kB is 12 ms at 10 Mbit/s, but only 0.12 ms at 1 Gbit/s)."""
    return max(MIN_BURST, int(bw * 1e6 / 8 * burst_ms / 1e3))


def htb_commands(intf: str, bw: float, burst_ms: float, verb: str = "add", stock: bool = False) -> list[str]:
    """tc commands shaping ``intf`` to ``bw`` Mbit/s (``verb`` add = first time, change = live). ``stock``
    reproduces Mininet's own TCLink HTB class (fixed 15 kB burst, default ceil/cburst), for comparison only."""
    cmds = [f"tc qdisc replace dev {intf} root handle 5: htb default 1"] if verb == "add" else []
    if stock:
        cmds.append(f"tc class {verb} dev {intf} parent 5: classid 5:1 htb rate {bw}mbit burst 15k")
        return cmds
    burst = htb_burst(bw, burst_ms)
    cmds.append(f"tc class {verb} dev {intf} parent 5: classid 5:1 htb rate {bw}mbit ceil {bw}mbit "
                f"burst {burst} cburst {burst} quantum 1514")
    return cmds


def netem_command(intf: str, net_cfg) -> str | None:
    args = []
    if net_cfg.get("delay_ms"):
        args.append(f"delay {float(net_cfg.delay_ms)}ms")
    if net_cfg.get("loss_pct"):
        args.append(f"loss {float(net_cfg.loss_pct)}%")
    if net_cfg.get("max_queue"):
        args.append(f"limit {int(net_cfg.max_queue)}")
    return f"tc qdisc replace dev {intf} parent 5:1 handle 10: netem {' '.join(args)}" if args else None


class Worker:
    """One persistent worker process in a host, with a thread turning its stdout lines into a queue."""

    def __init__(self, host, rank: int, env: dict, log: Path):
        self.host, self.rank, self.log = host, rank, log
        self.lines: queue.Queue = queue.Queue()
        with open(log, "ab") as fh:
            self.proc = host.popen(
                [sys.executable, "-m", "harness.worker", "--serve"],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fh, cwd=str(REPO_ROOT),
            )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for raw in self.proc.stdout:
            try:
                self.lines.put(json.loads(raw))
            except ValueError:
                continue
        self.lines.put(None)  # EOF: the process ended

    def send(self, job: dict) -> None:
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()

    def wait_line(self, deadline: float) -> dict:
        left = deadline - time.monotonic()
        if left <= 0:
            raise queue.Empty
        msg = self.lines.get(timeout=left)
        if msg is None:
            raise RunFailed(f"rank {self.rank} exited (code {self.proc.poll()}): {last_error_line(self.log)}")
        return msg


class Session:
    """A built network with one worker per host, reusable across points with the same key."""

    def __init__(self, topology: str, n: int, cores: float, threads: int, net_cfg, workdir: Path,
                 workers: bool = True):
        from mininet.link import Link
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import CPULimitedHost
        from mininet.nodelib import LinuxBridge

        from topologies.star import configure_mesh, topos

        setLogLevel("error")
        t0 = time.perf_counter()
        self.key = (topology, n, cores, threads)
        self.n, self.workdir, self.jobs = n, workdir, 0
        self.workers: list[Worker] = []
        self.bw: list[float] | None = None
        self.burst_ms = float(net_cfg.get("htb_burst_ms", 10))
        self.stock = bool(net_cfg.get("htb_stock", False))
        cleanup_leftovers()
        CPULimitedHost.inited = True  # its mount check misreads /proc/mounts here; cgroups v1 are mounted
        topo = topos[topology](n=n, bw=None, hprefix=f"{PREFIX}h", sprefix=f"{PREFIX}s")
        self.net = Mininet(topo=topo, switch=LinuxBridge, controller=None, link=Link, host=CPULimitedHost,
                           ipBase="10.0.0.0/24", autoSetMacs=True, autoStaticArp=False, build=False,
                           waitConnected=False)
        try:
            self.net.build()
            self.hosts = [self.net.get(f"{PREFIX}h{i}") for i in range(1, n + 1)]
            self._save_state()
            frac = cores / (os.cpu_count() or 1)
            for h in self.hosts:
                h.setCPUFrac(frac)
            self.net.start()
            if topology == "mesh":
                configure_mesh(self.net, self.hosts)
            for h in self.hosts:
                h.cmd("sysctl -qw net.ipv4.tcp_congestion_control=reno net.ipv4.tcp_slow_start_after_idle=0")
            self.shaped = self._shaped_interfaces()
            if not net_cfg.get("offloads", False):
                # Segmentation offloads make the interface counters see 64 kB super-packets with one header:
                # with them off, tx_bytes (wire_bytes) counts every frame's headers, as a real NIC would.
                for node, intf, _ in self.shaped:
                    node.cmd(f"ethtool -K {intf} tso off gso off gro off")
            self.apply(net_cfg, bandwidths(net_cfg, n), first=True)
            self.topology_s = time.perf_counter() - t0
            for r, h in enumerate(self.hosts if workers else []):
                env = rank_env(r, n, self.hosts[0].IP(), 0, f"{h.name}-eth0", threads)
                self.workers.append(Worker(h, r, env, workdir / f"rank{r}.log"))
            self._save_state()
            deadline = time.monotonic() + 120
            for w in self.workers:
                try:
                    w.wait_line(deadline)
                except queue.Empty:
                    raise RunFailed(f"rank {w.rank} did not start within 120 s: {last_error_line(w.log)}") from None
        except BaseException:
            self.close()
            raise
        self.setup_s = time.perf_counter() - t0
        self.workers_s = self.setup_s - self.topology_s

    def _shaped_interfaces(self) -> list[tuple]:
        """(node, interface name, index of the host whose bandwidth applies) for both ends of every link."""
        out = []
        for link in self.net.links:
            for intf, other in ((link.intf1, link.intf2), (link.intf2, link.intf1)):
                # a host's bandwidth shapes what it sends (upload) and what the bridge sends it (download)
                owner = intf.node if intf.node in self.hosts else other.node
                out.append((intf.node, intf.name, self.hosts.index(owner)))
        return out

    def _save_state(self) -> None:
        pids = [h.pid for h in self.net.hosts if getattr(h, "pid", None)] + [w.proc.pid for w in self.workers]
        pids += [s.pid for s in self.net.switches if getattr(s, "pid", None)]
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(json.dumps({"pids": pids, "controller": os.getpid()}))

    def apply(self, net_cfg, bw: list[float], first: bool = False) -> None:
        """Shape (first time) or re-shape (live) every link direction; netem impairments only where supported."""
        if not first and bw == self.bw:
            return
        for node, intf, host_idx in self.shaped:
            b = bw[host_idx]
            for cmd in htb_commands(intf, b, self.burst_ms, "add" if first else "change", self.stock):
                errors = [ln for ln in node.cmd(cmd).splitlines() if ln.strip() and not ln.startswith("Warning")]
                if errors:
                    raise RunFailed(f"shaping {intf} failed: {errors[0]}")
            nc = netem_command(intf, net_cfg) if first else None
            if nc:
                out = node.cmd(nc)
                if out.strip():
                    raise RunFailed(f"netem on {intf} failed: {out.strip().splitlines()[0]}")
        self.bw = bw

    def host_ifaces(self, rank: int) -> list[str]:
        return [i.name for i in self.hosts[rank].intfList() if i.name != "lo"]

    def run(self, spec: dict, timeout_s: float, port: int | None) -> list[dict]:
        self.jobs += 1
        port = port or 29500 + (self.jobs % 2000)
        job_dir = self.workdir / f"job{self.jobs}"
        job_dir.mkdir()
        for r, w in enumerate(self.workers):
            rspec = {**spec, "wire_ifaces": self.host_ifaces(r)}
            (job_dir / f"spec{r}.json").write_text(json.dumps(rspec))
            w.send({"spec": str(job_dir / f"spec{r}.json"), "report": str(job_dir / f"rank{r}.json"),
                    "env": {"MASTER_ADDR": self.hosts[0].IP(), "MASTER_PORT": port, "RANK": r,
                            "WORLD_SIZE": self.n}})
        deadline = time.monotonic() + timeout_s
        answers: dict[int, dict] = {}
        first_failure = None
        while len(answers) < self.n:
            now = time.monotonic()
            if first_failure is not None and now > first_failure + 1.0:
                break  # peers of a failed rank had a moment to fail too
            if now > deadline:
                waiting = [w.rank for w in self.workers if w.rank not in answers]
                raise RunFailed(f"ranks {waiting} did not finish within timeout_s={spec['timeout_s']:g} (plus "
                                f"{STARTUP_GRACE_S:g} s grace); raise timeout_s if the point is just slow")
            for w in self.workers:
                if w.rank in answers:
                    continue
                try:
                    answers[w.rank] = w.wait_line(time.monotonic() + 0.02)
                except queue.Empty:
                    continue
                except RunFailed as exc:  # the process died
                    answers[w.rank] = {"ok": False, "error": str(exc)}
                if not answers[w.rank].get("ok") and first_failure is None:
                    first_failure = time.monotonic()
        failed = {r: str(a.get("error")) for r, a in answers.items() if not a.get("ok")}
        if failed:
            raise RunFailed(blame(failed, [w.rank for w in self.workers if w.rank not in answers]))
        return [json.loads((job_dir / f"rank{r}.json").read_text()) for r in range(self.n)]

    def close(self) -> float:
        t0 = time.perf_counter()
        for w in self.workers:
            if w.proc.poll() is None:
                try:
                    w.proc.stdin.close()
                except OSError:
                    pass
                w.proc.terminate()
        for w in self.workers:
            try:
                w.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        try:
            self.net.stop()
        finally:
            cleanup_leftovers()
            STATE_FILE.unlink(missing_ok=True)
        return time.perf_counter() - t0


_SESSION: Session | None = None
_LOCK_FH = None


def _acquire_lock() -> None:
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


def close_session() -> float | None:
    global _SESSION, _LOCK_FH
    took = None
    if _SESSION is not None:
        s, _SESSION = _SESSION, None
        took = s.close()
    if _LOCK_FH is not None:
        _LOCK_FH.close()
        _LOCK_FH = None
    return took


atexit.register(close_session)


class MininetBackend:
    name = "mininet"

    def __init__(self, cfg):
        self.cfg = cfg
        self.net_cfg = cfg.network
        validate(cfg)
        from ..config import cpu_budget

        self.budget = cpu_budget(cfg, enforced_cores=True)
        self.n = 1 if cfg.method.name == "single" else int(cfg.devices)
        self.bw = bandwidths(self.net_cfg, self.n)

    def describe(self) -> dict:
        return {"network": self.name, **bandwidth_columns(self.bw, self.n), "wire_bytes": None,
                "topology": self.cfg.topology.name, **self.budget}

    def run(self, spec: dict, workdir: Path) -> list[dict]:
        global _SESSION
        _acquire_lock()
        dev = self.cfg.device
        key = (self.cfg.topology.name, self.n, float(dev.cores), int(dev.threads))
        reuse = bool(self.net_cfg.get("reuse", True))
        self.setup_s = 0.0
        if _SESSION is not None and (_SESSION.key != key or not reuse):
            close_session()
            _acquire_lock()
        if _SESSION is None:
            sess_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"astra-mininet-{os.getpid()}-{time.monotonic_ns()}"
            sess_dir.mkdir(parents=True)
            _SESSION = Session(key[0], self.n, key[2], key[3], self.net_cfg, sess_dir)
            self.setup_s = _SESSION.setup_s
        try:
            _SESSION.apply(self.net_cfg, self.bw)
            port = self.net_cfg.get("port")
            reports = _SESSION.run(spec, float(spec["timeout_s"]) + STARTUP_GRACE_S, int(port) if port else None)
        except BaseException:
            close_session()  # a failed or interrupted point leaves nothing behind
            raise
        if not reuse:
            close_session()
        return reports

    def measured(self, reports: list[dict]) -> dict:
        return {"setup_s": round(self.setup_s, 3)}
