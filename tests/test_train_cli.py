"""``astra-train`` end to end at smoke size, as real subprocesses: every stage, the checkpoint round trip, the
real multi-process runtime agreeing with the simulation, ``astra-bench`` on a trained checkpoint, and bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 420


def run(args: list[str], tmp: Path, module: str = "harness.train") -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)}
    tmp.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)


def assert_one_line_error(p: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert p.returncode == code, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith(("astra-train: error:", "astra-bench: error:"))]
    assert len(errors) == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def store(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


@pytest.fixture(scope="module")
def vit(digits_smoke):
    """digits_smoke with G=1 and G=16 (DCT) and G=1 with a single class token, K=16 (``conftest.py``: the
    accuracy notebook's test reads the same run)."""
    return digits_smoke


@pytest.fixture(scope="module", params=["gpt2_bytes", "llama_bytes"])
def gpt(tmp_path_factory, request):
    """The byte-level text task with the GPT2 and with the Llama-family decoder."""
    tmp = tmp_path_factory.mktemp(request.param)
    p = run(["task=pydoc_smoke", f"task.model={request.param}", f"out_dir={tmp}/out",
             f"results_path={tmp}/acc.parquet", "astra.codebook_size=16", "astra.devices=3", "evaluate.weight_bits=[]",
             "evaluate.index_loss=[]", "evaluate.fpar_quintiles=false"],
            tmp)  # the extra evaluations (Tables 5, 9, 11) are checked on the ViT run
    assert p.returncode == 0, p.stderr[-4000:]
    return tmp, p


def value(df, metric, split="test", **kw):
    sel = df[(df["metric"] == metric) & (df["eval_split"] == split)]
    for k, v in kw.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, (metric, kw, sel)
    return float(sel["value"].iloc[0])


def test_vit_every_stage(vit):
    tmp, p = vit
    df = store(tmp / "acc.parquet")
    full = value(df, "top1", method="full")
    full_loss = value(df, "loss", method="full")
    astra = df[df["method"] == "astra"]
    assert set(zip(astra["groups"], astra["dct"])) == {(1, True), (16, True), (1, False)}
    g1 = value(df, "top1", method="astra", groups=1, dct=True)
    assert math.isfinite(g1) and 0 <= g1 <= 100
    # K=16 with one group is very lossy: below the full-precision model
    assert g1 <= full and value(df, "loss", method="astra", groups=1, dct=True) > full_loss
    assert full > 25  # the base model learned something (10 classes)
    # the real multi-process runtime on loopback predicts exactly what the simulation predicts
    agree = astra[astra["metric"] == "runtime_agreement"]["value"]
    assert len(agree) == 3 and (agree == 1.0).all()
    assert (astra[astra["metric"] == "runtime_max_abs_diff"]["value"] < 1e-3).all()
    tables = (tmp / "out" / "tables.md").read_text()
    assert "vs groups G" in tables and "single vs distributed" in tables
    assert "| 16 |" in p.stdout
    # Table 5: the full model and every ASTRA variant also after 8- and 4-bit post-training weight quantization;
    # 8 bits costs (almost) nothing, 4 bits changes the model
    for bits in (8, 4):
        assert 0 <= value(df, f"top1_w{bits}", method="full") <= 100
        assert len(astra[astra["metric"] == f"top1_w{bits}"]) == 3
    assert abs(value(df, "top1_w8", method="full") - full) <= 2.0
    assert value(df, "loss_w4", method="full") != full_loss
    assert "post-training weight quantization (paper Table 5)" in tables
    # Table 11: lost indices (1 % and 5 %, masked) for every ASTRA variant; Table 9: FPAR quintiles of random splits
    for pct in (1, 5):
        assert len(astra[astra["metric"] == f"top1_loss{pct}"]) == 3
    assert "lost indices (paper Table 11)" in tables
    quint = astra[astra["eval_split"] == "test_random_split"]
    for q in range(1, 6):
        assert len(quint[quint["metric"] == f"top1_fparq{q}"]) == 3
    lo = [value(df, f"fpar_q{q}_lo", "test_random_split", groups=16, dct=True) for q in range(1, 6)]
    hi = [value(df, f"fpar_q{q}_hi", "test_random_split", groups=16, dct=True) for q in range(1, 6)]
    assert lo == sorted(lo) and all(a <= b for a, b in zip(lo, hi)) and lo[0] >= 0.25 - 1e-6  # 4 devices: >= 1/4
    assert "per FPAR quintile on random uneven splits (paper Table 9)" in tables


def test_more_groups_lower_quantization_error(vit):
    tmp, _ = vit
    df = store(tmp / "acc.parquet")
    assert value(df, "quant_rel_mse", groups=16, dct=True) < value(df, "quant_rel_mse", groups=1, dct=True)
    from safetensors import safe_open

    def calib_mse(g):
        with safe_open(str(tmp / "out" / "calib" / f"G{g}-K16.safetensors"), "pt") as f:
            return json.loads(f.metadata()["rel_mse"])

    assert all(a < b for a, b in zip(calib_mse(16), calib_mse(1)))


def test_checkpoint_round_trip(vit):
    from omegaconf import OmegaConf

    from harness.parallel.codebooks import load_codebooks
    from harness.parallel.manifest import VARIANT_KEYS
    from harness.train.checkpoint import load_checkpoint
    from harness.train.sim import AstraSim
    from harness.train.tasks import evaluate_split, load_task, sim_options

    tmp, _ = vit
    d = tmp / "out" / "runs" / "G16-K16-N4-lam1-beta0.0005-dct-contiguous"
    man = json.loads((d / "manifest.json").read_text())
    assert man["status"] == "complete" and man["step"] == man["steps"]
    assert (man["groups"], man["codebook_size"], man["devices"], man["noise_lambda"], man["dct"]) == (16, 16, 4, 1.0, True)
    assert load_codebooks(d).shape == (2, 16, 16, 4)
    model, state, m = load_checkpoint(d, 0)
    from safetensors.torch import load_file

    saved = load_file(str(d / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    # re-evaluating the loaded checkpoint reproduces the stored accuracy
    cfg = OmegaConf.load(REPO / "conf" / "train.yaml")
    cfg.task = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "task" / "digits.yaml"),
                               OmegaConf.load(REPO / "conf" / "task" / "digits_smoke.yaml"))
    del cfg.task["defaults"]
    task = load_task(cfg)
    sim = AstraSim(model, state, sim_options({k: m[k] for k in VARIANT_KEYS}))
    top1 = evaluate_split(task, model, lambda x: sim.forward(x)[0], "test")["top1"]
    df = store(tmp / "acc.parquet")
    assert top1 == pytest.approx(value(df, "top1", method="astra", groups=16, dct=True), abs=1e-9)


@pytest.mark.slow
def test_rerun_reuses_stages(vit):
    tmp, _ = vit
    p = run(["task=digits_smoke", f"out_dir={tmp}/out", f"results_path={tmp}/acc.parquet", "astra.codebook_size=16",
             "suite.groups=[1,16]", "suite.dct_off_groups=[1]", "stages=[base,calibrate,finetune]"], tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "base: reusing" in p.stderr and p.stderr.count("finetune: reusing") == 3


@pytest.mark.slow
def test_bench_runs_trained_checkpoint(vit):
    tmp, _ = vit
    d = tmp / "out" / "runs" / "G16-K16-N4-lam1-beta0.0005-dct-contiguous"
    common = ["model=vit_digits", "model.layers=2", "tokens=64", "devices=2", "method=astra", "repeats=1",
              "warmup=0", f"method.checkpoint={d}", f"results.path={tmp}/bench.parquet"]
    p = run([*common, "method.groups=16", "method.codebook_size=16"], tmp, "harness.bench")
    assert p.returncode == 0, p.stderr[-3000:]
    row = json.loads(p.stdout.strip().splitlines()[-1])
    assert row["status"] == "ok" and row["vq"] == "checkpoint"
    assert row["payload_bytes"] == 2 * math.ceil(32 * 16 * 4 / 8) + 64 * 4  # 2 blocks of indices + the DCT pool
    assert "fine-tuned for 4 devices" in p.stderr  # device count differs from training: warned
    bad = run([*common, "method.groups=1", "method.codebook_size=16"], tmp, "harness.bench")
    assert_one_line_error(bad, 2, "G=16 K=16", "G=1 K=16")
    bad = run([*common[:1], *common[2:], "method.groups=16", "method.codebook_size=16"], tmp, "harness.bench")
    assert_one_line_error(bad, 2, "layers=2 (run: 4)")


def test_text_model_every_stage(gpt):
    tmp, p = gpt
    df = store(tmp / "acc.parquet")
    full = value(df, "ppl", method="full")
    astra = value(df, "ppl", method="astra")
    same_weights = value(df, "ppl_fp", method="astra")
    assert math.isfinite(astra) and astra > same_weights and astra > full
    assert value(df, "runtime_agreement", method="astra") == 1.0  # the multi-process runtime agrees with training's
    assert df[df["method"] == "astra"]["dct"].isna().all()
    llama = "llama" in tmp.name
    assert ("paper (Llama-3-8B, Wikipedia)" in p.stdout) == llama and ("GPT2-S" in p.stdout) != llama


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(vit):
    tmp, _ = vit
    p = run(["task=digits_smoke", f"out_dir={tmp}/out", f"results_path={tmp}/nan.parquet", "astra.codebook_size=16",
             "astra.noise_lambda=0.5", "task.finetune.inject_nan_at_step=7"], tmp)
    assert_one_line_error(p, 1, "non-finite loss at step 7", "step 5")
    d = tmp / "out" / "runs" / "G1-K16-N4-lam0.5-beta0.0005-dct-contiguous"
    man = json.loads((d / "manifest.json").read_text())
    assert man["status"] == "partial" and man["step"] == 5
    from harness.train.checkpoint import load_checkpoint

    model, state, _ = load_checkpoint(d, 0)
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    assert torch.isfinite(state.codebooks).all()
    assert not (tmp / "nan.parquet").exists()


BAD = [
    (["task=imagefolder", "task.path=/nonexistent/astra-images"], "does not exist"),
    (["task=imagefolder", "task.path={empty}"], "holds no images"),
    (["task=textfiles", "task.path={empty}"], "holds no text"),
    (["task=imagefolder"], "needs task.path"),
    (["task=digits_smoke", "astra.groups=3"], "does not divide the hidden size 64"),
    (["task=digits_smoke", "astra.codebook_size=65536"], "exceeds the 14336 calibration vectors"),
    (["task=digits_smoke", "suite=nope"], "unknown suite 'nope'"),
    (["task=digits_smoke", "stages=[base,train]"], "unknown stage"),
    (["task=digits_smoke", "results_path=x.json"], "must end in .parquet or .csv"),
    (["task=digits_smoke", "task.finetune.steps=0"], "task.finetune.steps=0 must be an integer >= 1"),
    (["task=digits_smoke", "evaluate.runtime_batch=0"], "evaluate.runtime_batch=0 must be an integer >= 1"),
    (["task=digits_smoke", "task.test_fraction=1.5"], "between 0 and 1"),
    (["task=digits_smoke", "stages=finetune"], "no base model"),
    (["task=digits_smoke", "stages=evaluate", "checkpoint={empty}"], "not an astra-train checkpoint"),
    (["task=digits_smoke", "threads=abc"], "threads=abc must be an integer"),
    (["task=digits_smoke", "astra.devices=abc"], "astra.devices=abc is not an integer"),
    (["task=digits_smoke", "astra.groupz=2"], "did you mean astra.groups"),
    (["task=digits_smoke", "+astra.groups=2"], "write astra.groups=<value>"),
    (["task=digits_smoke", "evaluate.timeout_s=0"], "evaluate.timeout_s=0"),
    (["task=digits_smoke", "task.eval_limit=-3"], "task.eval_limit=-3"),
    (["task=digits_smoke", "suite.groups=[a]"], "not a number"),
    (["task=digits_smoke", "out_dir={empty}/../afile"], "is a file"),
    (["task=digits_smoke", "results_path={empty}/../broken.parquet"], "not a readable parquet store"),
    (["task=digits_smok"], "did you mean digits_smoke"),
    (["task=digits_smoke", "task.model_overrides.hiden=3"], "did you mean hidden"),
    (["task=digits_smoke", "evaluate.weight_bits=[8,3]"], "3 is not supported"),
    (["task=digits_smoke", "evaluate.weight_group=48"], "evaluate.weight_group=48 does not divide"),
    (["task=digits_smoke", "+task.model_overrides.weight_bits=8"], "training runs in full precision"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", BAD, ids=[b[1].split()[0] + str(i) for i, b in enumerate(BAD)])
def test_bad_input_one_line_nothing_written(tmp_path, args, needle):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "afile").write_text("")
    (tmp_path / "broken.parquet").write_text("not parquet")
    args = [a.format(empty=empty) for a in args]
    p = run([f"out_dir={tmp_path}/out", f"results_path={tmp_path}/acc.parquet", *args], tmp_path / "cwd")
    assert_one_line_error(p, 2, needle)
    assert not (tmp_path / "out").exists() and not (tmp_path / "acc.parquet").exists()
    assert (tmp_path / "broken.parquet").read_text() == "not parquet" and (tmp_path / "afile").read_text() == ""


@pytest.mark.slow
def test_checkpoint_mismatch(vit, tmp_path):
    tmp, _ = vit
    d = tmp / "out" / "runs" / "G16-K16-N4-lam1-beta0.0005-dct-contiguous"
    common = ["task=digits_smoke", f"out_dir={tmp}/out", f"results_path={tmp_path}/acc.parquet", "stages=evaluate",
              f"checkpoint={d}"]
    p = run([*common, "astra.groups=1", "astra.codebook_size=16"], tmp_path)
    assert_one_line_error(p, 2, "G=16 K=16", "G=1 K=16")
    p = run(["task=pydoc_smoke", *common[1:], "astra.groups=16", "astra.codebook_size=16"], tmp_path)
    assert_one_line_error(p, 2, "trained for another model")
    # matching: evaluates it (without the extra evaluations, which test_vit_every_stage checks)
    p = run([*common, "astra.groups=16", "astra.codebook_size=16", "evaluate.weight_bits=[]",
             "evaluate.index_loss=[]", "evaluate.fpar_quintiles=false"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    df = store(tmp_path / "acc.parquet")
    assert value(df, "runtime_agreement", method="astra") == 1.0
