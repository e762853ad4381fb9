"""Compute profiles and their replay (device.compute=replay): a recorded profile's calls are the real run's calls
byte for byte for every method; a replay issues them again, sleeping through the recorded compute; a profile file
round-trips; bad profiles are refused in one line; the analytic backend charges its formula on the same profile."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from threadcomm import run_ranks

from harness.comm.collectives import SimulatedComm
from harness.comm.profile import Call, RankProfile, check_matches, find, load, payload_bytes
from harness.errors import ConfigError
from harness.models import make_inputs
from harness.rank.profile import record_profile
from harness.rank.replay import ReplayPlan
from harness.rank.worker import fresh_model
from harness.spec.build import build_spec, compose
from harness.spec.identity import profile_point

REPO = Path(__file__).resolve().parents[1]
CASES = [("single", 1), ("tp", 2), ("sp", 3), ("astra", 2), ("astra", 3), ("bp_ag", 2), ("bp_sp", 2), ("ring_attn", 3),
         ("galaxy", 2)]


def spec_of(method: str, devices: int, tmp_path: Path, *extra: str):
    over = [f"method={method}", f"devices={devices}", "model=vit_tiny", "tokens=50", f"cache_dir={tmp_path}"]
    if method == "astra":
        over += ["method.codebook_size=16", "method.kmeans_iters=2"]
    spec = build_spec(compose(over + list(extra)))
    return spec.method_class.prepare(spec, lambda msg: None)


def real_calls(spec) -> list[list[tuple]]:
    """Every rank's collective calls (op, tag, payload bytes) in one inference of the real plan over threads."""
    def rank(comm):
        model = fresh_model(spec)
        inputs = make_inputs(spec.model, spec.tokens, spec.batch, seed=spec.seed)
        spec.method_class.plan(model, comm, spec).forward(inputs)
        return [(r.op, r.tag, r.payload_bytes) for r in comm.records]

    return run_ranks(spec.devices, rank)


@pytest.mark.parametrize("method,devices", CASES)
def test_recorded_calls_are_the_real_runs_byte_for_byte(tmp_path, method, devices):
    spec = spec_of(method, devices, tmp_path)
    profile = record_profile(spec, repeats=1, warmup=0)
    assert [r.rank for r in profile.ranks] == list(range(devices))
    recorded = [[(c.op, c.tag, payload_bytes(c) if devices > 1 else 0) for c in r.calls if c.op != "wait"]
                for r in profile.ranks]
    assert recorded == real_calls(spec)
    assert all(r.compute_s > 0 for r in profile.ranks)
    if devices > 1:  # and replayed, the same calls move the same bytes again
        replayed = run_ranks(devices, lambda comm: (ReplayPlan(profile.ranks[comm.rank], comm).forward(),
                                                    [(x.op, x.tag, x.payload_bytes) for x in comm.records])[1])
        assert replayed == recorded


@pytest.mark.parametrize("room", [True, False])
def test_profiles_recorded_together_run_in_rotating_rounds(tmp_path, monkeypatch, room):
    """A method's ranks and its single device are recorded in rounds, one inference each in turn, the order
    rotating, so a drift of the machine lands on all of them; when their models would not fit in memory together,
    rank after rank. Each profile is of its own point."""
    from harness.comm.profile import RecordingComm
    from harness.rank import profile as prof

    sp, single = spec_of("sp", 2, tmp_path), spec_of("single", 1, tmp_path)
    order = []
    start = RecordingComm.start
    monkeypatch.setattr(RecordingComm, "start", lambda self: (order.append((self.world, self.rank)), start(self)))
    monkeypatch.setattr(prof, "ATTEMPTS", 1)
    if not room:
        import harness.models.transformer as tr

        monkeypatch.setattr(tr, "parameter_count", lambda model: 1 << 60)
    got = prof.record_profiles([sp, single], repeats=2, warmup=1)
    if room:
        assert order == [(2, 0), (2, 1), (1, 0), (2, 1), (1, 0), (2, 0), (1, 0), (2, 0), (2, 1)]
    else:
        assert order == [(2, 0)] * 3 + [(2, 1)] * 3 + [(1, 0)] * 3
    assert [p.point for p in got] == [profile_point(sp), profile_point(single)]
    assert [len(p.ranks) for p in got] == [2, 1] and all(r.compute_s > 0 for p in got for r in p.ranks)


def test_a_reference_profile_is_scaled_by_the_single_device_of_its_own_rounds(tmp_path, monkeypatch):
    """``device.profile=reference``: the multi-device profile keeps the compute its single device took in the same
    recording rounds (``single_s``) and is scaled by it, not by a single device recorded at another moment."""
    from harness.rank import profile as prof

    monkeypatch.setattr(prof, "_FRESH", {})
    spec = spec_of("sp", 2, tmp_path, "device.compute=replay", "device.profile=reference",
                   "device.reference_ms=100")
    said = []
    ready = prof.prepare(spec, said.append)
    replayed = load(ready.profile_path)
    single_s = replayed.measured["single_s"]
    assert single_s > 0 and replayed.measured["scale"] == pytest.approx(0.1 / single_s)
    cached = sorted(p.name for p in (tmp_path / "profiles").glob("*.json"))
    assert len(cached) == 1 and cached[0].startswith("vit_tiny-sp-N2")  # the single is not a profile of its own
    assert prof.measured(spec, said.append, single=spec) is prof.measured(spec, said.append, single=spec)
    alone = spec.replace(devices=1, method=spec_of("single", 1, tmp_path).method, shares=None)
    mine = load(prof.prepare(alone, said.append).profile_path)
    assert mine.ranks[0].compute_s == pytest.approx(0.1)  # the single device itself: its own compute is the scale


def test_replay_sleeps_through_each_segment():
    rank = RankProfile(0, [Call(0.020, "all_gather", "a", {"shape": [4, 8], "dtype": "float32"}),
                           Call(0.005, "all_reduce", "b", {"shape": [16], "dtype": "float32", "wire": "fp32"})], 0.030)
    plan = ReplayPlan(rank, SimulatedComm(0, 2))
    took = []
    for _ in range(5):
        t0 = time.perf_counter()
        plan.forward()
        took.append(time.perf_counter() - t0)
    assert statistics.median(took) == pytest.approx(0.055, abs=0.004)
    assert plan.segments_s[:3] == [0.020, 0.005, 0.030] and len(plan.lateness_s) == 15
    assert [r.payload_bytes for r in plan.comm.records[:2]] == [128, 64]


def test_a_profile_file_round_trips(tmp_path):
    spec = spec_of("sp", 2, tmp_path)
    profile = record_profile(spec, repeats=2, warmup=0)
    path = profile.save(tmp_path / "p.json")
    again = load(path)
    assert again == profile and again.to_json() == profile.to_json()
    assert find(path, profile_point(spec)) == path and find(tmp_path, profile_point(spec)) == path
    half = profile.scaled(0.5)
    assert half.ranks[1].compute_s == pytest.approx(profile.ranks[1].compute_s / 2)
    assert half.measured["scale"] == 0.5 and half.ranks[1].calls[0].args == profile.ranks[1].calls[0].args


def test_a_cached_profile_is_measured_again_when_the_machine_changed_speed(tmp_path, monkeypatch):
    """A VM's speed drifts: a cached profile is reused only while the speed probe agrees with the one taken when it
    was recorded, and a recording during which the probe moved is taken again."""
    from harness.rank import profile as prof

    spec = spec_of("sp", 2, tmp_path)
    speed = iter([10.0, 10.2,  # the first recording: probe before and after
                  10.1,  # a cache hit at the same speed
                  13.0, 13.0, 15.0, 13.1, 13.2])  # 30 % slower: recorded again; the first recording drifted
    monkeypatch.setattr(prof, "speed_probe", lambda threads=1: next(speed))
    monkeypatch.setattr(prof, "FRESH_S", 0.0)  # every use checks the machine (in a sweep: after 2 minutes)
    monkeypatch.setattr(prof, "_FRESH", {})
    said = []
    first = prof.measured(spec, said.append, repeats=1, warmup=0)
    assert first.measured["probe_ms"] == pytest.approx(10.1) and first.measured["probe_drift"] == pytest.approx(0.02)
    assert first.measured["spread"] >= 0
    assert prof.measured(spec, said.append, repeats=1, warmup=0) == first and len(said) == 1
    again = prof.measured(spec, said.append, repeats=1, warmup=0)
    assert again.measured["probe_ms"] == pytest.approx(13.15)
    assert "0.78x the speed it was measured at" in said[1] and "moved 15 %" in said[2]
    assert next(speed, None) is None  # every probe was taken: the cache was not trusted blindly
    monkeypatch.setattr(prof, "speed_probe", lambda threads=1: 13.5)  # within DRIFT of 13.15: the cache serves
    assert prof.measured(spec, said.append, repeats=1, warmup=0) == again and len(said) == 4
    monkeypatch.setattr(prof, "FRESH_S", 120.0)
    monkeypatch.setattr(prof, "speed_probe", lambda threads=1: 99.0)  # would mean re-recording ...
    assert prof.measured(spec, said.append, repeats=1, warmup=0) == again and len(said) == 4  # ... but just checked


def test_bad_profiles_are_refused_in_one_line(tmp_path):
    spec = spec_of("sp", 2, tmp_path)
    good = record_profile(spec, repeats=1, warmup=0)
    path = good.save(tmp_path / "p.json")
    text = path.read_text()
    cases = {
        "truncated": (text[: len(text) // 2], "is not a readable profile"),
        "format": (text.replace("astra-profile/1", "other/9"), "format is 'other/9'"),
        "ranks": (json.dumps({**json.loads(text), "ranks": json.loads(text)["ranks"][:1]}), "1 ranks for devices=2"),
        "op": (text.replace('"all_gather"', '"broadcast"', 1), "calls 'broadcast'"),
    }
    for name, (content, needle) in cases.items():
        bad = tmp_path / f"{name}.json"
        bad.write_text(content)
        with pytest.raises(ConfigError) as exc:
            load(bad)
        assert needle in str(exc.value) and "\n" not in str(exc.value), name
    with pytest.raises(ConfigError, match="recorded for method=sp, this point has method=tp"):
        check_matches(good, profile_point(spec_of("tp", 2, tmp_path)))
    with pytest.raises(ConfigError, match="recorded for devices=2, this point has devices=3"):
        check_matches(good, profile_point(spec_of("sp", 3, tmp_path)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no profile of this point"):
        find(tmp_path / "empty", profile_point(spec))


def test_replay_settings_are_checked():
    def refused(*over):
        with pytest.raises(ConfigError) as exc:
            build_spec(compose(["device.compute=replay", *over]))
        return str(exc.value)

    assert "a replay does not dilate time" in refused("network=mininet", "device.dilation=2")
    assert "set device.reference_ms" in refused("device.profile=reference")
    assert "add device.profile=reference" in refused("device.reference_ms=100")
    assert "replayed ranks compute nothing to compare" in refused("verify=true")
    assert "does not exist" in refused("device.profile=/nonexistent/profiles")
    with pytest.raises(ConfigError, match="add device.compute=replay"):
        build_spec(compose(["device.profile=reference"]))
    spec = build_spec(compose(["device.compute=replay", "network=mininet", "devices=32", "tokens=64"]))
    assert spec.dilation == 1.0 and spec.solo_repeats == 0 and spec.tick_us == 0 and spec.cores_of_ranks is None


def test_analytic_charges_the_same_profile(tmp_path):
    from harness.bench import run_point

    over = ["method=sp", "devices=2", "model=vit_tiny", "tokens=50", "network=analytic", "network.bandwidth_mbps=10",
            "device.compute=replay", f"cache_dir={tmp_path}", f"results.path={tmp_path / 'r.parquet'}", "repeats=1",
            "warmup=0"]
    row = run_point(compose(over), sweep=False)
    profile = load(row_profile(tmp_path, row))
    bits = max(sum(payload_bytes(c) for c in r.calls) for r in profile.ranks) * 8
    slowest = max(r.compute_s for r in profile.ranks)
    assert row["compute_source"] == "profile" and row["device_compute"] == "replay"
    assert row["latency_ms"] == pytest.approx(1e3 * (slowest + bits / 10e6), rel=1e-6)


def row_profile(cache: Path, row: dict) -> Path:
    return cache / "profiles" / "replay" / f"{row['profile_id']}.json"


@pytest.mark.slow
def test_a_replayed_single_device_takes_its_profiles_time_on_loopback(tmp_path):
    """The single baseline replayed through the CLI: its latency is its recorded compute (scaled to the reference);
    a replayed sp point's rows carry the wake-up statistics and a verdict."""
    cmd = [sys.executable, "-m", "harness.bench", "-m", "model=vit_tiny", "tokens=50", "devices=2",
           "method=single,sp", "device.compute=replay", "device.profile=reference", "device.reference_ms=40",
           f"cache_dir={tmp_path}", f"results.path={tmp_path / 'r.parquet'}", "repeats=5", "warmup=1",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {r["method"]: r for r in (json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{"))}
    assert rows["single"]["latency_ms"] == pytest.approx(40, abs=3)
    assert rows["single"]["profile_scale"] > 0
    sp = rows["sp"]
    assert sp["device_compute"] == "replay" and sp["dilation"] == 1.0 and sp["compute_inflation"] is None
    assert sp["wake_late_p99_ms"] is not None and sp["wake_late_p50_ms"] < 1.0
    assert sp["fidelity"] == "ok" or "woke late" in sp["fidelity"]
    assert sp["payload_bytes"] > 0
    # device.replay_sched=fifo: real-time ranks where the process may (root), the normal scheduler elsewhere
    assert sp["replay_sched"] == ("fifo" if os.geteuid() == 0 else "other")


@pytest.mark.slow
def test_a_bad_profile_file_is_one_line_on_the_command_line(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"format": "astra-profile/1", "ranks": [')
    p = subprocess.run([sys.executable, "-m", "harness.bench", "method=sp", "device.compute=replay",
                        f"device.profile={bad}", f"results.path={tmp_path / 'r.parquet'}"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "is not a readable profile" in lines[0], p.stderr
    assert not (tmp_path / "r.parquet").exists()


@pytest.mark.mininet
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mnexec"),
                    reason="needs root and Mininet (apt-get install mininet; scripts/setup.sh does)")
def test_replay_on_mininet_keeps_its_segments_and_true_link_rates(tmp_path):
    """Replayed on Mininet hosts: the single device takes its (scaled) profile's time, a replayed sp point runs
    undilated over links at their true rate, its collectives move the recorded bytes, and its row carries the
    wake-up statistics."""
    cmd = [sys.executable, "-m", "harness.bench", "-m", "model=vit_tiny", "model.hidden=128", "tokens=256",
           "devices=2", "method=single,sp", "network=mininet", "network.bandwidth_mbps=10", "device.compute=replay",
           "device.profile=reference", "device.reference_ms=60", f"cache_dir={tmp_path}",
           f"results.path={tmp_path / 'r.parquet'}", "repeats=4", "warmup=2", f"hydra.sweep.dir={tmp_path / 's'}"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {r["method"]: r for r in (json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{"))}
    assert rows["single"]["latency_ms"] == pytest.approx(60, abs=4)
    sp = rows["sp"]
    assert sp["dilation"] == 1.0 and sp["device_compute"] == "replay" and sp["wake_late_p50_ms"] < 1.0
    assert sp["replay_sched"] == "fifo"  # the workers left their hosts' CPU cgroups, whose real-time budget is 0
    # 2 blocks x 128 tokens x 128 x 4 B per rank: the shaped 10 Mbit/s link, not a dilated one, sets its time
    assert sp["payload_bytes"] == 2 * 128 * 128 * 4 and sp["wire_bytes"] >= sp["payload_bytes"]
    assert sp["comm_ms"] >= 0.8 * sp["payload_bytes"] * 8 / 10e6 * 1e3


def test_realtime_scheduling_is_asked_for_and_given_back():
    """``device.replay_sched=fifo``: a replayed rank asks for SCHED_FIFO (granted to root) and returns to the
    normal scheduler; the choice is part of the point's identity."""
    from harness.rank.worker import realtime
    from harness.spec.identity import timing_key

    got = realtime(True)
    try:
        assert got == (os.geteuid() == 0)
    finally:
        assert realtime(False) is False
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    base = ["device.compute=replay", "device.profile=measure", "method=sp", "devices=2"]
    fifo, other = (build_spec(compose([*base, f"device.replay_sched={s}"])) for s in ("fifo", "other"))
    assert timing_key(fifo) != timing_key(other)


@pytest.mark.slow  # astra's k-means (scikit-learn) starts a process
@pytest.mark.parametrize("method,devices", [("single", 1), ("tp", 3), ("sp", 3), ("astra", 3), ("ring_attn", 3),
                                            ("galaxy", 2)])
def test_a_profile_of_two_blocks_stands_for_the_whole_depth(tmp_path, method, devices):
    """``device.profile_layers=2``: recorded on 2 of 5 blocks, the profile makes exactly the calls of a recording of
    all 5 (tags, shapes, started collectives and their waits renumbered), and its compute is of the same size."""
    spec = spec_of(method, devices, tmp_path, "model=llama_tiny", "model.layers=5", "tokens=32")
    full = record_profile(spec, repeats=1, warmup=1)
    short = record_profile(spec.replace(device=dataclasses.replace(spec.device, profile_layers=2)), repeats=1,
                           warmup=1)
    assert short.point == full.point and short.measured["layers_recorded"] == 2
    for a, b in zip(full.ranks, short.ranks):
        assert [(c.op, c.tag, c.args) for c in a.calls] == [(c.op, c.tag, c.args) for c in b.calls]
        assert 0.3 < b.compute_s / a.compute_s < 3  # the same work (timing on this machine is not held closer)


def test_repeating_blocks_adds_the_last_blocks_segments():
    from harness.comm.profile import repeat_blocks

    calls = [Call(1.0, "mark", "block0", {}), Call(2.0, "all_gather", "block0", {}),
             Call(0.5, "mark", "block1", {}), Call(3.0, "all_gather", "block1.attn", {"async": 1}),
             Call(4.0, "wait", "block1.attn", {"async": 1}), Call(0.25, "mark", "end", {})]
    out = repeat_blocks(RankProfile(0, calls, tail_s=0.125), 4)
    assert [(c.op, c.tag, c.args) for c in out.calls] == [
        ("all_gather", "block0", {}), ("all_gather", "block1.attn", {"async": 1}), ("wait", "block1.attn", {"async": 1}),
        ("all_gather", "block2.attn", {"async": 2}), ("wait", "block2.attn", {"async": 2}),
        ("all_gather", "block3.attn", {"async": 3}), ("wait", "block3.attn", {"async": 3})]
    assert [c.compute_s for c in out.calls] == [3.0, 3.5, 4.0, 3.5, 4.0, 3.5, 4.0]
    assert out.tail_s == 0.375
    with pytest.raises(RuntimeError, match="no block marks"):
        repeat_blocks(RankProfile(0, calls[:2], 0.0), 4)


def test_block_parallel_profiles_need_every_block(tmp_path):
    spec = build_spec(compose(["method=bp_ag", "devices=2", "model=llama_tiny", "model.layers=4", "tokens=16",
                               f"cache_dir={tmp_path}", "device.profile_layers=2"]))
    with pytest.raises(ConfigError, match="blocks of different kinds"):
        record_profile(spec, repeats=1, warmup=0)
