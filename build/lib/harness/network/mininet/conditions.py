"""Network conditions on a Mininet session: packet loss as nftables rules inside each host's namespace (netem does
not exist on every kernel; ``netem_available`` says), and ``TraceFollower``, which changes every link's rate live on
a bandwidth trace's schedule."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

from harness.errors import RunFailed

_NETEM: bool | None = None


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc, tried in a throwaway network namespace (nothing is left behind)."""
    global _NETEM
    if _NETEM is None:
        r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up && tc qdisc add dev lo root netem delay 1ms"],
                           capture_output=True, text=True)
        _NETEM = r.returncode == 0
    return _NETEM


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


class TraceFollower(threading.Thread):
    """Changes every link's HTB rate on a trace's schedule: waits for rank 0 to write the stream's start
    (CLOCK_MONOTONIC), then applies step i at start + k·t_i with ``tc class change`` (rates ÷ k). ``applied`` holds
    (t_i, seconds from its due time until every link had changed, seconds the change took) per step; an error
    ends the point after the jobs."""

    def __init__(self, session, net, trace, k: float, start_file: Path, duration_s: float):
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
