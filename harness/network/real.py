"""``network=real``: real devices joined by a real network. The ranks are not started by astra-bench but by
``torchrun`` (or any launcher that sets the env:// variables) on each device, running ``astra-device`` with the
point's overrides (``harness.device``); rank 0 collects the reports into the usual row.

With ``bandwidth_mbps`` set, every rank shapes its own interface (``iface``; by default the one that routes to
MASTER_ADDR) with the HTB classes the Mininet backend uses, for the length of the point, and restores the interface's
default queueing afterwards. Shaping needs root (CAP_NET_ADMIN) on every device and shapes what the device sends:
each direction of a link is shaped by its sender, as on Mininet.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Any

from harness.errors import ConfigError
from harness.network.base import Backend, NetworkOptions, device_bandwidths, register
from harness.network.mininet.shaping import htb_commands
from harness.options import opt

# root qdiscs a machine has by default: replacing them loses nothing, and deleting ours brings them back
DEFAULT_QDISCS = {"noqueue", "pfifo_fast", "fq_codel", "mq", "fq", "pfifo", "cake"}


@dataclass
class RealOptions(NetworkOptions):
    name: str = opt("real", "the backend")
    bandwidth_mbps: Any | None = opt(None, "shape every device's interface to this rate (Mbit/s; a list: one per "
                                     "device) with HTB for the point; null: the network as it is", kind="bandwidth")
    iface: str | None = opt(None, "the interface to shape and whose bytes count as the wire (default: the one that "
                            "routes to MASTER_ADDR)")
    htb_burst_ms: float = opt(10.0, "HTB burst = cburst = max(2 frames, rate x this)", above=0, hi=1000)
    htb_ack_class: bool = opt(True, "small IPv4 TCP packets (pure ACKs, handshakes) in a priority HTB class ahead "
                              "of data, as a host's per-flow queue sends them; false: one FIFO")


@register
class RealBackend(Backend):
    name = "real"
    Options = RealOptions
    launched_outside = True  # torchrun starts the ranks (astra-device), not astra-bench
    emulates = False  # nothing is emulated: no fidelity verdict to give

    @classmethod
    def identity(cls, spec) -> dict:
        bw = spec.network.bandwidth_mbps
        return {"name": cls.name, "bandwidth_mbps": None if bw is None else device_bandwidths(bw, spec.devices)}

    def __init__(self, spec):
        super().__init__(spec)
        bw = spec.network.bandwidth_mbps
        self.bw = None if bw is None else device_bandwidths(bw, spec.devices, 10000.0, ", the range HTB shapes")
        if spec.stream_s:
            raise ConfigError("network=real runs repeats, not request streams: unset stream_s")

    def bandwidths(self) -> list[float] | None:
        return self.bw


def route_iface(addr: str) -> str:
    """The interface this machine uses to reach ``addr`` (``ip route get``)."""
    try:
        out = subprocess.run(["ip", "-o", "route", "get", addr], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ConfigError(f"cannot tell which interface reaches MASTER_ADDR={addr} ({exc}): set network.iface") from None
    m = re.search(r"\bdev (\S+)", out)
    if not m:
        raise ConfigError(f"cannot tell which interface reaches MASTER_ADDR={addr}: set network.iface")
    return m.group(1)


def _tc(*args: str) -> str:
    r = subprocess.run(["tc", *args], capture_output=True, text=True)
    if r.returncode:
        raise ConfigError(f"`tc {' '.join(args)}` failed ({(r.stderr or r.stdout).strip()}): shaping a real "
                          "interface needs root and tc (iproute2)")
    return r.stdout


class Shaper:
    """HTB on this device's interface for the length of a point; the interface's default queueing back after,
    also when the point fails. An interface that already has queueing of its own is refused, never replaced."""

    def __init__(self, iface: str, mbps: float, burst_ms: float, ack_class: bool = True):
        self.iface, self.mbps, self.burst_ms, self.ack_class, self.active = iface, mbps, burst_ms, ack_class, False

    def __enter__(self) -> "Shaper":
        root = re.search(r"qdisc (\S+) (\S+) root", _tc("qdisc", "show", "dev", self.iface))
        if root and root.group(1) not in DEFAULT_QDISCS:
            raise ConfigError(f"interface {self.iface} already has a {root.group(1)} root qdisc (handle "
                              f"{root.group(2)}), not one of this machine's defaults: remove it or shape another "
                              "interface (network.iface)")
        self.active = True
        try:
            for cmd in htb_commands(self.iface, self.mbps, self.burst_ms, ack_class=self.ack_class):
                _tc(*cmd.split()[1:])
        except BaseException:  # a command failing midway (a kernel without u32, say) leaves nothing behind
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            self.active = False
            subprocess.run(["tc", "qdisc", "del", "dev", self.iface, "root"], capture_output=True)
