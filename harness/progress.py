"""Sweep progress for ``astra-bench -m``: a Hydra callback that counts the sweep's points up front and prints,
when each point starts, which point it is, how many are done out of how many, and an ETA from the mean time per
point so far. (Each point ends with its one-line summary, printed by the job itself.)"""

from __future__ import annotations

import sys
import time

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def count_points(overrides: list[str]) -> int:
    """Number of jobs the basic sweeper makes of these overrides (product of discrete sweeps; later keys win)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sizes: dict[str, int] = {}
    for ov in OverridesParser.create().parse_overrides(overrides):
        key = ov.get_key_element()
        sizes[key] = len(list(ov.sweep_string_iterator())) if ov.is_discrete_sweep() else 1
    total = 1
    for n in sizes.values():
        total *= n
    return total


REMOTE_ENV = "ASTRA_REMOTE_JOB"  # set in a job of the Ray launcher (harness.cluster): its driver shows the progress


def fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class SweepProgress(Callback):
    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.t0 = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        try:
            self.total = count_points(params + list(config.hydra.overrides.task))
        except Exception:  # noqa: BLE001 - progress is best effort; the sweep itself reports real errors
            self.total = 0
        self.t0 = time.monotonic()
        print(f"[astra-bench] sweep of {self.total or '?'} points", file=sys.stderr, flush=True)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        import os

        from hydra.core.hydra_config import HydraConfig

        if os.environ.get(REMOTE_ENV):  # a job of the Ray launcher: its driver reports the progress
            return

        try:
            hc = HydraConfig.get()
        except ValueError:
            return
        if str(hc.mode) != "RunMode.MULTIRUN":
            return
        elapsed = time.monotonic() - self.t0
        eta = ""
        if self.done and self.total:
            eta = f" | ETA {fmt(elapsed / self.done * (self.total - self.done))}"
        point = " ".join(o for o in hc.overrides.task)
        print(f"[astra-bench] point {self.done + 1}/{self.total or '?'} | done {self.done} | elapsed {fmt(elapsed)}"
              f"{eta} | {point}", file=sys.stderr, flush=True)

    def on_job_end(self, config: DictConfig, job_return=None, **kwargs) -> None:
        self.done += 1
