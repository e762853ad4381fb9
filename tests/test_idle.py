"""Idle polling (harness.emulation.idle): how device.idle_poll resolves and is refused, and the PM QoS request held and
released."""

from __future__ import annotations

import pytest

from harness.errors import ConfigError


def test_idle_poll_resolution_and_refusals(monkeypatch):
    from harness.emulation import idle
    from harness.spec.build import build_spec, compose, resolve_idle_poll

    monkeypatch.setattr(idle, "available", lambda: True)
    assert resolve_idle_poll("auto", True) is True and resolve_idle_poll("auto", False) is False
    assert resolve_idle_poll(False, True) is False
    with pytest.raises(ConfigError, match="network=mininet"):
        resolve_idle_poll(True, False)
    spec = build_spec(compose(["network=mininet", "method=sp", "devices=2", "model=vit_tiny"]))
    off = build_spec(compose(["network=mininet", "method=sp", "devices=2", "model=vit_tiny", "device.idle_poll=false"]))
    assert spec.idle_poll is True and off.idle_poll is False
    from harness.spec.identity import point_key

    assert point_key(spec) != point_key(off)  # a point measured without it is another point
    monkeypatch.setattr(idle, "available", lambda: False)
    assert resolve_idle_poll("auto", True) is False
    with pytest.raises(ConfigError, match="cpu_dma_latency"):
        resolve_idle_poll(True, True)
    with pytest.raises(ConfigError, match="idle_poll=maybe"):
        build_spec(compose(["network=mininet", "device.idle_poll=maybe"]))


@pytest.mark.skipif(not __import__("harness.emulation.idle").emulation.idle.available(), reason="needs root and /dev/cpu_dma_latency")
def test_poll_idle_holds_and_releases_the_request():
    from harness.emulation import idle

    before = idle.current_limit_us()
    with idle.PollIdle() as p:
        assert p.held and idle.current_limit_us() == 0
    assert not p.held and idle.current_limit_us() == before != 0
