"""The backend interface and registry. A backend runs one point's ranks where its devices live (loopback, Mininet
hosts, or nowhere but a cost model) and returns their reports plus its own measurements; it refuses, before
anything starts, every setting it cannot honour. Adding a backend is one file here plus ``conf/network/<name>.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.options import bandwidth_columns, opt, parse_bandwidths

BACKENDS: dict[str, type["Backend"]] = {}


def register(cls: type["Backend"]) -> type["Backend"]:
    """Class decorator: make a backend available as ``network=<cls.name>``."""
    BACKENDS[cls.name] = cls
    return cls


@dataclass
class NetworkOptions:
    """Options every backend has. A backend with knobs subclasses this."""

    name: str = opt("loopback", "the backend (a file in harness/network/, a config in conf/network/)")


@dataclass
class Result:
    """What a backend returns for a point: one report per rank (``worker.run_rank``) and the backend's own
    measurements as row columns (e.g. Mininet's set-up time)."""

    reports: list[dict]
    measured: dict = field(default_factory=dict)
    links_mbps: list[float] | None = None  # the real (shaped, dilated) rate of each device's link, if shaped
    trace: object | None = None  # the bandwidth trace the links followed (harness.network.trace.Trace), if any


def cpu_budget(spec, enforced_cores: bool) -> dict:
    """``cpu_per_device`` (virtual cores), ``cpu_real_per_device`` and ``oversubscribed`` for the row. With
    ``enforced_cores`` (CPU quotas) a device gets ``spec.quota_cores`` real cores (``device.cores`` / k) and devices
    that do not fit are refused (``harness.dilation.check_fit``); otherwise the budget is the thread count and
    oversubscription is only warned about."""
    n, dev = spec.devices, spec.device
    if dev.compute == "replay":  # replayed devices sleep through their compute: no CPU budget to hold them to
        return {"cpu_per_device": None, "cpu_real_per_device": None, "oversubscribed": False}
    if enforced_cores:
        from harness.emulation.dilation import check_fit, cores_of

        return check_fit(dev, n, cores_of(dev, n, strict=False)[0] / spec.quota_cores)
    per = float(dev.threads)
    return {"cpu_per_device": per, "cpu_real_per_device": per, "oversubscribed": n * per > (os.cpu_count() or 1)}


class Backend:
    name = "base"
    Options: type = NetworkOptions
    uses_topology = False  # whether topology= changes what this backend measures
    enforces_cores = False  # whether device.cores is a real CPU quota (else the budget is device.threads)
    emulates = True  # whether ranks really run and communicate (else there is no emulation to give a verdict on)
    runs_ranks = True  # whether this point runs the method's ranks at all (else nothing needs preparing)
    launched_outside = False  # whether the ranks are started by another launcher (torchrun: astra-device)

    def __init__(self, spec):
        """Check ``spec`` against what this backend can honour (ConfigError, one line); start nothing."""
        self.spec = spec
        self.budget = cpu_budget(spec, self.enforces_cores)

    @classmethod
    def identity(cls, spec) -> dict:
        """The network options that change what a point measures, normalised: a bandwidth as one number per device
        (``100``, ``100.0`` and ``[100, 100]`` are one point), an unset impairment as None (0 = unset)."""
        ident = dataclasses.asdict(spec.network)
        if "bandwidth_mbps" in ident:
            ident["bandwidth_mbps"] = device_bandwidths(ident["bandwidth_mbps"], spec.devices)
        for k in ("delay_ms", "loss_pct", "max_queue"):
            if k in ident and not ident[k]:
                ident[k] = None
        return ident

    @classmethod
    def identity_alone(cls, spec) -> dict:
        """The network options that change what a one-device point measures (no links: by default only which
        backend ran it)."""
        return {"name": spec.network.name}

    def bandwidths(self) -> list[float] | None:
        """Per-device link rate in Mbit/s, or None for an unshaped network."""
        return None

    def describe(self) -> dict:
        """Row columns describing the network and the CPU budget."""
        return {"network": self.name, **bandwidth_columns(self.bandwidths(), self.spec.devices),
                "topology": self.spec.topology.name if self.uses_topology else None, **self.budget}

    def run(self, spec, workdir: Path) -> Result:
        raise NotImplementedError


def device_bandwidths(value, devices: int, max_mbps: float | None = None, why: str = "") -> list[float]:
    """``network.bandwidth_mbps`` as one rate per device. One device (``single``, whatever ``devices`` says) sends
    nothing, so a per-device list of the sweep's other points gives it its first rate."""
    if devices <= 1 and isinstance(value, (list, tuple)) and value:
        value = value[0]
    return parse_bandwidths(value, max(1, devices), max_mbps, why)


@dataclass
class ShapedOptions(NetworkOptions):
    bandwidth_mbps: Any = opt(100, "per-device link rate in Mbit/s (10^6 bit/s); a list gives one per device",
                              kind="bandwidth")
