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
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from .. import dilation, idle, tick
from ..dilation import check_links
from ..errors import ConfigError, RunFailed, atomic_write
from ..launch import REPO_ROOT, describe_exit, rank_env, supervise
from ..options import opt
from .base import Backend, Result, ShapedOptions, device_bandwidths, register
from .host_state import PREFIX, acquire_lock, cleanup_leftovers, our_objects, release_lock, save_state  # noqa: F401
from .shaping import htb_commands, netem_command
from .trace import build as build_trace, mean_rates

MAX_BW = 1000.0
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")  # cgroup v1 cpu controller, where CPULimitedHost puts each host


def host_throttled_s(host: str) -> float | None:
    """Seconds the host's CPU cgroup has been throttled by its CFS quota so far (None if unreadable)."""
    from ..cpustat import throttled_seconds

    return throttled_seconds(CGROUP_CPU / host / "cpu.stat")


@dataclass
class MininetOptions(ShapedOptions):
    name: str = opt("mininet", "the backend")
    htb_burst_ms: float = opt(10.0, "HTB burst = cburst = max(2 frames, rate x this)", above=0, hi=1000)
    htb_stock: bool = opt(False, "shape like stock Mininet's TCLink (fixed 15 kB burst), for comparison only")
    delay_ms: float | None = opt(None, "one-way delay per link (needs netem; refused on kernels without it)", lo=0,
                                 hi=10000)
    loss_pct: float | None = opt(None, "packet loss per link in %, each direction (nftables random drop in the "
                                 "hosts; TCP retransmits)", lo=0, hi=100)
    max_queue: int | None = opt(None, "queue limit in packets (needs netem)", lo=1, hi=1000000)
    trace: str | None = opt(None, "link rates that change during a request stream (stream_s): markov, or a CSV "
                            "file of time_s,mbps (or one rate column per host)")
    trace_states: Any = opt([20, 40, 60, 80, 100], "trace=markov: the chain's states, Mbit/s", kind="list")
    trace_step_s: float = opt(5.0, "trace=markov: emulated seconds between transitions", above=0, hi=86400)
    port: int | None = opt(None, "rendezvous port (default: a fresh one per point)", lo=1, hi=65535)
    reuse: bool = opt(True, "keep hosts and workers up across the points of a sweep (same topology, N, device)")
    offloads: bool = opt(False, "keep TSO/GSO/GRO on (then wire_bytes counts 64 kB super-packets, not frames)")


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


def bandwidths(net, n: int) -> list[float]:
    return device_bandwidths(net.bandwidth_mbps, n, MAX_BW, ", the range HTB shaping handles here")


LOSS_TABLE = "astra_loss"  # nftables table in each host's own network namespace (gone with the namespace)


def loss_ruleset(ifaces: list[str], loss_pct: float) -> str:
    """nftables rules dropping ``loss_pct`` % of the packets a host sends and receives on ``ifaces`` (its links,
    nothing else), at random, counted. Dropping both ways at each host is what loss on every link direction does to
    a host-to-host path (two links, each lossy, as netem on both ends of each link would)."""
    per_million = round(loss_pct * 1e4)
    names = ", ".join(f'"{i}"' for i in ifaces)
    return (f"table inet {LOSS_TABLE} {{\n"
            f"  chain egress {{ type filter hook output priority 0; policy accept;\n"
            f"    oifname {{ {names} }} numgen random mod 1000000 < {per_million} counter drop\n  }}\n"
            f"  chain ingress {{ type filter hook input priority 0; policy accept;\n"
            f"    iifname {{ {names} }} numgen random mod 1000000 < {per_million} counter drop\n  }}\n}}\n")


def drop_packets(host, ifaces: list[str], loss_pct: float, workdir: Path) -> None:
    """Install the loss rules in ``host``'s namespace (netem, the usual tool, is absent on this kernel)."""
    path = workdir / f"loss-{host.name}.nft"
    path.write_text(loss_ruleset(ifaces, loss_pct))
    out = host.cmd(f"nft -f {path} && echo installed").strip()
    if not out.endswith("installed"):
        raise RunFailed(f"nftables loss rules on {host.name} failed: {out.splitlines()[0] if out else 'no output'}")


def dropped_packets(host) -> int:
    """Packets ``host``'s loss rules have dropped so far (the counters of both chains)."""
    out = host.cmd(f"nft list table inet {LOSS_TABLE}")
    return sum(int(m) for m in re.findall(r"counter packets (\d+)", out))


# ----------------------------------------------------------------------------------------------------- the session
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
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:  # the worker died before its job reached it (e.g. killed while the point was set up)
            raise RunFailed(f"rank {self.rank} {self.ended()}") from None

    def wait_line(self, deadline: float) -> dict:
        left = deadline - time.monotonic()
        if left <= 0:
            raise queue.Empty
        msg = self.lines.get(timeout=left)
        if msg is None:
            raise RunFailed(f"rank {self.rank} {self.ended()}")
        return msg

    def ended(self) -> str:
        """How the process ended (it has closed its stdout)."""
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "closed its output but is still running"
        return describe_exit(code, self.log)


class JobHandle:
    """A job sent to a persistent worker, for ``launch.supervise``: done when the worker answers ok."""

    def __init__(self, worker: Worker):
        self.worker, self.name = worker, f"rank {worker.rank}"

    def poll(self) -> tuple[bool, str] | None:
        try:
            msg = self.worker.lines.get_nowait()
        except queue.Empty:
            return None
        if msg is None:  # EOF: the process died
            return False, self.worker.ended()
        return (True, "") if msg.get("ok") else (False, f"failed: {msg.get('error')}")


def pin_host(host, cpus: str) -> None:
    """Pin a host's cgroup (and so every process it starts) to ``cpus``. Done here rather than with
    CPULimitedHost.setCPUs, which reads the cpuset back as an integer and so cannot check a range."""
    for cmd in (["cgset", "-r", f"cpuset.cpus={cpus}", f"/{host.name}"],
                ["cgset", "-r", "cpuset.mems=0", f"/{host.name}"],  # a cpuset needs its memory nodes too
                ["cgclassify", "-g", f"cpuset:/{host.name}", str(host.pid)]):
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise RunFailed(f"pinning {host.name} to CPUs {cpus} failed: {(out.stderr or out.stdout).strip()}")


class Session:
    """A built network with one worker per host, reusable across points with the same key."""

    def __init__(self, topology: str, n: int, cores: float | list[float], threads: int, net: MininetOptions,
                 workdir: Path, workers: bool = True, period_us: int = 5000, key: tuple = (),
                 cpus: str | None = None, idle_poll: bool = False, spread: list[int] | None = None,
                 tick_us: int = 0):
        """``cores``: each host's real CPU quota in cores (``device.cores`` / k), or one per host. ``cpus``: a
        cpuset every host is pinned to (``device.pin_cores``), or None. ``idle_poll``: hold the CPUs in the polling
        idle state for the session's life (``harness.idle``). ``spread``: the core each host is pinned to
        (``device.spread``), or None. ``tick_us``: run a ticker on the hosts' cores at this interval for the
        session's life (``harness.tick``), 0: none."""
        from mininet.link import Link
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import CPULimitedHost
        from mininet.nodelib import LinuxBridge

        from topologies.star import TOPOLOGIES, configure_mesh

        setLogLevel("error")
        t0 = time.perf_counter()
        self.key = key  # what the backend built this session for: a point with another key needs a new one
        self.n, self.workdir, self.jobs = n, workdir, 0
        self.workers: list[Worker] = []
        self.bw: list[float] | None = None
        self.loss_pct = 0.0
        self.dropped_before = self.dropped_after = None
        self.burst_ms = float(net.htb_burst_ms)
        self.stock = bool(net.htb_stock)
        self.poll = idle.PollIdle()
        self.ticker = tick.Ticker(dilation.cpuset_cpus(cpus), tick_us) if tick_us else None
        cleanup_leftovers()
        CPULimitedHost.inited = True  # its mount check misreads /proc/mounts here; cgroups v1 are mounted
        topo = TOPOLOGIES[topology](n=n, bw=None, hprefix=f"{PREFIX}h", sprefix=f"{PREFIX}s")
        self.net = Mininet(topo=topo, switch=LinuxBridge, controller=None, link=Link, host=CPULimitedHost,
                           ipBase="10.0.0.0/24", autoSetMacs=True, autoStaticArp=False, build=False,
                           waitConnected=False)
        try:
            if idle_poll:
                self.poll.open()
            self.net.build()
            self.hosts = [self.net.get(f"{PREFIX}h{i}") for i in range(1, n + 1)]
            self._save_state()
            per_host = list(cores) if isinstance(cores, (list, tuple)) else [cores] * n
            for i, (h, c) in enumerate(zip(self.hosts, per_host)):
                h.period_us = int(period_us)  # CPULimitedHost's CFS period (its quota = period x fraction x cores)
                h.setCPUFrac(c / (os.cpu_count() or 1))
                if cpus is not None:
                    pin_host(h, cpus)
                elif spread:
                    pin_host(h, str(spread[i]))
            self.net.start()
            if self.ticker is not None:
                try:
                    self.ticker.start()
                except RuntimeError as exc:
                    raise RunFailed(f"device.tick_us={tick_us}: {exc}; set device.tick_us=0 to run without it") \
                        from None
                self._save_state()  # a SIGKILLed controller's ticker is stopped by the next run
            if topology == "mesh":
                configure_mesh(self.net, self.hosts)
            for h in self.hosts:
                h.cmd("sysctl -qw net.ipv4.tcp_congestion_control=reno net.ipv4.tcp_slow_start_after_idle=0")
            self.shaped = self._shaped_interfaces()
            if not net.offloads:
                # Segmentation offloads make the interface counters see 64 kB super-packets with one header:
                # with them off, tx_bytes (wire_bytes) counts every frame's headers, as a real NIC would.
                for node, intf, _ in self.shaped:
                    node.cmd(f"ethtool -K {intf} tso off gso off gro off")
            self.apply(net, bandwidths(net, n), first=True)
            self.loss_pct = float(net.loss_pct or 0)
            if self.loss_pct:
                for r in range(n):
                    drop_packets(self.hosts[r], self.host_ifaces(r), self.loss_pct, workdir)
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
                    raise RunFailed(f"rank {w.rank} did not start within 120 s: {w.ended()}") from None
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
        if self.ticker is not None and self.ticker.running:
            pids.append(self.ticker.proc.pid)
        save_state(pids)

    def apply(self, net: MininetOptions, bw: list[float], first: bool = False) -> None:
        """Shape (first time) or re-shape (live, ``_change_all``) every link direction; netem impairments only where
        supported."""
        if not first:
            if bw != self.bw:
                self._change_all(bw)
                self.bw = bw
            return
        for node, intf, host_idx in self.shaped:
            for cmd in htb_commands(intf, bw[host_idx], self.burst_ms, "add", self.stock):
                errors = [ln for ln in node.cmd(cmd).splitlines() if ln.strip() and not ln.startswith("Warning")]
                if errors:
                    raise RunFailed(f"shaping {intf} failed: {errors[0]}")
            nc = netem_command(intf, net)
            if nc:
                out = node.cmd(nc)
                if out.strip():
                    raise RunFailed(f"netem on {intf} failed: {out.strip().splitlines()[0]}")
        self.bw = bw

    def _change_all(self, bw: list[float]) -> None:
        """A live change of every link's rate, all namespaces at once: one ``tc -batch`` process per namespace
        (``nsenter`` into each host's), started together, so the links change within one process start-up of
        each other rather than one shell round trip per interface in turn (measured: benchmarks/trace_change.py)."""
        by_node: dict = {}
        for node, intf, host_idx in self.shaped:
            cmds = htb_commands(intf, bw[host_idx], self.burst_ms, "change", self.stock)
            by_node.setdefault(node, []).extend(c.removeprefix("tc ") for c in cmds)
        procs = []
        for node, cmds in by_node.items():
            enter = ["nsenter", f"--net=/proc/{node.pid}/ns/net"] if node.inNamespace else []
            p = subprocess.Popen([*enter, "tc", "-batch", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
            p.stdin.write("\n".join(cmds) + "\n")
            p.stdin.close()
            procs.append((node, p))
        failed = []
        for node, p in procs:  # ours, by handle
            try:
                err = p.stderr.read()
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                err = "timed out"
            if p.returncode:
                failed.append(f"{node.name}: {err.strip().splitlines()[0] if err.strip() else p.returncode}")
        if failed:
            raise RunFailed(f"changing the link rates failed on {failed[0]}")

    def host_ifaces(self, rank: int) -> list[str]:
        return [i.name for i in self.hosts[rank].intfList() if i.name != "lo"]

    def run(self, spec, port: int | None, ranks: int | None = None, follower: "TraceFollower | None" = None
            ) -> list[dict]:
        """Send the point to every worker (or to the first ``ranks``), supervise the answers, return the reports.
        ``follower`` changes the links on a trace's schedule while the jobs run (stopped before anything else
        touches the hosts' shells)."""
        self._check_ticker()
        self.jobs += 1
        port = port or 29500 + (self.jobs % 2000)
        job_dir = self.workdir / f"job{self.jobs}"
        job_dir.mkdir()
        workers = self.workers[:ranks or self.n]
        world = len(workers)
        self.throttled_before = [host_throttled_s(h.name) for h in self.hosts]
        self.dropped_before = self.dropped()
        for r, w in enumerate(workers):
            path = atomic_write(job_dir / f"spec{r}.json", spec.replace(wire_ifaces=self.host_ifaces(r)).to_json())
            w.send({"spec": str(path), "report": str(job_dir / f"rank{r}.json"),
                    "env": {"MASTER_ADDR": self.hosts[0].IP(), "MASTER_PORT": port, "RANK": r, "WORLD_SIZE": world}})
        if follower is not None:
            follower.start()
        try:
            supervise([JobHandle(w) for w in workers], spec.timeout_s)
        finally:
            if follower is not None:
                follower.stop()
        self._check_ticker()  # it must have run for the whole point, not only at its start
        self.throttled_after = [host_throttled_s(h.name) for h in self.hosts]
        self.dropped_after = self.dropped()
        return [json.loads((job_dir / f"rank{r}.json").read_text()) for r in range(world)]

    def _check_ticker(self) -> None:
        if self.ticker is not None and not self.ticker.running:  # e.g. killed from outside: never time without it
            raise RunFailed(f"the device.tick_us={self.ticker.interval_us} ticker (cyclictest) is no longer running: "
                            "rerun the point, or set device.tick_us=0")

    def throttled_per_inference_ms(self, inferences: int) -> float | None:
        """The most any host's CPU cgroup was throttled during the last job, per inference it ran (warm-up,
        repeats, solo runs, verification): the ranks cannot read their host's cgroup from inside it, so we read it
        here."""
        pairs = list(zip(self.throttled_before, self.throttled_after))
        if not pairs or any(a is None or b is None for a, b in pairs):
            return None
        return 1e3 * max(b - a for a, b in pairs) / max(1, inferences)

    def dropped(self) -> int | None:
        """Packets the loss rules of all hosts have dropped so far (None without ``network.loss_pct``)."""
        return sum(dropped_packets(h) for h in self.hosts) if self.loss_pct else None

    def dropped_per_inference(self, inferences: int) -> float | None:
        if self.dropped_before is None or self.dropped_after is None:
            return None
        return (self.dropped_after - self.dropped_before) / max(1, inferences)

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
            try:
                self.poll.close()
            finally:
                if self.ticker is not None:
                    self.ticker.close()
            cleanup_leftovers()
            shutil.rmtree(self.workdir, ignore_errors=True)  # specs, reports, logs: a failure's message quotes its log
        return time.perf_counter() - t0


class TraceFollower(threading.Thread):
    """Changes every link's HTB rate on a trace's schedule: waits for rank 0 to write the stream's start
    (CLOCK_MONOTONIC), then applies step i at start + k·t_i with ``tc class change`` (rates ÷ k). ``applied`` holds
    (t_i, seconds from its due time until every link had changed, seconds the change took) per step; an error
    ends the point after the jobs."""

    def __init__(self, session: Session, net, trace, k: float, start_file: Path, duration_s: float):
        super().__init__(daemon=True)
        self.session, self.net, self.trace, self.k = session, net, trace, k
        self.start_file, self.duration_s = Path(start_file), duration_s
        self.done = threading.Event()
        self.applied: list[tuple[float, float, float]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.start_file.is_file():
                if self.done.wait(0.002):
                    return
            t0 = float(self.start_file.read_text())
            for t, rates in self.trace.changes(self.duration_s):
                due = t0 + self.k * t
                if self.done.wait(max(0.0, due - time.monotonic())):
                    return
                began = time.monotonic()
                self.session.apply(self.net, [r / self.k for r in rates])
                done = time.monotonic()
                self.applied.append((t, done - due, done - began))  # due -> every link changed
        except BaseException as exc:  # noqa: BLE001 - handed to the controller's thread in stop()
            self.error = exc

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=30)
        if self.error is not None:
            raise RunFailed(f"changing the links on the trace failed: {self.error}")


_SESSION: Session | None = None


def close_session() -> float | None:
    global _SESSION
    took = None
    if _SESSION is not None:
        s, _SESSION = _SESSION, None
        took = s.close()
    release_lock()
    return took


atexit.register(close_session)


@register
class MininetBackend(Backend):
    name = "mininet"
    Options = MininetOptions
    uses_topology = True
    enforces_cores = True

    @classmethod
    def identity(cls, spec) -> dict:
        ident = super().identity(spec)
        trace = ident.get("trace")
        if not trace:  # no trace: its knobs do not matter (and points stored before them keep their keys)
            for k in ("trace", "trace_states", "trace_step_s"):
                ident.pop(k, None)
        elif trace != "markov":  # a CSV trace is its content, wherever the file lies
            import hashlib

            try:
                ident["trace"] = {"csv": hashlib.sha256(Path(trace).read_bytes()).hexdigest()[:16]}
            except OSError:
                ident["trace"] = {"csv": str(trace)}
            ident.pop("trace_states")
            ident.pop("trace_step_s")
        for k in ("port", "reuse"):  # how the session is run, not what is measured
            ident.pop(k)
        return ident

    def __init__(self, spec):
        net = spec.network
        self.bw = bandwidths(net, spec.devices)
        if net.loss_pct is not None and net.loss_pct >= 100:
            raise ConfigError(f"network.loss_pct={net.loss_pct:g} would drop every packet: use a loss in [0, 100)")
        if net.loss_pct and not shutil.which("nft"):
            raise ConfigError("network.loss_pct needs nftables (nft): apt-get install nftables (scripts/setup.sh "
                              "does), or remove the option")
        impaired = {k: getattr(net, k) for k in ("delay_ms", "max_queue") if getattr(net, k) not in (None, 0)}
        if impaired and not netem_available():
            names = ", ".join(f"network.{k}={v}" for k, v in impaired.items())
            raise ConfigError(f"{names} needs the netem qdisc, which this kernel does not have: remove the option(s) "
                              "(a link must never come up different from its config) or use network=analytic")
        if net.trace and not spec.stream_s:
            raise ConfigError(f"network.trace={net.trace} changes the links during a request stream: set "
                              "stream_s=<seconds> (e.g. stream_s=60)")
        self.trace = build_trace(net, spec.devices, spec.stream_s or 0.0, spec.seed, MAX_BW) if net.trace else None
        # every rate the links will be shaped at (÷ k), which HTB must handle
        self.link_rates = self.trace.all_rates() if self.trace is not None else self.bw
        if self.trace is not None:
            self.bw = mean_rates(self.trace, spec.stream_s)  # the row's bandwidth: each host's mean over the stream
        if spec.dilation is not None and spec.method_class.communicates:
            check_links(spec.dilation, self.link_rates)
        check_environment()
        super().__init__(spec)
        self.setup_s = 0.0

    def bandwidths(self) -> list[float]:
        return self.bw

    def run(self, spec, workdir: Path) -> Result:
        global _SESSION
        acquire_lock()
        net, dev = spec.network, spec.device
        # everything the session fixes when it is built: a change of any of it builds a new one
        quotas = tuple(round(q, 6) for q in spec.quotas) if spec.quotas else round(spec.quota_cores, 6)
        pinned = dilation.pinned_cpus(dev)
        key = (spec.topology.name, spec.devices, quotas, int(dev.threads), dev.cfs_period_us,
               pinned and pinned[0], tuple(spec.cores_of_ranks or ()), spec.idle_poll, spec.tick_us, net.htb_burst_ms,
               net.htb_stock, net.offloads, net.delay_ms or None, net.loss_pct or None, net.max_queue or None)
        self.setup_s = 0.0
        if _SESSION is not None and (_SESSION.key != key or not net.reuse):
            close_session()
            acquire_lock()
        if _SESSION is None:
            sess_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"astra-mininet-{os.getpid()}-{time.monotonic_ns()}"
            sess_dir.mkdir(parents=True)
            _SESSION = Session(key[0], spec.devices, list(spec.quotas) or spec.quota_cores, key[3], net, sess_dir,
                               period_us=dev.cfs_period_us, key=key, cpus=pinned and pinned[0],
                               idle_poll=spec.idle_poll, spread=spec.cores_of_ranks, tick_us=spec.tick_us)
            self.setup_s = _SESSION.setup_s
        measured: dict = {}
        try:
            k = spec.dilation
            if k is None:  # reference mode: k from this device's measured single-device latency
                single_ms = reference_single_ms(_SESSION, spec)
                k = single_ms / spec.device.reference_ms
                measured = {"dilation": k, "reference_single_real_ms": single_ms}
                if spec.method_class.communicates:
                    check_links(k, self.link_rates)
            follow = self.trace is not None and spec.method_class.communicates
            links = [b / k for b in (self.trace.rates[0] if follow else self.bw)]
            _SESSION.apply(net, links)
            follower = None
            if spec.stream_s:
                start = _SESSION.workdir / f"stream{_SESSION.jobs + 1}.start"
                spec = spec.replace(stream_real_s=spec.stream_s * k, stream_start_file=str(start))
                if follow:
                    follower = TraceFollower(_SESSION, net, self.trace, k, start, spec.stream_s)
            reports = _SESSION.run(spec, net.port, follower=follower)
        except BaseException:
            close_session()  # a failed or interrupted point leaves nothing behind
            raise
        r0 = reports[0]
        inferences = r0.get("warmups", 0) + len(r0["latency_s"]) + spec.verify
        throttled = _SESSION.throttled_per_inference_ms(inferences)
        dropped = _SESSION.dropped_per_inference(inferences)
        if not net.reuse:
            close_session()
        measured.update({"setup_s": round(self.setup_s, 3), "throttled_ms": throttled, "dropped_packets": dropped,
                         "link_real_mbps": min(links) if spec.method_class.communicates else None})
        if follower is not None:
            measured.update({"trace": self.trace.name, "trace_changes": len(follower.applied),
                             "trace_lag_ms": max((1e3 * lag for _, lag, _ in follower.applied), default=None)})
            # the links changed under the collectives: no single shaped rate to hold goodput against
            return Result(reports, measured, None, self.trace)
        return Result(reports, measured, links if spec.method_class.communicates else None)


_REFERENCE: dict[str, float] = {}  # single-device real latency (ms) on a quota, per model/input/quota


def reference_single_ms(session: Session, spec) -> float:
    """The real single-device latency of ``spec``'s model and inputs on one host of ``session`` (its quota), in
    ms: median of 3 timed inferences after one warm-up. Measured once per model, inputs and quota."""
    from ..parallel import METHODS
    from ..spec import FaultOptions

    single = next(n for n, cls in METHODS.items() if cls.is_baseline)
    calib = spec.replace(method=METHODS[single].Options(name=single), devices=1, warmup=1, repeats=3, verify=False,
                         budget_s=None, solo_repeats=0, fault=FaultOptions(), outputs_dir=None, dilation=1.0,
                         stream_s=None)
    key = json.dumps([spec.model.to_dict(), spec.tokens, spec.batch, spec.seed, spec.device.threads,
                      round(spec.quota_cores, 6), spec.device.cfs_period_us, spec.device.pin_cores, spec.idle_poll,
                      spec.tick_us,
                      spec.model_state,
                      spec.inputs_path],
                     sort_keys=True, default=str)
    if key not in _REFERENCE:
        rep = session.run(calib, spec.network.port, ranks=1)[0]
        _REFERENCE[key] = 1e3 * sorted(rep["latency_s"])[1]
    return _REFERENCE[key]
