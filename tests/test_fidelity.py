"""Every point's fidelity verdict (harness.emulation.fidelity): compute inflation against solo samples, link goodput,
the analytic formula fed with the point's own compute, the split of time in collectives."""

from __future__ import annotations

import statistics

import pytest

from harness.emulation import fidelity


def report(rank, lat, comm, solo=None, idle=None, records=()):
    return {"rank": rank, "latency_s": lat, "comm_s": comm, "solo_compute_s": solo, "idle_cores": idle,
            "records": [list(r) for r in records]}


def test_compute_inflation_pools_the_ranks():
    reps = [report(0, [1.0, 1.2, 1.1], [0.1, 0.1, 0.1], solo=[1.0]),   # inside 1.0, alone 1.0
            report(1, [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], solo=[0.4])]   # inside 0.5, alone 0.4
    assert fidelity.compute_inflation(reps) == pytest.approx(1.5 / 1.4)
    assert fidelity.compute_inflation([report(0, [1.0], [0.0])]) is None
    assert fidelity.compute_inflation([reps[0], report(1, [1.0], [0.0])]) is None  # a rank without its solo


def test_paired_solo_samples_are_held_against_their_own_repeats():
    # the machine slows down by half between repeats 0 and 2; each repeat's solo sample slows down with it
    reps = [dict(report(0, [1.0, 1.2, 1.5], [0.0, 0.1, 0.0]), solo_paired_s=[1.0, None, 1.5]),
            dict(report(1, [1.0, 1.2, 1.5], [0.0, 0.0, 0.0]), solo_paired_s=[None, 1.1, None])]
    assert fidelity.compute_inflation(reps) == pytest.approx((1.0 + 1.2 + 1.5) / (1.0 + 1.1 + 1.5))
    assert fidelity.solo_medians(reps) == pytest.approx([1.25, 1.1])
    # a rank whose turn never came (fewer repeats than ranks) gets the pooled median of the others' samples
    reps.append(dict(report(2, [1.0], [0.0]), solo_paired_s=[None]))
    assert fidelity.solo_medians(reps)[2] == pytest.approx(1.1)
    assert fidelity.solo_compute_ms(reps) == pytest.approx(1250.0)
    # without paired samples the solo runs after the point decide, as before
    assert fidelity.solo_medians([report(0, [1.0], [0.0], solo=[0.5])]) == [0.5]
    assert fidelity.solo_medians([dict(report(0, [1.0], [0.0]), solo_paired_s=[None])]) is None


def test_goodput_counts_bulk_collectives_only():
    rate = 8.0  # Mbit/s = 1e6 bytes/s
    bulk = ("all_gather", "b0", 900_000, 1.0, 1_000_000)  # 1 MB in 1 s: exactly the rate
    slow = ("all_gather", "b1", 900_000, 2.0, 1_000_000)  # half the rate on this rank...
    tiny = ("all_gather", "b2", 100, 0.5, 200)  # not a bulk transfer: ignored
    reps = [report(0, [3.5], [3.5], records=[bulk, slow, tiny]),
            report(1, [3.5], [3.5], records=[("all_gather", "b0", 900_000, 1.25, 1_000_000),
                                            ("all_gather", "b1", 900_000, 1.0, 1_000_000), tiny])]
    # per collective the best rank: b0 -> 1.0, b1 -> 1.0 (rank 1 was not waiting)
    assert fidelity.goodput_ratio(reps, [rate, rate]) == pytest.approx(1.0)
    reps[1]["records"][1][3] = 2.0
    assert fidelity.goodput_ratio(reps, [rate]) == pytest.approx(0.75)
    assert fidelity.goodput_ratio(reps, None) is None
    assert fidelity.goodput_ratio([report(0, [1], [1], records=[tiny])], [rate]) is None


def test_goodput_windows_run_from_each_arrival_to_the_last_departure():
    rate = 8.0  # 1e6 bytes/s: 1 MB is one second of link time
    # rank 1 computes until t = 10.5; both then move 1 MB and leave at 11.5: rank 1's link was busy throughout
    early = ("all_gather", "b0", 900_000, 1.5, 1_000_000, 10.0)
    late = ("all_gather", "b0", 900_000, 1.0, 1_000_000, 10.5)
    reps = [report(0, [2], [2], records=[early]), report(1, [2], [2], records=[late])]
    assert fidelity.goodput_ratio(reps, [rate]) == pytest.approx(1.0)
    # rank 0's last flow lands half a second after rank 1 is done: rank 1's 1 s of link time in a 1.5 s window
    reps[0]["records"][0][3] = 2.0
    assert fidelity.goodput_ratio(reps, [rate]) == pytest.approx(1 / 1.5)
    # a slower link (4 Mbit/s) on rank 1 needs 2 s for its megabyte: the busiest link decides
    reps[0]["records"][0][3] = 1.5
    reps[1]["records"][0][3] = 2.0
    assert fidelity.goodput_ratio(reps, [rate, rate / 2]) == pytest.approx(1.0)
    # bytes an early rank pushed while its peer was still computing do not count against the shorter span
    reps = [report(0, [2], [2], records=[("all_gather", "b0", 1, 1.2, 1_000_000, 0.0)]),
            report(1, [2], [2], records=[("all_gather", "b0", 1, 0.2, 200_000, 1.0)])]
    assert fidelity.goodput_ratio(reps, [rate]) == pytest.approx(1.0)
    reps[1]["records"][0][4] = 100_000  # rank 1's link idle half of its window, rank 0's 1 MB in 1.2 s
    assert fidelity.goodput_ratio(reps, [rate]) == pytest.approx(1 / 1.2)


def test_verdict_names_every_violation():
    assert fidelity.verdict({"compute_inflation": 1.05, "idle_cores": 0.5, "goodput_ratio": 0.97}) == "ok"
    assert fidelity.verdict({}) == "ok"
    v = fidelity.verdict({"compute_inflation": 1.2, "idle_cores": 0.02, "goodput_ratio": 0.6, "oversubscribed": True})
    assert "compute inflated +20%" in v and "saturated" in v and "goodput 0.60" in v and "oversubscribed" in v
    assert fidelity.verdict({"compute_inflation": 0.8}) == "compute inflated -20%"
    cols = fidelity.assess([report(0, [1.0], [0.0], solo=[0.5], idle=1.0)], False, None)
    assert cols == {"compute_inflation": 2.0, "idle_cores": 1.0, "goodput_ratio": None,
                    "fidelity": "compute inflated +100%", "solo_compute_ms": 500.0, "analytic_ms": None,
                    "analytic_wire_ms": None, "comm_skew_ms": None, "comm_collective_ms": None}  # one rank


def test_analytic_formula_fed_with_the_points_own_compute():
    # two ranks, each all-gathers a 1.25 MB shard at 10 Mbit/s: ring = (N-1) x 1.25 MB = 1 s; compute 0.5 s / k=2
    recs = [("all_gather", "b0", 1_250_000, 9.9, None)]
    reps = [dict(report(r, [3.0], [2.0], solo=[0.5, 0.5], records=recs), world=2) for r in (0, 1)]
    assert fidelity.analytic_ms(reps, 10.0, 2.0) == pytest.approx(1250.0)
    assert fidelity.analytic_ms(reps, None, 2.0) is None
    cols = fidelity.assess(reps, False, None, 2.0, 10.0)
    assert cols["solo_compute_ms"] == pytest.approx(250.0)
    # the frames on the wire: 1514 link bytes per 1448 of payload stretch the 1 s transfer, not the compute
    assert cols["analytic_ms"] == pytest.approx(1250.0)
    assert cols["analytic_wire_ms"] == pytest.approx(250.0 + 1000.0 * 1514 / 1448)


def test_interleaved_baseline_pairs_each_repeat():
    reps = [dict(report(0, [1.0, 2.0, 1.0], [0, 0, 0]), single_s=[3.0, 4.0, 3.3]),
            dict(report(1, [1.1, 1.0, 1.0], [0, 0, 0]), single_s=None)]
    out = fidelity.interleaved(reps, 2.0)
    assert out["single_interleaved_ms"] == pytest.approx(3300 / 2)
    assert out["speedup_interleaved"] == pytest.approx(statistics.median([3.0 / 1.1, 4.0 / 2.0, 3.3 / 1.0]))
    assert fidelity.interleaved([report(0, [1.0], [0.0])], 1.0) == {}


def test_comm_split_separates_waiting_for_peers_from_the_collective():
    # two collectives, two ranks: rank 1 enters each 3 s / 1 s after rank 0; both leave together
    r0 = {"rank": 0, "records": [["all_gather", "a", 8, 5.0, None, 0.0], ["all_gather", "b", 8, 2.0, None, 10.0]]}
    r1 = {"rank": 1, "records": [["all_gather", "a", 8, 2.0, None, 3.0], ["all_gather", "b", 8, 1.0, None, 11.0]]}
    wait, transfer = fidelity.comm_split([r0, r1])
    assert wait == pytest.approx((3 + 0) / 2 + (1 + 0) / 2)  # the mean rank waited 2 s in all
    assert transfer == pytest.approx(2.0 + 1.0)  # from the last entry to the last exit
    cols = fidelity.assess([{**r0, "latency_s": [6.0], "comm_s": [7.0]}, {**r1, "latency_s": [6.0],
                                                                           "comm_s": [3.0]}], False, None, k=2.0)
    assert cols["comm_skew_ms"] == pytest.approx(1000) and cols["comm_collective_ms"] == pytest.approx(1500)
    assert fidelity.comm_split([r0]) is None  # one rank: nothing to wait for
    assert fidelity.comm_split([r0, {"rank": 1, "records": r1["records"][:1]}]) is None  # mismatched sequences
    old = {"rank": 1, "records": [rec[:5] for rec in r1["records"]]}  # records without start times
    assert fidelity.comm_split([r0, old]) is None
