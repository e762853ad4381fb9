"""Time dilation: emulating devices and links faster than this machine can give them in real time.

An emulated device of ``device.cores`` virtual cores runs on ``cores / k`` real cores (its Mininet host's CFS quota)
and every link of ``B`` Mbit/s is shaped at ``B / k``. Compute then takes k times longer in real time, and so does
every transfer, so the ratio of compute to communication — what decides which method wins — is that of the
emulated system; every reported time is real time ÷ k (the rows keep the real figures and k). This is the
time-warp idea of Gupta et al. ("To Infinity and Beyond: Time-Warped Network Emulation", NSDI 2006) and DieCast
(NSDI 2008), done here with CPU quotas and link rates instead of a virtual clock.

How k is chosen (``device.dilation``):
- ``auto`` (default): the smallest k >= 1 at which the devices fit the machine: devices x cores / k <= machine cores
  - ``device.reserve_cores`` (the reserve is left to the kernel's bridging and shaping and to the controller), or
  <= ``device.pin_cores`` when the devices are pinned to that many cores (the others are then the reserve).
  k depends on the *configured* device count, so the single-device baseline of a 4-device point runs on the same
  real quota as each of its devices.
- a number: that k (refused when the devices would not fit, unless ``device.allow_oversubscribe``).
- ``device.reference_ms``: k = the measured single-device latency on the auto quota ÷ reference_ms, so the emulated
  device has the reference device's speed for this model and token count (for example the paper's ~111.5 ms for
  ViT-Base at 1024 tokens); measured once per Mininet session.

What dilation does not scale: the kernel's own work (TCP/IP processing, bridging and HTB run outside the hosts'
quotas, so they are k times cheaper in emulated time than on the device), kernel timers (delayed ACKs, the 200 ms
minimum retransmission timeout), and HTB's burst, which is in real milliseconds. None of these matter while a
point moves bulk data at the shaped rate; they can for many tiny messages at a large k.
"""

from __future__ import annotations

import json
import os

from harness.errors import ConfigError

MIN_LINK_MBPS = 0.2  # astra-calibrate here: HTB + TCP goodput is 0.959 of the configured rate at 0.2 Mbit/s (and at
# 0.1, one flow); but bp_ag's 3-flow all-gathers at 0.107 Mbit/s took 1.5x their wire time against 1.13-1.16x at
# 1.1-5.5 Mbit/s (a 1500-byte packet takes 112 ms there: TCP's timers do not dilate), so 0.2 stays the floor
MAX_LINK_MBPS = 1000.0
MIN_QUOTA_US = 1000  # the kernel's smallest CFS quota per period


def machine_cores() -> int:
    return os.cpu_count() or 1


def cores_of(dev, devices: int, strict: bool = True) -> list[float]:
    """``device.cores`` as one value per device: a number (every device) or a list of ``devices`` (heterogeneous
    devices, in rank order; the single-device baseline runs on the first). ``strict=False``: a point that runs on
    fewer devices than configured (the single baseline) takes the first ones."""
    raw = dev.cores
    vals = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if not strict and len(vals) > devices:
        vals = vals[:devices]
    if len(vals) not in (1, devices):
        raise ConfigError(f"device.cores lists {len(vals)} values for {devices} devices: give one or {devices}")
    out = []
    for v in vals:
        try:
            c = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"device.cores={v} is not a number: use virtual cores > 0") from None
        if not c > 0 or c != c or c == float("inf"):
            raise ConfigError(f"device.cores={v} must be a number of virtual cores > 0")
        out.append(c)
    return out * devices if len(out) == 1 else out


def factor(dev, devices: int, enforced: bool, cores: int | None = None) -> float | None:
    """k for a point configured with ``devices`` devices of ``dev`` (None: measured at run time, reference mode).
    ``enforced``: whether the backend holds devices to CPU quotas (only then can it dilate)."""
    cores = machine_cores() if cores is None else cores
    per = cores_of(dev, devices)
    if not enforced:
        if len(set(per)) > 1:
            raise ConfigError(f"device.cores={list(per)} gives devices different speeds, which needs a backend that "
                              "holds devices to CPU quotas: use network=mininet, or one value for device.cores")
        if dev.dilation != "auto" and float(dev.dilation) != 1.0:
            raise ConfigError(f"device.dilation={dev.dilation:g} needs a backend that holds devices to CPU quotas "
                              "(network=mininet): remove it, or use network=mininet")
        if dev.reference_ms is not None:
            raise ConfigError(f"device.reference_ms={dev.reference_ms:g} needs network=mininet (it dilates time "
                              "there): remove it, or use network=mininet")
        if getattr(dev, "pin_cores", None) is not None:
            raise ConfigError(f"device.pin_cores={dev.pin_cores} pins Mininet hosts to cores: remove it, or use "
                              "network=mininet")
        return 1.0
    if dev.reference_ms is not None:
        if dev.dilation != "auto":
            raise ConfigError(f"device.reference_ms sets k from a measurement, device.dilation={dev.dilation:g} "
                              "sets it by hand: remove one of them")
        if len(set(per)) > 1:
            raise ConfigError("device.reference_ms emulates one reference device, device.cores lists different "
                              "speeds: remove one of them")
        room(dev, cores)
        return None
    if dev.dilation == "auto":
        return max(1.0, sum(per) / room(dev, cores))
    return float(dev.dilation)


def room(dev, cores: int) -> float:
    """The cores the devices may use together: the pinned ones (``device.pin_cores``), else the machine's minus the
    reserve."""
    pinned = pinned_cpus(dev, cores)
    if pinned is not None:
        return float(pinned[1])
    left = cores - dev.reserve_cores
    if left <= 0:
        raise ConfigError(f"device.reserve_cores={dev.reserve_cores:g} leaves none of this machine's {cores} cores "
                          "to the devices: lower it")
    return left


def pinned_cpus(dev, cores: int | None = None) -> tuple[str, int] | None:
    """``device.pin_cores`` as a cpuset (the machine's last cores, the first ones left to the kernel and the
    controller) and its size; None when devices are not pinned."""
    pin = getattr(dev, "pin_cores", None)
    if pin is None:
        return None
    cores = machine_cores() if cores is None else cores
    pin = int(pin)
    if not 1 <= pin <= cores:
        raise ConfigError(f"device.pin_cores={pin} is not between 1 and this machine's {cores} cores: lower it")
    first = cores - pin
    return (str(first) if pin == 1 else f"{first}-{cores - 1}"), pin


def cpuset_cpus(cpus: str | None) -> list[int]:
    """The CPUs of a cpuset string such as ``3``, ``2-3`` or ``0,2-3`` (``pinned_cpus``); None: every CPU this
    process may run on."""
    if cpus is None:
        return sorted(os.sched_getaffinity(0))
    out: list[int] = []
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def placement(quotas: list[float], cores: int) -> list[int] | None:
    """A core for every device (``device.spread``): the largest quota first, each onto the core with the most room
    left, so that no core holds more than it has. None when they cannot be packed (a device above one core, or
    more load than the cores hold)."""
    load = [0.0] * cores
    where = [0] * len(quotas)
    for i in sorted(range(len(quotas)), key=lambda i: -quotas[i]):
        c = min(range(cores), key=lambda c: (load[c], c))
        if load[c] + quotas[i] > 1.0 + 1e-9:
            return None
        load[c] += quotas[i]
        where[i] = c
    return where


def reference_quota(dev, devices: int, cores: int | None = None) -> float:
    """Real cores per device in reference mode: the auto fit, but never more than one device's virtual cores."""
    cores = machine_cores() if cores is None else cores
    return min(cores_of(dev, devices)[0], room(dev, cores) / devices)


def check_fit(dev, devices: int, k: float, cores: int | None = None) -> dict:
    """Refuse devices that cannot be emulated at k; return the row's CPU columns."""
    cores = machine_cores() if cores is None else cores
    virt = cores_of(dev, devices, strict=False)
    reals = [c / k for c in virt]
    per, total = min(reals), sum(reals)
    quota_us = per * dev.cfs_period_us
    if quota_us < MIN_QUOTA_US:
        need = MIN_QUOTA_US / per
        raise ConfigError(
            f"{devices} devices of {min(virt):g} cores cannot be emulated even dilated: at k={k:.3g} each gets "
            f"{per:.3g} real cores, a CFS quota of {quota_us:.0f} us per {dev.cfs_period_us} us period, below the "
            f"kernel's {MIN_QUOTA_US} us minimum: raise device.cfs_period_us to at least {int(need) + 1} or use "
            "fewer devices")
    pinned = pinned_cpus(dev, cores)
    avail = pinned[1] if pinned else cores
    over = total > avail + 1e-9
    if over and not dev.allow_oversubscribe:
        where = f"device.pin_cores={avail} gives them" if pinned else "this machine has"
        raise ConfigError(
            f"devices={devices} x device.cores={_cores_text(virt)} / k={k:.3g} need {total:.3g} cores but {where} "
            f"{avail}: use device.dilation=auto (or a k of at least {sum(virt) / avail:.3g}), "
            "fewer devices, or device.allow_oversubscribe=true (the row is then marked oversubscribed=true)")
    out = {"cpu_per_device": virt[0], "cpu_real_per_device": reals[0], "oversubscribed": over}
    if len(set(virt)) > 1:
        out["cores_per_device"] = json.dumps(virt)
    return out


def _cores_text(virt: list[float]) -> str:
    return f"{virt[0]:g}" if len(set(virt)) == 1 else "[" + ",".join(f"{c:g}" for c in virt) + "]"


def check_links(k: float, bandwidths: list[float]) -> list[float]:
    """The real (shaped) rate of every link at dilation k; refuse rates HTB cannot shape accurately here."""
    real = [b / k for b in bandwidths]
    if min(real) < MIN_LINK_MBPS:
        raise ConfigError(
            f"dilation k={k:.3g} would shape the {min(bandwidths):g} Mbit/s links at {min(real):.3g} Mbit/s, below "
            f"the {MIN_LINK_MBPS} Mbit/s down to which HTB shaping was measured accurate here: use a smaller k "
            "(fewer devices, a larger device.reference_ms) or faster links")
    if max(real) > MAX_LINK_MBPS:
        raise ConfigError(
            f"dilation k={k:.3g} would shape the {max(bandwidths):g} Mbit/s links at {max(real):.4g} Mbit/s, above "
            f"the {MAX_LINK_MBPS:g} Mbit/s HTB shapes here: use slower links or a smaller device.reference_ms")
    return real


def scale_row(row: dict, k: float) -> dict:
    """Report times of the emulated system: latency (and its interval), compute and communication ÷ k, keeping the
    real ones. CPU time, run-queue wait and throttled time stay real (they describe the host, and CPU time is not
    dilated)."""
    out = {"dilation": k}
    for col in ("latency_ms", "latency_p90_ms", "compute_ms", "comm_ms"):
        real = row.get(col)
        out[col.replace("_ms", "_real_ms")] = real
        out[col] = None if real is None else real / k
    for col in ("latency_ci_low_ms", "latency_ci_high_ms", "comm_hidden_ms"):  # emulated time, no *_real copy
        if row.get(col) is not None:
            out[col] = row[col] / k
    return out
