"""Time dilation (harness.emulation.dilation): the factor k, what fits and what is refused, times reported ÷ k, and
spreading devices over cores — no network needed."""

from __future__ import annotations

import pytest

from harness.emulation import dilation
from harness.errors import ConfigError
from harness.spec.schema import DeviceOptions


def dev(**kw) -> DeviceOptions:
    return DeviceOptions(**kw)


# ------------------------------------------------------------------------------------------------------ dilation
def test_auto_fits_devices_beside_the_reserve():
    d = dev(cores=1.0, reserve_cores=0.4)
    assert dilation.factor(d, 4, True, cores=2) == pytest.approx(4 / 1.6)
    assert dilation.factor(d, 8, True, cores=2) == pytest.approx(8 / 1.6)
    assert dilation.factor(d, 1, True, cores=2) == 1.0  # one device fits: no dilation
    assert dilation.factor(dev(cores=0.5, reserve_cores=0.4), 2, True, cores=2) == 1.0
    assert dilation.factor(d, 4, True, cores=16) == 1.0
    # whatever the machine, the devices' real quotas plus the reserve fit it
    for n in (2, 3, 4, 8):
        k = dilation.factor(d, n, True, cores=2)
        assert n * 1.0 / k <= 2 - 0.4 + 1e-9
        assert dilation.check_fit(d, n, k, cores=2)["oversubscribed"] is False


def test_fixed_and_reference_dilation():
    assert dilation.factor(dev(dilation=3.0), 2, True, cores=2) == 3.0
    assert dilation.factor(dev(reference_ms=111.5), 4, True, cores=2) is None  # measured at run time
    assert dilation.reference_quota(dev(reference_ms=111.5, reserve_cores=0.4), 4, cores=2) == pytest.approx(0.4)
    assert dilation.reference_quota(dev(reference_ms=111.5, reserve_cores=0.4), 1, cores=2) == 1.0


def test_pinned_devices_fit_their_cores():
    """device.pin_cores: the devices share the machine's last cores and auto k fits them there; the other cores
    are the reserve."""
    assert dilation.pinned_cpus(dev(), cores=2) is None
    assert dilation.pinned_cpus(dev(pin_cores=1), cores=2) == ("1", 1)
    assert dilation.pinned_cpus(dev(pin_cores=2), cores=8) == ("6-7", 2)
    d = dev(cores=1.0, pin_cores=1, reserve_cores=0.25)
    assert dilation.factor(d, 2, True, cores=2) == 2.0  # not 2 / 1.75: the reserve is the unpinned core
    assert dilation.factor(d, 4, True, cores=2) == 4.0
    assert dilation.factor(d, 1, True, cores=2) == 1.0
    assert dilation.factor(dev(cores=1.0, pin_cores=2), 4, True, cores=8) == 2.0
    assert dilation.check_fit(d, 4, 4.0, cores=2)["oversubscribed"] is False
    with pytest.raises(ConfigError, match="pin_cores=1 gives them 1"):  # 4 devices at k=2 need 2 cores, not 1
        dilation.check_fit(dev(cores=1.0, pin_cores=1, dilation=2.0), 4, 2.0, cores=2)
    assert dilation.reference_quota(dev(reference_ms=111.5, pin_cores=1), 4, cores=2) == 0.25


@pytest.mark.parametrize("kw, enforced, needle", [
    (dict(pin_cores=3), True, "pin_cores=3 is not between 1 and this machine's 2 cores"),
    (dict(pin_cores=1), False, "network=mininet"),
    (dict(dilation=2.0), False, "network=mininet"),
    (dict(reference_ms=100.0), False, "network=mininet"),
    (dict(reference_ms=100.0, dilation=2.0), True, "remove one"),
    (dict(reserve_cores=2.0), True, "reserve_cores"),
])
def test_dilation_refusals(kw, enforced, needle):
    with pytest.raises(ConfigError, match=needle):
        dilation.factor(dev(**kw), 4, enforced, cores=2)


def test_devices_that_cannot_fit_even_dilated():
    d = dev(cores=1.0, cfs_period_us=10000)
    with pytest.raises(ConfigError, match="minimum"):  # 32 devices: 0.05 core = 500 us per 10 ms period
        dilation.check_fit(d, 32, dilation.factor(d, 32, True, cores=2), cores=2)
    with pytest.raises(ConfigError, match="dilation=auto"):  # a hand-set k too small to fit
        dilation.check_fit(dev(dilation=1.0), 4, 1.0, cores=2)
    cols = dilation.check_fit(dev(dilation=1.0, allow_oversubscribe=True), 4, 1.0, cores=2)
    assert cols == {"cpu_per_device": 1.0, "cpu_real_per_device": 1.0, "oversubscribed": True}


def test_links_shaped_at_bandwidth_over_k_within_htb_range():
    assert dilation.check_links(2.5, [10.0, 100.0]) == [4.0, 40.0]
    with pytest.raises(ConfigError, match="HTB"):
        dilation.check_links(60, [10.0])  # 0.17 Mbit/s
    with pytest.raises(ConfigError, match="1000"):
        dilation.check_links(0.5, [1000.0])  # a reference device slower than ours compresses time


def test_reported_times_are_real_over_k():
    row = {"latency_ms": 250.0, "latency_p90_ms": 300.0, "compute_ms": 200.0, "comm_ms": 50.0, "cpu_ms": 190.0}
    out = dilation.scale_row(row, 2.5)
    assert out["latency_ms"] == 100.0 and out["latency_real_ms"] == 250.0
    assert out["compute_ms"] == 80.0 and out["comm_ms"] == 20.0 and out["latency_p90_real_ms"] == 300.0
    assert "cpu_ms" not in out and out["dilation"] == 2.5  # CPU time is not dilated


def test_build_spec_gives_single_its_sweeps_device(monkeypatch):
    """The single-device baseline of a 4-device Mininet point runs on the same dilated device."""
    from harness.spec.build import build_spec, compose
    from harness.spec.identity import baseline_key, timing_key

    monkeypatch.setattr(dilation, "machine_cores", lambda: 2)
    specs = {m: build_spec(compose(["network=mininet", f"method={m}", "devices=4", "model=vit_tiny"]))
             for m in ("single", "sp")}
    assert specs["single"].devices == 1
    reserve = specs["sp"].device.reserve_cores
    assert specs["single"].dilation == specs["sp"].dilation == pytest.approx(4 / (2 - reserve))
    assert specs["sp"].quota_cores == pytest.approx((2 - reserve) / 4)
    assert baseline_key(specs["sp"]) == timing_key(specs["single"])
    two = build_spec(compose(["network=mininet", "method=sp", "devices=2", "model=vit_tiny"]))
    assert two.dilation == pytest.approx(2 / (2 - reserve)) and baseline_key(two) != timing_key(specs["single"])


# ------------------------------------------------------------------------------------------------ spread devices
def test_cpuset_cpus_reads_cpuset_strings():
    import os

    assert dilation.cpuset_cpus("3") == [3] and dilation.cpuset_cpus("2-3") == [2, 3]
    assert dilation.cpuset_cpus("0,2-4") == [0, 2, 3, 4]
    assert dilation.cpuset_cpus(None) == sorted(os.sched_getaffinity(0))


def test_placement_packs_devices_onto_cores():
    assert dilation.placement([0.4375] * 4, 2) == [0, 1, 0, 1]
    assert dilation.placement([0.875, 0.875], 2) == [0, 1]
    assert dilation.placement([0.6, 0.5, 0.3, 0.3], 2) == [0, 1, 1, 0]  # largest first, onto the emptiest core
    assert dilation.placement([0.5833] * 3, 2) is None  # two of them would overfill a core
    assert dilation.placement([1.5], 2) is None  # a device above one core cannot have one core
    assert dilation.placement([0.4375], 2) == [0]


def test_spread_resolution_and_refusals(monkeypatch):
    from harness.spec.build import build_spec, compose
    from harness.spec.identity import point_key

    monkeypatch.setattr(dilation, "machine_cores", lambda: 2)
    four = build_spec(compose(["network=mininet", "method=sp", "devices=4", "model=vit_tiny"]))
    assert four.cores_of_ranks == [0, 1, 0, 1]
    single = build_spec(compose(["network=mininet", "method=single", "devices=4", "model=vit_tiny"]))
    assert single.cores_of_ranks == [0]  # the baseline keeps one core, as each device does
    off = build_spec(compose(["network=mininet", "method=sp", "devices=4", "model=vit_tiny", "device.spread=false"]))
    assert off.cores_of_ranks is None and point_key(off) != point_key(four)
    assert build_spec(compose(["network=loopback", "method=sp", "devices=2", "model=vit_tiny"])).cores_of_ranks is None
    three = ["network=mininet", "method=sp", "devices=3", "model=vit_tiny"]
    assert build_spec(compose(three)).cores_of_ranks is None  # 3 x 0.58 cores cannot be packed on 2: they float
    for extra, needle in ((["device.spread=true"], "overfilling"),
                          (["device.spread=true", "device.pin_cores=1"], "pin_cores=1"),
                          (["device.spread=true", "device.reference_ms=100"], "reference_ms")):
        with pytest.raises(ConfigError, match=needle):
            build_spec(compose([*three, *extra]))
    with pytest.raises(ConfigError, match="network=mininet"):
        build_spec(compose(["network=loopback", "method=sp", "devices=2", "model=vit_tiny", "device.spread=true"]))


