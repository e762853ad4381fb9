"""Network backends: each runs one point's ranks and returns their reports."""

from __future__ import annotations

from ..config import ConfigError


def make_backend(cfg):
    name = cfg.network.name
    if name == "loopback":
        from .loopback import LoopbackBackend

        return LoopbackBackend(cfg)
    if name == "mininet":
        from .mininet import MininetBackend

        return MininetBackend(cfg)
    if name == "analytic":
        from .analytic import AnalyticBackend

        return AnalyticBackend(cfg)
    raise ConfigError(f"unknown network '{name}': choose one of loopback, mininet, analytic")
