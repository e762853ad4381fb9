"""Network conditions beyond a fixed clean link: packet loss on the emulated links. Unit tests of the
rules; the Mininet tests (tests/test_mininet.py) check them in force."""

from __future__ import annotations

import re

import pytest

from harness.network.mininet.conditions import LOSS_TABLE, loss_ruleset


def test_loss_rules_name_only_our_interfaces_both_ways():
    rules = loss_ruleset(["astrh1-eth0", "astrh1-eth1"], 2.5)
    assert f"table inet {LOSS_TABLE}" in rules
    # one drop rule per direction, each limited to the host's own links, at 2.5 % = 25000 per million
    drops = [ln.strip() for ln in rules.splitlines() if ln.strip().endswith("drop")]
    assert len(drops) == 2
    assert drops[0].startswith('oifname { "astrh1-eth0", "astrh1-eth1" }')
    assert drops[1].startswith('iifname { "astrh1-eth0", "astrh1-eth1" }')
    assert all(re.search(r"numgen random mod 1000000 < 25000 counter drop$", d) for d in drops)
    assert "hook output" in rules and "hook input" in rules


@pytest.mark.parametrize("pct,per_million", [(0.01, 100), (1, 10000), (50, 500000), (99.9999, 999999)])
def test_loss_probability_rounds_to_the_rule_resolution(pct, per_million):
    assert f"< {per_million} counter drop" in loss_ruleset(["x-eth0"], pct)


# ------------------------------------------------------------------------------------------------ bandwidth traces
from harness.errors import ConfigError  # noqa: E402
from harness.network.mininet import trace as tr  # noqa: E402
from harness.store import stream  # noqa: E402


def write(tmp_path, text: str):
    p = tmp_path / "trace.csv"
    p.write_text(text)
    return str(p)


def test_csv_trace_for_all_hosts_and_per_host(tmp_path):
    t = tr.load_csv(write(tmp_path, "time_s,mbps\n0,50\n10,20\n25,100\n"), 3, 1000)
    assert t.times == [0, 10, 25] and t.rates[1] == [20, 20, 20]
    assert t.at(0) == [50] * 3 and t.at(9.99) == [50] * 3 and t.at(10) == [20] * 3 and t.at(1e6) == [100] * 3
    assert t.changes(25) == [(10, [20.0] * 3)]  # the step at 25 s starts after a 25 s stream
    assert tr.mean_rates(t, 20) == pytest.approx([35.0] * 3)
    per = tr.load_csv(write(tmp_path, "time_s,h1,h2\n0,10,20\n5,30,20\n"), 2, 1000)
    assert per.rates == [[10, 20], [30, 20]]
    same = tr.load_csv(write(tmp_path, "time_s,mbps\n0,10\n5,10\n9,40\n"), 2, 1000)
    assert same.changes(100) == [(9, [40.0, 40.0])]  # a step that repeats the rate is not a change


@pytest.mark.parametrize("text,needle", [
    (None, "no such file"),
    ("time_s,mbps\n", "at least one row"),
    ("time_s,mbps\n0,10\n5,20\n3,30\n", "not strictly increasing"),
    ("time_s,mbps\n0,10\n5,0\n", "outside (0, 1000]"),
    ("time_s,mbps\n0,1001\n", "outside (0, 1000]"),
    ("time_s,mbps\n1,10\n", "start the trace at time_s=0"),
    ("time_s,a,b,c\n0,1,2,3\n", "rate column(s)"),
    ("time_s,mbps\n0,ten\n", "non-number"),
    ("time_s,mbps\n0,10,3\n", "fields"),
])
def test_bad_csv_traces_are_refused_in_one_line(tmp_path, text, needle):
    path = str(tmp_path / "missing.csv") if text is None else write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        tr.load_csv(path, 2, 1000)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_markov_trace_is_seeded_and_biased_to_neighbours():
    states = [20, 40, 60, 80, 100]
    a = tr.markov(states, 1.0, 2000, seed=3, hosts=4)
    assert a.rates == tr.markov(states, 1.0, 2000, seed=3, hosts=4).rates
    assert a.rates != tr.markov(states, 1.0, 2000, seed=4, hosts=4).rates
    assert len(a.times) == 2000 and a.times[1] == 1.0
    seq = [states.index(r[0]) for r in a.rates]
    assert all(r == [r[0]] * 4 for r in a.rates) and set(seq) == set(range(5))
    jumps = [abs(x - y) for x, y in zip(seq, seq[1:])]
    stay, near, far = jumps.count(0), jumps.count(1), sum(j >= 2 for j in jumps)
    assert 0.4 < stay / len(jumps) < 0.6  # stays half the time
    assert near > 1.5 * far  # a neighbour is the likelier move


def test_stream_counts_requests_served_within_the_duration():
    # two ranks, three requests; the third ends after 10 s on rank 1 (the slowest rank decides)
    reps = [{"request_start_s": [0.0, 4.0, 8.0], "latency_s": [3.5, 3.5, 1.5], "stream_real_s": 10.0},
            {"request_start_s": [0.0, 4.0, 8.0], "latency_s": [3.9, 3.9, 2.5], "stream_real_s": 10.0}]
    assert [x for req in stream.requests(reps) for x in req] == pytest.approx([0.0, 3.9, 4.0, 3.9, 8.0, 2.5])
    assert stream.served(reps, 10.0) == 2
    assert stream.side_path("results/x.parquet").name == "x.requests.parquet"
    t = tr.Trace("markov", [0, 5], [[10.0, 10.0], [20.0, 20.0]])

    class Spec:
        stream_s = 5.0

    rows = stream.side_rows({"dilation": 2.0, "run_id": "r", "bandwidth_mbps": 15.0}, reps, Spec, t)
    req = [r for r in rows if r["kind"] == "request"]
    assert [r["time_s"] for r in req] == [0.0, 2.0, 4.0]  # emulated time: real / k
    assert [r["mbps"] for r in req] == [10.0, 10.0, 10.0] and [r["served"] for r in req] == [True, True, False]
    assert req[0]["latency_ms"] == pytest.approx(1950.0)
    assert [r["time_s"] for r in rows if r["kind"] == "trace"] == [0]  # the 5 s step is past the 5 s stream


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (["network=mininet", "network.trace=markov"], "stream_s"),
    (["network=mininet", "network.trace=/nonexistent/trace.csv", "stream_s=5"], "no such file"),
    (["network=mininet", "network.trace=markov", "network.trace_states=[20,2000]", "stream_s=5"], "trace_states"),
    (["network=analytic", "stream_s=5"], "needs ranks that really run"),
    (["network=loopback", "stream_s=0"], "stream_s"),
    (["network=mininet", "network.loss_pct=100"], "loss_pct=100"),
    (["network=loopback", "method=astra", "method.index_loss=1"], "index_loss"),
])
def test_bad_condition_input_is_one_line_and_exit_2(tmp_path, args, needle):
    import subprocess
    import sys
    from pathlib import Path

    method = [] if any(a.startswith("method=") for a in args) else ["method=sp"]
    proc = subprocess.run([sys.executable, "-m", "harness.bench", *method, "devices=2", "model=vit_tiny",
                           f"results.path={tmp_path / 'r.parquet'}", *args],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "r.parquet").exists()


# ------------------------------------------------------------------------------------------- heterogeneous devices
import copy  # noqa: E402

from threadcomm import run_ranks  # noqa: E402

from harness.models import build_model, make_inputs  # noqa: E402
from harness.parallel import METHODS  # noqa: E402
from harness.parallel.sp import token_slices  # noqa: E402
from harness.spec.build import token_shares  # noqa: E402


@pytest.mark.parametrize("kind,dct", [("vit", True), ("vit", False), ("gpt2", False)])
@pytest.mark.parametrize("shares", [[9, 3, 1], [1, 2, 10]])
def test_uneven_shares_are_exact_against_single(tiny_cfg, kind, dct, shares):
    """sp (and astra with lossless VQ, the same exchange) on uneven token shares give the single-device output; each
    rank holds its share (plus the partitioned class token on rank 0)."""
    tokens = sum(shares)
    cfg = tiny_cfg(kind, tokens, heads=4, hidden=48)
    model = build_model(cfg, seed=3)
    x = make_inputs(cfg, tokens, batch=2, seed=3)
    ref = model(x, all_positions=True) if kind == "gpt2" else model(x)
    for method, opts in (("sp", {}), ("astra", {"vq": "lossless", "dct": dct})):
        if method == "sp" and not dct and kind == "vit":
            continue

        def fn(comm, method=method, opts=opts):
            plan = METHODS[method](copy.deepcopy(model), comm, {**opts, "shares": shares})
            return plan.forward(x, all_positions=True), plan

        outs = run_ranks(3, fn)
        extra = 1 if (kind == "vit" and method == "astra" and not dct) else 0
        assert [e - s for s, e in outs[0][1].slices] == [shares[0] + extra, *shares[1:]]
        errs = [(o.logits - p.reference_slice(ref, o)).abs().max().item() for o, p in outs if o.logits is not None]
        assert errs and max(errs) <= 1e-4, (method, errs)


def test_token_shares_proportional_and_listed():
    sp = METHODS["sp"]
    assert token_shares("proportional", [1.0, 0.5], 1024, 2, sp) == [683, 341]
    assert token_shares("proportional", [1.0, 1.0, 1.0], 10, 3, sp) is None  # the even partition
    assert token_shares([7, 3], [1.0, 1.0], 10, 2, sp) == [7, 3]
    assert token_shares("even", [1.0, 0.5], 10, 2, sp) is None
    assert token_shares("proportional", [8.0, 0.01], 4, 2, sp) == [3, 1]  # at least one token each
    assert token_slices(10, 1, 2, [7, 3]) == [(0, 8), (8, 11)]


@pytest.mark.parametrize("split,needle", [
    ([6, 3], "sums to 9"),
    ([10, 0], "no tokens"),
    ([4, 3, 3], "3 shares for 2 devices"),
    ("halves", "not a split"),
])
def test_bad_splits_are_refused(split, needle):
    with pytest.raises(ConfigError) as exc:
        token_shares(split, [1.0, 1.0], 10, 2, METHODS["sp"])
    assert needle in str(exc.value)
    with pytest.raises(ConfigError, match="only sp and astra"):
        token_shares([5, 5], [1.0, 1.0], 10, 2, METHODS["tp"])


def test_heterogeneous_devices_dilate_by_their_total():
    from types import SimpleNamespace

    from harness.emulation import dilation

    dev = SimpleNamespace(cores=[1.0, 0.5], dilation="auto", reserve_cores=0.25, reference_ms=None,
                          cfs_period_us=5000, allow_oversubscribe=False)
    k = dilation.factor(dev, 2, True, cores=2)
    assert k == 1.0  # 1.5 virtual cores fit the 1.75 left beside the reserve
    dev.cores = [2.0, 1.0, 1.0]
    k = dilation.factor(dev, 3, True, cores=2)
    assert k == pytest.approx(4.0 / 1.75)
    cols = dilation.check_fit(dev, 3, k, cores=2)
    assert cols["cpu_per_device"] == 2.0 and cols["cpu_real_per_device"] == pytest.approx(2.0 / k)
    assert cols["cores_per_device"] == "[2.0, 1.0, 1.0]"
    with pytest.raises(ConfigError, match="lists 2 values for 3 devices"):
        dilation.cores_of(SimpleNamespace(cores=[1.0, 2.0]), 3)
    with pytest.raises(ConfigError, match="network=mininet"):
        dilation.factor(SimpleNamespace(cores=[1.0, 0.5], dilation="auto", reference_ms=None), 2, False)
