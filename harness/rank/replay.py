"""A rank that replays its compute profile (``device.compute=replay``): no model, no weights. Each inference sleeps
until the end of every recorded compute segment on the monotonic clock, then makes the recorded collective call
with buffers of the recorded shapes — through the real collectives, over the real (emulated) network — and finally
sleeps through the compute after its last call.

Sleeping rather than spinning is what lets 32 replayed devices share two cores. How late each wake-up came
(``lateness_s``: the time from a segment's end to the moment the rank ran again) is the replay's fidelity: the
row's ``wake_late_p50_ms``/``wake_late_p99_ms`` and its verdict."""

from __future__ import annotations

import time

from harness.comm.collectives import Comm
from harness.comm.profile import RankProfile, issue
from harness.parallel.base import Output


def sleep_until(deadline: float) -> float:
    """Sleep until ``deadline`` (``time.perf_counter``, CLOCK_MONOTONIC); return how late the rank woke up."""
    left = deadline - time.perf_counter()
    if left > 0:
        time.sleep(left)
    return max(0.0, time.perf_counter() - deadline)


class ReplayPlan:
    """Stands in for a method's plan on a replaying rank (the same ``forward`` the timing loop calls)."""

    def __init__(self, profile: RankProfile, comm: Comm):
        self.profile, self.comm = profile, comm
        self.buffers: dict = {}
        self.pending: dict = {}  # started calls not yet waited for, by number
        self.lateness_s: list[float] = []  # every wake-up of every inference so far
        self.segments_s: list[float] = []  # the segment each wake-up ended

    def forward(self, inputs=None, all_positions: bool = False) -> Output:
        mark = time.perf_counter()
        for call in self.profile.calls:
            self._wait(mark, call.compute_s)
            issue(self.comm, call, self.buffers, self.pending)
            mark = time.perf_counter()
        self._wait(mark, self.profile.tail_s)
        return Output(None)

    def _wait(self, mark: float, seconds: float) -> None:
        self.lateness_s.append(sleep_until(mark + seconds))
        self.segments_s.append(seconds)
