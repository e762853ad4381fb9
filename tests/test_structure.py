"""The controller's structure and contracts, without running points: option schemas agree with conf/, every
experiment's sweep passes the command-line check, the import graph has no circle, no module outside
harness/parallel/ knows a method by name, the results store never merges different points, and --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from harness.config import APP_GROUPS, available, check_argv
from harness.errors import ConfigError
from harness.network import BACKENDS
from harness.options import did_you_mean, fields_of
from harness.parallel import METHODS
from harness.report.plot import latest_points
from harness.spec.build import build_spec, compose
from harness.spec.identity import point_key
from harness.spec.schema import RunSpec
from harness.store.results import append_row, load

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


# ---------------------------------------------------------------------------------------------------- schemas
def overrides_of(path: Path) -> dict:
    """What a YAML file sets, besides its defaults list."""
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("defaults", None)
    return data


def differs(value, default) -> bool:
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) != default
    return value != default


@pytest.mark.parametrize("group,registry", [("method", METHODS), ("network", BACKENDS)])
def test_every_setting_is_written_once(group, registry):
    """A method's or backend's options and defaults live in its Options dataclass only: its YAML file extends the
    defaults Hydra's ConfigStore holds for it and sets nothing more, and the composed group is those defaults."""
    assert sorted(available(group)) == sorted(registry), "a config file without a class, or a class without one"
    for name, cls in registry.items():
        assert overrides_of(CONF / group / f"{name}.yaml") == {}, f"conf/{group}/{name}.yaml repeats settings"
        composed = OmegaConf.to_container(compose([f"{group}={name}"])[group])
        assert composed == {**{f[0]: f[3] for f in fields_of(cls.Options)}, "name": name}


def test_device_and_topology_files_only_override():
    """A device or topology file sets only what differs from the schema's defaults, and composes to its name."""
    from harness.spec.schema import DeviceOptions, TopologyOptions

    for group, schema in (("device", DeviceOptions), ("topology", TopologyOptions)):
        defaults = {f[0]: f[3] for f in fields_of(schema)}
        for name in available(group):
            data = overrides_of(CONF / group / f"{name}.yaml")
            assert set(data) <= set(defaults), (name, set(data) - set(defaults))
            assert all(differs(v, defaults[k]) for k, v in data.items()), (name, "sets a default again")
            assert getattr(getattr(build_spec(compose([f"{group}={name}"])), group), "name") == name


def test_the_root_config_sets_no_setting():
    """conf/config.yaml chooses the groups and configures Hydra; every setting's default comes from the schema."""
    root = overrides_of(CONF / "config.yaml")
    assert set(root) == {"hydra"}, set(root)


def test_spec_round_trip_and_keys():
    spec = build_spec(compose(["model=gpt2_tiny", "method=astra", "method.groups=4", "network=analytic"]))
    again = RunSpec.from_json(spec.to_json())
    assert again == spec and type(again.method) is type(spec.method)
    assert point_key(spec) != point_key(spec.replace(method=spec.method.__class__(groups=8)))
    assert point_key(spec) == point_key(spec.replace(results=spec.results.__class__(path="elsewhere.csv")))


@pytest.mark.parametrize("experiment", available("experiment"))
def test_every_experiment_sweep_passes_the_check(experiment):
    cfg = compose([f"experiment={experiment}"], hydra_node=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    check_argv(["-m", f"experiment={experiment}", *params])
    # and every point of it builds a spec (first value of every swept key, each method in turn)
    methods = str(cfg.hydra.sweeper.params.method).split(",")
    firsts = [p.split(",")[0] for p in params if not p.startswith("method=")]
    for m in methods:
        spec = build_spec(compose([f"experiment={experiment}", f"method={m}", *firsts]), in_sweep=True)
        assert spec.method.name == m


def test_sweep_knob_of_some_methods_is_passed_on_as_force_add():
    out = check_argv(["-m", "method=sp,astra", "method.groups=1,2"])
    assert "++method.groups=1,2" in out
    with pytest.raises(ConfigError, match="no option groups"):
        check_argv(["method=sp", "method.groups=2"])
    assert check_argv(["method=astra", "method.groups=2"]) == ["method=astra", "method.groups=2"]


@pytest.mark.parametrize("argv,needle", [
    (["bandwith=10"], "did you mean network.bandwidth_mbps"),
    (["method.group=4"], "did you mean groups"),
    (["+method.group=4"], "did you mean groups"),
    (["network=mininet", "network.bandwith_mbps=4"], "did you mean bandwidth_mbps"),
    (["model=vit_tinny"], "did you mean vit_tiny"),
    (["experiment=mian"], "did you mean main"),
    (["~model"], "~model"),
    (["a=[1,"], "cannot read the override"),
    # a group name one typo away comes before a key that merely ends like it (network.collective_model)
    (["-m", "modle=vit_tiny,vit_base"], "(did you mean model?)"),
    (["-m", "network=analytic", "network.bandwidth_mbps=10", "100"],
     "write network.bandwidth_mbps=10,100 with -m (network.bandwidth_mbps=[a,b] is not a sweep but one point with a "
     "rate per device"),
    (["experiment=paper_fig1"], "experiment=paper_fig1 is a sweep over method, method.codebook_size, method.groups, "
                                "method.retained, network.bandwidth_mbps, devices: run it with -m"),
    (["experiment=main", "devices=2"], "run it with -m (astra-bench -m experiment=main ...)"),
    (["results.path=/proc/astra/out.parquet"], "results.path=/proc/astra/out.parquet: cannot write in /proc/astra"),
    (["-m", "method=sp,tp", "results.path=/proc/astra/out.parquet"], "cannot write in /proc/astra"),
])
def test_argv_check_refuses(argv, needle):
    with pytest.raises(ConfigError, match=None) as exc:
        check_argv(argv)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_did_you_mean():
    assert did_you_mean("bandwith", ["batch", "network.bandwidth_mbps"]) == " (did you mean network.bandwidth_mbps?)"
    assert did_you_mean("zzz", ["batch"]) == ""
    assert did_you_mean("modle", ["network.collective_model", "model"]) == " (did you mean model?)"
    assert did_you_mean("mdoel", ["network.collective_model", "model", "method"]) == " (did you mean model?)"


@pytest.mark.parametrize("a,b,near", [("modle", "model", True), ("mode", "model", True), ("models", "model", True),
                                      ("madel", "model", True), ("model", "model", False), ("mxdxl", "model", False),
                                      ("mod", "model", False), ("lmode", "model", False)])
def test_one_edit(a, b, near):
    from harness.options import one_edit

    assert one_edit(a, b) is near and one_edit(b, a) is near


def test_progress_shows_a_point_as_the_user_names_it():
    from harness.sweep.progress import shown

    task = ["method=sp", "++method.groups=1", "++method.codebook_size=1024", "network.bandwidth_mbps=10"]
    assert shown(task, {"method": {"name": "sp"}}) == ["method=sp", "network.bandwidth_mbps=10"]
    task[0] = "method=astra"
    assert shown(task, {"method": {"name": "astra"}}) == \
        ["method=astra", "method.groups=1", "method.codebook_size=1024", "network.bandwidth_mbps=10"]


def test_sweep_tally_counts_and_sets_the_exit_status():
    from harness.sweep.progress import Tally

    t = Tally()
    assert t.exit_status() == 0  # not a sweep
    t.start("r.parquet", allow_failures=False)
    t.add({"status": "ok"}, ["tokens=8", "method=sp", "devices=4"])
    t.add({"status": "ok", "skipped": True}, ["tokens=8", "method=single", "devices=4"])
    assert t.exit_status() == 0
    t.add({"status": "failed"}, ["tokens=8", "method=tp", "devices=5"])
    t.add(None, ["tokens=8", "method=astra", "devices=4"])  # a job that returned nothing failed too
    assert t.exit_status() == 1
    # failed points named by what sets them apart (tokens=8 is every point's)
    assert t.line() == ("[astra-bench] sweep finished: 1 ok, 2 failed (method=tp devices=5; method=astra "
                        "devices=4), 1 skipped (already measured) | results: r.parquet")
    t.start("r.parquet", allow_failures=True)
    t.add({"status": "failed"}, ["method=tp", "devices=5"])
    assert t.exit_status() == 0 and t.line().startswith("[astra-bench] sweep finished: 0 ok, 1 failed (method=tp")


# ------------------------------------------------------------------------------------------- results identity
def _row(method, latency, run_id, **config):
    spec = build_spec(compose([f"method={method}", "network=analytic", "network.bandwidth_mbps=10",
                               *[f"{k}={v}" for k, v in config.items()]]))
    from harness.store.row import row

    r = row(spec, spec.backend_class(spec).describe())
    r.update(latency_ms=latency, compute_ms=latency, comm_ms=0.0, payload_bytes=1, run_id=run_id,
             timestamp=f"2026-01-01T00:00:{len(run_id):02d}")
    return r


def test_rows_that_differ_in_a_setting_are_never_merged(tmp_path):
    store = tmp_path / "r.parquet"
    append_row(store, _row("single", 100.0, "s"))
    append_row(store, _row("astra", 50.0, "k64", **{"method.codebook_size": 64}))
    append_row(store, _row("astra", 40.0, "k1024", **{"method.codebook_size": 1024}))
    append_row(store, _row("sp", 80.0, "ring", **{"network.collective_model": "ring"}))
    append_row(store, _row("sp", 70.0, "paper", **{"network.collective_model": "paper"}))
    append_row(store, _row("sp", 60.0, "paper-again", **{"network.collective_model": "paper"}))  # a re-run
    pts = latest_points(load(store))
    assert sorted(pts["run_id"]) == ["k1024", "k64", "paper-again", "ring", "s"]
    assert pts["label"].is_unique, list(pts["label"])
    labels = dict(zip(pts["run_id"], pts["label"]))
    assert "K=64" in labels["k64"] and "K=1024" in labels["k1024"]
    assert "collective_model=paper" in labels["paper-again"] and "collective_model=ring" in labels["ring"]
    speed = dict(zip(pts["run_id"], pts["speedup"]))
    assert speed == pytest.approx({"s": 1.0, "k64": 2.0, "k1024": 2.5, "ring": 1.25, "paper-again": 100 / 60})


def test_speedup_baseline_matches_the_whole_model(tmp_path):
    store = tmp_path / "r.parquet"
    append_row(store, _row("single", 100.0, "s64", **{"model.hidden": 64}))
    append_row(store, _row("single", 400.0, "s128", **{"model.hidden": 128}))
    append_row(store, _row("sp", 200.0, "sp128", **{"model.hidden": 128}))
    df = load(store).set_index("run_id")
    assert df.loc["sp128", "speedup"] == pytest.approx(2.0)  # against the hidden=128 single run only


# --------------------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("module,mine,theirs", [
    ("harness.bench", ("experiment", "method.groups", "network.bandwidth_mbps", "astra-bench"), ("suite", "task ")),
    ("harness.train", ("suite", "task", "astra-train"), ("experiment", "topology")),
])
def test_help_lists_only_its_own_groups(module, mine, theirs):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    for word in mine:
        assert word in out.stdout, word
    groups = out.stdout.split("Config groups", 1)[1].split("\n\n", 1)[0]
    for word in theirs:
        assert word not in groups, word
    assert set(APP_GROUPS["config"]).isdisjoint(APP_GROUPS["train"])


def test_a_refused_point_in_a_sweep_is_recorded(tmp_path):
    from harness.store.row import failed_row

    store = tmp_path / "r.parquet"
    cfg = compose(["model=vit_tiny", "method=tp", "devices=3", f"results.path={store}"])
    out, path = failed_row(cfg, "tp splits heads over devices ...")
    assert path == str(store) and out["status"] == "failed" and out["method"] == "tp" and out["devices"] == 3
    # the settings it was asked to run, and no timed inference: it never ran
    assert out["repeats"] == 0 and json.loads(out["settings"])["repeats"] == 5
    bad = compose(["seed=abc", f"results.path={store}"])
    out, path = failed_row(bad, "seed=abc is not an integer")
    assert path == str(store) and out["status"] == "failed" and out["error"].startswith("seed=abc")
    append_row(store, out)
    assert list(load(store)["status"]) == ["failed"]


def test_identity_normalises_what_does_not_change_a_point():
    def key(*ov, timing=False):
        from harness.spec.identity import timing_key

        spec = build_spec(compose(["method=sp", "network=analytic", *ov]))
        return timing_key(spec) if timing else point_key(spec)

    assert key("network.bandwidth_mbps=100") == key("network.bandwidth_mbps=100.0") == \
        key("network.bandwidth_mbps=[100,100]")
    assert key("network.bandwidth_mbps=100") != key("network.bandwidth_mbps=[100,10]")
    assert key("device.cores=0.5") == key()  # the analytic backend enforces no CPU quota: only threads matter
    assert key("device.name=other") == key()
    assert key("verify=true") != key() and key("verify=true", timing=True) == key(timing=True)


@pytest.mark.parametrize("argv,needle", [
    (["-m", "method=sp", "devices=2,0"], "devices=0"),
    (["-m", "network=analytic", "network.bandwidth_mbps=10,abc"], "abc is not a number"),
    (["results=3"], "results is a group of settings"),
    (["seed=99999999999999999999"], "<= 2147483647"),
    (["timeout_s=1e14"], "<= 604800"),
])
def test_every_value_is_checked_before_any_point(argv, needle):
    with pytest.raises(ConfigError) as exc:
        check_argv(argv)
    assert needle in str(exc.value)


def test_model_fields_of_the_other_family_are_passed_on():
    assert "++model.max_positions=512" in check_argv(["-m", "model=gpt2_tiny,vit_tiny", "model.max_positions=512"])


def test_per_device_bandwidths_have_a_single_baseline():
    from harness.spec.identity import baseline_key, timing_key

    sp = build_spec(compose(["method=sp", "network=analytic", "network.bandwidth_mbps=[10,100]"]))
    single = build_spec(compose(["method=single", "network=analytic", "network.bandwidth_mbps=[10,100]"]),
                        in_sweep=True)
    assert baseline_key(sp) == timing_key(single)


def test_every_top_level_knob_is_in_the_config():
    """A Knobs field missing from conf/config.yaml could not be set from the command line (unknown key)."""
    from harness.options import fields_of
    from harness.spec.build import compose
    from harness.spec.schema import GROUP_SCHEMAS, Knobs

    cfg = compose([])
    assert not [name for name, *_ in fields_of(Knobs) if name not in cfg]
    for group, schema in GROUP_SCHEMAS.items():
        assert not [name for name, *_ in fields_of(schema) if name not in cfg[group]], group
