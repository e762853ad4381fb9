"""A Mininet session: the hosts (``CPULimitedHost``, each a device's CPU budget, pinned or spread over cores), the
links and their HTB shaping, the ticker and idle polling that keep devices faithful, and one persistent worker per
host that runs point after point (the pipe protocol: ``Worker``, ``JobHandle``).

``with Session(...) as s:`` tears everything down on leaving; the backend instead keeps one session up across the
points of a sweep (``current``/``keep``/``close_session``), torn down at exit or when a point needs another one."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.emulation import dilation, idle, tick
from harness.errors import ConfigError, RunFailed, atomic_write
from harness.launch import REPO_ROOT, describe_exit, rank_env, supervise
from harness.network.base import ShapedOptions, device_bandwidths
from harness.network.mininet.conditions import TraceFollower, drop_packets, dropped_packets
from harness.network.mininet.host_state import PREFIX, acquire_lock, cleanup_leftovers, release_lock, save_state
from harness.network.mininet.shaping import htb_commands, leaves, netem_commands
from harness.options import opt

MAX_BW = 1000.0
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")  # cgroup v1 cpu controller, where CPULimitedHost puts each host


def leave_host_cgroup(pid: int) -> None:
    """Move a process (all its threads) from its host's CPU cgroup, whose real-time budget is 0, to the root one,
    and check that it is there."""
    (CGROUP_CPU / "cgroup.procs").write_text(str(pid))
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctls, path = line.split(":", 2)
        if "cpu" in ctls.split(",") and path != "/":
            raise RunFailed(f"could not move rank process {pid} out of its host's CPU cgroup ({path}): "
                            "real-time replay needs it; run with device.replay_sched=other")


def host_throttled_s(host: str) -> float | None:
    """Seconds the host's CPU cgroup has been throttled by its CFS quota so far (None if unreadable)."""
    from harness.emulation.cpustat import throttled_seconds

    return throttled_seconds(CGROUP_CPU / host / "cpu.stat")


@dataclass
class MininetOptions(ShapedOptions):
    name: str = opt("mininet", "the backend")
    htb_burst_ms: float = opt(10.0, "HTB burst = cburst = max(2 frames, rate x this)", above=0, hi=1000)
    htb_stock: bool = opt(False, "shape like stock Mininet's TCLink (fixed 15 kB burst), for comparison only")
    htb_ack_class: bool = opt(True, "small packets (pure TCP ACKs, handshakes) in a priority HTB class ahead of "
                              "data, as a host's per-flow queue sends them; false: one FIFO per link direction "
                              "(htb_stock has one FIFO)")
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


def bandwidths(net, n: int) -> list[float]:
    return device_bandwidths(net.bandwidth_mbps, n, MAX_BW, ", the range HTB shaping handles here")


# ----------------------------------------------------------------------------------------------------- the session
class Worker:
    """One persistent worker process in a host, with a thread turning its stdout lines into a queue."""

    def __init__(self, host, rank: int, env: dict, log: Path):
        self.host, self.rank, self.log = host, rank, log
        self.lines: queue.Queue = queue.Queue()
        with open(log, "ab") as fh:
            self.proc = host.popen(
                [sys.executable, "-m", "harness.rank.worker", "--serve"],
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
                 tick_us: int = 0, realtime: bool = False):
        """``cores``: each host's real CPU quota in cores (``device.cores`` / k), or one per host. ``cpus``: a
        cpuset every host is pinned to (``device.pin_cores``), or None. ``idle_poll``: hold the CPUs in the polling
        idle state for the session's life (``harness.idle``). ``spread``: the core each host is pinned to
        (``device.spread``), or None. ``tick_us``: run a ticker on the hosts' cores at this interval for the
        session's life (``harness.tick``), 0: none. ``realtime``: the ranks may run SCHED_FIFO (a replay with
        ``device.replay_sched=fifo``): their workers leave their hosts' CPU cgroups, whose real-time budget is
        zero, for the root's (replayed devices have no CPU quota to keep; the cpuset and cpuacct groups stay)."""
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
        self.ack_class = bool(net.htb_ack_class)
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
            if realtime:
                # Only once a worker said it is ready: mnexec attaches itself to its host's cgroup as it starts,
                # and a move made before that would be undone.
                for w in self.workers:
                    leave_host_cgroup(w.proc.pid)
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
            for cmd in htb_commands(intf, bw[host_idx], self.burst_ms, "add", self.stock, self.ack_class):
                errors = [ln for ln in node.cmd(cmd).splitlines() if ln.strip() and not ln.startswith("Warning")]
                if errors:
                    raise RunFailed(f"shaping {intf} failed: {errors[0]}")
            for nc in netem_commands(intf, net, leaves(self.stock, self.ack_class)):
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
            cmds = htb_commands(intf, bw[host_idx], self.burst_ms, "change", self.stock, self.ack_class)
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

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        self.teardown_s = time.perf_counter() - t0
        return self.teardown_s


@contextmanager
def open_session(*args, **kwargs):
    """A session of one's own (calibration, benchmarks): Mininet's tools checked, the machine's lock held, the
    session built with ``Session``'s arguments, and everything torn down and the lock released on leaving."""
    check_environment()
    acquire_lock()
    try:
        with Session(*args, **kwargs) as session:
            yield session
    finally:
        release_lock()


_SESSION: Session | None = None  # the session kept up across the points of a sweep (network.reuse)


def current(key) -> Session | None:
    """The kept session if it was built for ``key`` (None: never reuse); a session built for another key is closed
    first (and the machine's lock taken again for the next one)."""
    if _SESSION is not None and _SESSION.key != key:
        close_session()
        acquire_lock()
    return _SESSION


def keep(session: Session) -> Session:
    """Keep ``session`` up for the next points (``current``), until ``close_session``."""
    global _SESSION
    _SESSION = session
    return session


def close_session() -> float | None:
    global _SESSION
    took = None
    if _SESSION is not None:
        s, _SESSION = _SESSION, None
        took = s.close()
    release_lock()
    return took
