"""How a rank times a point (harness.rank.timing): adaptive repeats under a budget, the interleaved baseline and the
paired solo samples, each rank taking its turn."""

from __future__ import annotations

import pytest

from harness.emulation import fidelity


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakePlan:
    def __init__(self, clock, seconds):
        self.clock, self.seconds, self.calls = clock, seconds, 0

    def forward(self, inputs, **kw):
        self.calls += 1
        self.clock.t += self.seconds


@pytest.mark.parametrize("method, seconds, budget, warmup, repeats, want", [
    ("sp", 2.0, 1.0, 2, 5, (0, 1)),      # longer than the budget: timed once, no warm-up
    ("sp", 0.01, 1.0, 2, 5, (2, 5)),     # short: the full warm-up and repeats
    ("sp", 0.3, 1.0, 2, 5, (1, 2)),      # warm-ups fit half the budget, repeats the rest
    ("sp", 0.6, 1.0, 2, 5, (1, 1)),      # at least one timed repeat
    ("sp", 0.2, None, 3, 4, (3, 4)),     # no budget: warmup + repeats
    ("single", 2.0, 1.0, 2, 5, (2, 5)),  # the baseline every speedup divides: always warmup + repeats
])
def test_adaptive_repeats(monkeypatch, method, seconds, budget, warmup, repeats, want):
    from harness.comm.collectives import LocalComm
    from harness.rank import worker
    from harness.spec.build import build_spec, compose

    clock = FakeClock()
    monkeypatch.setattr(worker.time, "perf_counter", clock)
    spec = build_spec(compose(["model=vit_tiny", f"method={method}", "solo_repeats=0"])).replace(
        budget_s=budget, warmup=warmup, repeats=repeats)
    plan = FakePlan(clock, seconds)
    t = worker.Timing(spec, LocalComm(), plan, None)
    t.run()
    rep = t.report()
    assert (rep["warmups"], len(rep["latency_s"])) == want
    assert plan.calls == sum(want)
    assert all(x == pytest.approx(seconds) for x in rep["latency_s"])


@pytest.mark.slow
def test_interleave_runs_the_baseline_between_repeats(tmp_path):
    """On real ranks (loopback): rank 0 times the whole model after every repeat; the row pairs them."""
    from harness.launch import free_port, launch_local
    from harness.spec.build import make_spec, model_from_conf
    from harness.store.row import row

    mc = model_from_conf("vit_tiny", 32)
    spec = make_spec(mc, {"name": "sp"}, devices=2, tokens=32, repeats=3, warmup=1, interleave=True,
                     solo_repeats=0, results={"path": str(tmp_path / "r.parquet")})
    reports = launch_local(spec, tmp_path, free_port())
    assert len(reports[0]["single_s"]) == 3 and reports[1]["single_s"] is None
    r = row(spec, {"network": "loopback"}, reports)
    assert r["single_interleaved_ms"] > 0 and r["speedup_interleaved"] > 0
    (tmp_path / "b").mkdir()
    plain = launch_local(spec.replace(interleave=False), tmp_path / "b", free_port())
    assert plain[0]["single_s"] is None


@pytest.mark.slow
def test_paired_solo_runs_one_rank_after_every_repeat(tmp_path):
    """On real ranks (loopback): after each timed repeat the ranks take turns running alone; the row's inflation
    pairs them, and the solo runs after the point are skipped."""
    from harness.launch import free_port, launch_local
    from harness.spec.build import make_spec, model_from_conf
    from harness.store.row import row

    mc = model_from_conf("vit_tiny", 32)
    spec = make_spec(mc, {"name": "sp"}, devices=2, tokens=32, repeats=3, warmup=1, solo_repeats=1,
                     solo_paired=True, results={"path": str(tmp_path / "r.parquet")})
    reports = launch_local(spec, tmp_path, free_port())
    turns = [[s is not None for s in r["solo_paired_s"]] for r in reports]
    assert turns == [[True, False, True], [False, True, False]]
    assert all(r["solo_compute_s"] is None for r in reports)
    r = row(spec, {"network": "loopback"}, reports)
    assert r["solo_compute_ms"] > 0
    (tmp_path / "b").mkdir()
    after = launch_local(spec.replace(solo_paired=False), tmp_path / "b", free_port())
    assert all(r["solo_paired_s"] is None and len(r["solo_compute_s"]) == 1 for r in after)


@pytest.mark.slow
def test_every_rank_gets_a_paired_sample_when_repeats_are_fewer_than_ranks(tmp_path):
    """3 ranks, 2 repeats: rank 2's turn never comes in the repeats, so it runs alone after the last one, paired
    with it; the inflation then pools all three ranks."""
    from harness.launch import free_port, launch_local
    from harness.spec.build import make_spec, model_from_conf

    mc = model_from_conf("vit_tiny", 32)
    spec = make_spec(mc, {"name": "sp"}, devices=3, tokens=32, repeats=2, warmup=1, solo_repeats=1,
                     solo_paired=True, results={"path": str(tmp_path / "r.parquet")})
    reports = launch_local(spec, tmp_path, free_port())
    turns = [[s is not None for s in r["solo_paired_s"]] for r in reports]
    assert turns == [[True, False], [False, True], [False, True]]
    assert len(fidelity.paired(reports)) == 3
