"""Network backends: each runs one point's ranks and returns their reports."""

from __future__ import annotations

from ..config import ConfigError


def make_backend(cfg):
    name = cfg.network.name
    if name == "loopback":
        from .loopback import LoopbackBackend

        return LoopbackBackend(cfg.network)
    raise ConfigError(f"unknown network '{name}': choose one of loopback")
