"""The command line before Hydra (harness.config): every bad override refused in one line, knobs of some swept choices
passed on, every experiment sweep accepted, did-you-mean, each app's --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import APP_GROUPS, available, check_argv
from harness.errors import ConfigError
from harness.options import did_you_mean
from harness.spec.build import build_spec, compose

REPO = Path(__file__).resolve().parents[1]


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
    (["experiment=paper_fig1"], "experiment=paper_fig1 is a sweep over method, method.codebook_size, "
                                "method.kv_table, method.groups, method.retained, network.bandwidth_mbps, devices, "
                                "network.compute: run it with -m"),
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


@pytest.mark.slow
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
