"""Sweep progress for ``astra-bench -m``: a Hydra callback that counts the sweep's points up front and prints,
when each point starts, which point it is, how many are done out of how many, and an ETA from the mean time per
point so far. (Each point ends with its one-line summary, printed by the job itself.)

Every sweep ends with one line: how many points were measured (ok), failed or skipped (already in the store, or
already measured by this sweep), and the store. ``TALLY`` keeps the count for the app's exit status: a sweep with a
failed point exits 1 unless ``results.allow_failures=true``. The Ray launcher counts its jobs on the driver."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

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


@dataclass
class Tally:
    """What a sweep's jobs ended as; ``failed`` holds each failed point as its overrides."""

    ok: int = 0
    skipped: int = 0
    failed: list[list[str]] = field(default_factory=list)
    points: list[list[str]] = field(default_factory=list)  # every job's overrides, to tell the failed ones apart
    store: str | None = None
    allow_failures: bool = False
    started: bool = False

    def start(self, store: str, allow_failures: bool) -> None:
        self.__dict__.update(Tally(store=store, allow_failures=allow_failures, started=True).__dict__)

    def add(self, row, overrides: list[str]) -> None:
        """Count a job by its row (the job function's return value; None or a failed row: the point failed)."""
        self.points.append(overrides)
        if not isinstance(row, dict) or row.get("status") != "ok":
            self.failed.append(overrides)
        elif row.get("skipped"):
            self.skipped += 1
        else:
            self.ok += 1

    def line(self) -> str:
        """The sweep's last line; each failed point named by the overrides that set it apart from the others."""
        common = set.intersection(*map(set, self.points)) if len(self.points) > 1 else set()
        named = ["; ".join(" ".join(o for o in f if o not in common) for f in self.failed)]
        failed = f" ({named[0]})" if self.failed else ""
        return (f"[astra-bench] sweep finished: {self.ok} ok, {len(self.failed)} failed{failed}, {self.skipped} "
                f"skipped (already measured) | results: {self.store}")

    def exit_status(self) -> int:
        return 1 if self.started and self.failed and not self.allow_failures else 0


TALLY = Tally()


def shown(overrides, config) -> list[str]:
    """A job's point as the user would name it: its overrides, less the ``++`` knobs its method or backend does not
    have (a sweep passes a knob of some methods to every job; the others drop it)."""
    from harness.spec.schema import OPTION_GROUPS, owners

    out = []
    for o in overrides:
        key = o.split("=", 1)[0]
        head, _, rest = key.lstrip("+").partition(".")
        if key.startswith("++") and head in OPTION_GROUPS and rest:
            name = str(config[head]["name"]) if config is not None and head in config else None
            if name is not None and not owners(head, rest, [name]):
                continue
        out.append(o.lstrip("+") if key.startswith("++") else o)
    return out


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
        from omegaconf import OmegaConf

        TALLY.start(str(OmegaConf.select(config, "results.path")),
                    bool(OmegaConf.select(config, "results.allow_failures", default=False)))
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
        point = " ".join(shown(hc.overrides.task, config))
        print(f"[astra-bench] point {self.done + 1}/{self.total or '?'} | done {self.done} | elapsed {fmt(elapsed)}"
              f"{eta} | {point}", file=sys.stderr, flush=True)

    def on_job_end(self, config: DictConfig, job_return=None, **kwargs) -> None:
        import os

        self.done += 1
        if os.environ.get(REMOTE_ENV) or job_return is None:  # a Ray job: its driver counts it
            return
        from hydra.core.utils import JobStatus

        row = job_return._return_value if job_return.status == JobStatus.COMPLETED else None
        TALLY.add(row, shown(job_return.overrides or [], config))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from harness.store.results import compact

        if TALLY.store:
            compact(TALLY.store)  # the jobs' pending rows into the store file, written once
        print(TALLY.line(), file=sys.stderr, flush=True)
