"""The overlapped baselines (ring attention, Galaxy) and what they rest on: collectives started now and waited for
later (``Comm.start_*``), the time their transfers ran hidden under compute, and the analytic model of the overlap
(``harness.comm.cost.timeline``)."""

from __future__ import annotations

import copy
import os
import time

import pytest
import torch
from threadcomm import max_err, run_gloo, run_method

from harness.comm.collectives import SimulatedComm
from harness.comm.cost import overlapped, timeline
from harness.models import build_model, make_inputs
from harness.parallel import METHODS


@pytest.mark.parametrize("kind", ["vit", "gpt2", "llama"])
@pytest.mark.parametrize("method,opts", [("ring_attn", {}), ("galaxy", {}), ("galaxy", {"tiles": 1}),
                                         ("galaxy", {"tiles": 3})])
@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_overlapped_methods_equal_single(tiny_cfg, kind, method, opts, world):
    """Exact against the single device (fp32 tolerance) for 2-8 ranks, with 13 tokens (uneven shards and tiles,
    8 heads over 3 ranks)."""
    tokens = 13
    cfg = tiny_cfg(kind, tokens, heads=8, hidden=64)
    model = build_model(cfg, seed=1)
    x = make_inputs(cfg, tokens, batch=2, seed=1)
    ref = model(x, all_positions=True) if cfg.decoder else model(x)
    res = run_method(model, x, method, world, opts)
    assert max_err(res, ref) <= 1e-4
    records = [r for _, _, recs in res for r in recs]
    assert records and all(r.wait_start is not None for r in records)  # every collective was started, then waited


def test_gpt2_next_token_comes_from_the_rank_holding_the_last_position(tiny_cfg):
    cfg = tiny_cfg("gpt2", 13, heads=4, hidden=32)
    model = build_model(cfg, seed=2)
    x = make_inputs(cfg, 13, batch=1, seed=2)
    ref = model(x, all_positions=False)
    for method in ("ring_attn", "galaxy"):
        res = run_method(model, x, method, 3, all_positions=False)
        outs = [o for o, _, _ in res if o.logits is not None]
        assert len(outs) == 1 and outs[0].positions.tolist() == [12]
        assert (outs[0].logits - ref).abs().max() <= 1e-4


def test_ring_stripes_causal_tokens_and_sends_kv_blocks(tiny_cfg):
    """GPT2: rank r holds positions r, r+N, ... (every rank gets an even share of the causal work); each block, a
    rank sends N-1 k|v blocks of the largest shard."""
    from harness.parallel.ring_attn import ring_positions

    assert [p.tolist() for p in ring_positions(7, 3, causal=True)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [p.tolist() for p in ring_positions(7, 3, causal=False)] == [[0, 1, 2], [3, 4], [5, 6]]
    cfg = tiny_cfg("gpt2", 13, heads=4, hidden=32, layers=2)
    model = build_model(cfg, seed=1)
    res = run_method(model, make_inputs(cfg, 13, batch=2, seed=1), "ring_attn", 4)
    for _, _, recs in res:
        assert [(r.op, r.payload_bytes) for r in recs] == [("shift", 2 * 4 * 2 * 32 * 4)] * (2 * 3)


def test_galaxy_tiles_cover_the_sequence_once():
    from harness.parallel.galaxy import galaxy_tiles

    for seq, world, tiles in [(13, 3, 4), (1025, 4, 4), (5, 4, 8), (9, 2, 1)]:
        layout = galaxy_tiles(seq, world, tiles)
        assert len(layout) == max(1, min(tiles, seq // world))
        rows = [p for subs in layout for s, e in subs for p in range(s, e)]
        assert rows == list(range(seq))  # in order, each once
        assert all(e > s for subs in layout for s, e in subs)  # every rank owns a row of every tile


# -- the timeline model ------------------------------------------------------------------------------------------
def charge_ms(ms):
    return lambda op, nbytes: ms * 1e-3 if nbytes else 0.0


def test_timeline_blocking_calls_add_up():
    events = [[0.010, "call", None, "all_gather", 1], [0.020, "call", None, "all_reduce", 1]]
    latency, waited, hidden = timeline(events, 0.005, charge_ms(3))
    assert latency == pytest.approx(0.035 + 0.006) and waited == pytest.approx(0.006) and hidden == 0


@pytest.mark.parametrize("compute_ms,transfer_ms", [(10, 3), (3, 10)])
def test_timeline_pipeline_costs_the_longer_of_compute_and_transfer(compute_ms, transfer_ms):
    """Four tiles, each transfer started before the next tile's compute and waited for after it: per step the
    longer of the two, plus the first compute (fill) and the last transfer (drain)."""
    c, x, n = compute_ms * 1e-3, transfer_ms * 1e-3, 4
    events = []
    for t in range(n):
        events.append([c, "post", t, "shift", 1])
        if t:
            events.append([0.0, "wait", t - 1, "shift", 0])
    events.append([0.0, "wait", n - 1, "shift", 0])
    latency, waited, hidden = timeline(events, 0.0, charge_ms(transfer_ms))
    expect = c + (n - 1) * max(c, x) + x
    assert latency == pytest.approx(expect)
    assert waited == pytest.approx(latency - n * c)
    assert hidden == pytest.approx(n * x - waited)


@pytest.mark.parametrize("share", [0.1, 0.4])
def test_timeline_a_transfer_under_compute_takes_its_share_of_the_core(share):
    """One started transfer of x under compute c (x < c): the compute runs at 1 − share while the transfer moves,
    so the rank finishes share·x later than without it; the transfer itself keeps the link's pace."""
    c, x = 0.010, 0.004
    events = [[0.0, "post", 0, "shift", 1], [c, "wait", 0, "shift", 0]]
    latency, waited, hidden = timeline(events, 0.0, charge_ms(x * 1e3), share)
    assert latency == pytest.approx(c + share * x)
    assert waited == 0 and hidden == pytest.approx(x)
    assert timeline(events, 0.0, charge_ms(x * 1e3), 0.0)[0] == pytest.approx(c)  # no share: fully hidden


def test_timeline_a_transfer_needing_the_whole_core_overlaps_nothing():
    """share = 1 (moving the bytes at link speed takes a whole core): under compute both get half the core, so a
    pipeline costs compute + transfer as if nothing overlapped; a blocking call keeps the link's pace."""
    c, x = 0.010, 0.010
    events = [[0.0, "post", 0, "shift", 1], [c, "wait", 0, "shift", 0]]
    latency, waited, hidden = timeline(events, 0.0, charge_ms(x * 1e3), 1.0)
    assert latency == pytest.approx(c + x) and waited == pytest.approx(0.0, abs=1e-12)
    blocking = [[c, "call", None, "shift", 1]]
    assert timeline(blocking, 0.0, charge_ms(x * 1e3), 1.0)[0] == pytest.approx(c + x)
    assert timeline(blocking, 0.0, charge_ms(x * 1e3), 2.0)[0] == pytest.approx(c + 2 * x)  # the core is the limit


def test_overlapped_counts_the_slowed_compute_as_communication():
    """What the analytic backend adds to a rank's compute: its waits alone without a share of the core; with one,
    also the compute the transfers took."""
    events = [[0.0, "post", 0, "shift", 1], [0.010, "wait", 0, "shift", 0], [0.0, "call", None, "shift", 1]]
    rep = {"events": events, "tail_s": 0.002}
    assert overlapped(rep, charge_ms(4), 0.0) == pytest.approx((0.004, 0.004))
    added, hidden = overlapped(rep, charge_ms(4), 0.25)
    assert added == pytest.approx(0.004 + 0.25 * 0.004) and hidden == pytest.approx(0.004)


def test_share_of_core_counts_bytes_sent_and_received():
    from harness.comm.cost import share_of_core

    # 4 ns per byte each way at 1000 Mbit/s: 2 × 4 ns per payload byte against the link's 8 ns per byte
    assert share_of_core(4.0, 1000, 1e6, 1.0) == pytest.approx(1.0)
    assert share_of_core(4.0, 100, 1e6, 1.0) == pytest.approx(0.1)
    assert share_of_core(0.0, 1000, 1e6, 1.0) == 0.0


def test_overlapped_reads_records_of_a_local_run(tiny_cfg):
    """The analytic backend's view of a profiled rank: its started collectives and the compute between them, from
    the records of a run whose collectives were answered locally; a faster link hides more."""
    cfg = tiny_cfg("vit", 63, heads=4, hidden=64, layers=2)
    model = build_model(cfg, seed=1)
    x = make_inputs(cfg, 63, batch=1, seed=1)
    comm = SimulatedComm(0, 4)
    plan = METHODS["galaxy"](copy.deepcopy(model), comm, {"tiles": 4})
    t0 = time.perf_counter()
    plan.forward(x)
    took = time.perf_counter() - t0
    rep = {"records": [r.row() for r in comm.records], "records_t0": t0, "latency_s": [took]}
    total = len(comm.records) * 1e-3
    slow, _ = overlapped(rep, charge_ms(1))
    fast, hidden = overlapped(rep, charge_ms(0.01))
    assert 0 <= fast < slow <= total + 1e-9 and hidden > 0
    assert overlapped({"records": [["all_gather", "a", 8, 0.0, None, t0]], "records_t0": t0, "latency_s": [1.0]},
                      charge_ms(1)) == (None, 0.0)


# -- the real thing: gloo on loopback ------------------------------------------------------------------------------
def _rank(rank: int, world: int, port: int, results) -> None:
    import torch.distributed as dist

    from harness.comm.collectives import DistComm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = {}
        for impl in ("p2p", "ring"):
            comm = DistComm(impl)
            shard = torch.full((3, 5), float(rank))
            g = comm.start_all_gather(shard, tag="ag")
            s = comm.start_shift(shard * 10, tag="shift")
            parts = [torch.full((2, 4), 100.0 * rank + j) for j in range(world)]  # my part of rank j's sum
            rs = comm.start_reduce_scatter(parts, tag="rs")
            time.sleep(0.2)  # "compute" while the three transfers run
            out[impl] = ([t[0, 0].item() for t in g.wait()], s.wait()[0, 0].item(), rs.wait()[0, 0].item(),
                         comm.hidden_seconds, [r.op for r in comm.records])
            out[impl + "-blocking"] = comm.reduce_scatter(parts)[0, 0].item()
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_started_collectives_run_while_the_rank_computes():
    """On gloo, for the direct and the ring implementations: started collectives deliver the right values, and the
    time they ran hidden under the rank's (sleeping) compute is counted."""
    world = 3
    results = run_gloo(_rank, world)
    for r in range(world):
        for impl in ("p2p", "ring"):
            gathered, shifted, summed, hidden, ops = results[r][impl]
            assert gathered == [0.0, 1.0, 2.0]
            assert shifted == 10.0 * ((r - 1) % world)
            assert summed == sum(100.0 * j + r for j in range(world))
            assert ops == ["all_gather", "shift", "reduce_scatter"]  # in the order they were started
            assert 0 < hidden <= 0.25
            assert results[r][impl + "-blocking"] == summed


# -- ASTRA over the best baseline ------------------------------------------------------------------------------------
def test_over_best_baseline_picks_the_fastest_other_method_at_each_point():
    import pandas as pd

    from harness.report.compare import over_best_baseline

    def row(method, devices, bw, speedup, lat, low, high, key="k1"):
        return {"method": method, "label": method, "status": "ok", "devices": devices, "bandwidth_mbps": bw,
                "speedup": speedup, "latency_ms": lat, "latency_ci_low_ms": low, "latency_ci_high_ms": high,
                "baseline_key": key, "single_latency_ms": 100.0, "single_ci_low_ms": 98.0, "single_ci_high_ms": 102.0}

    pts = pd.DataFrame([
        row("single", 1, None, 1.0, 100, 98, 102),
        row("astra", 4, 10, 2.0, 50, 49, 51), row("sp", 4, 10, 0.1, 1000, 990, 1010),  # only single is faster than sp
        row("astra", 4, 1000, 2.0, 50, 48, 52), row("galaxy", 4, 1000, 2.5, 40, 39, 41),
        row("tp", 4, 1000, 1.9, 52.6, 49, 55),
        row("tp", 2, 1000, 9.0, 11, 10, 12),  # another device count: not a competitor of N = 4
        row("galaxy", 4, 1000, 9.0, 11, 10, 12, key="k2"),  # another single device (other settings): neither
    ])
    best = over_best_baseline(pts).set_index("bandwidth_mbps")
    assert best.loc[10, "best_baseline"] == "single" and best.loc[10, "over_best"] == pytest.approx(2.0)
    assert best.loc[10, "resolved"] == "yes"
    assert best.loc[1000, "best_baseline"] == "galaxy" and best.loc[1000, "over_best"] == pytest.approx(0.8)
    assert best.loc[1000, "resolved"] == "yes"
    pts.loc[pts["method"] == "galaxy", ["latency_ci_low_ms", "latency_ci_high_ms"]] = (30, 60)
    assert over_best_baseline(pts).set_index("bandwidth_mbps").loc[1000, "resolved"] == "not resolved"
