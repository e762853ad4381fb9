"""The ``evaluate`` stage: the full-precision model and every ASTRA checkpoint on the task's splits (masked
simulation, the same weights in full precision, random splits, quantization error, and the real multi-process
runtime on loopback), one row per metric in the accuracy store."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import tempfile
import time
import uuid
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from harness.errors import RunFailed
from harness.models import ModelConfig
from harness.models.ptq import group_for, misfit_width, quantize_model
from harness.parallel import vq
from harness.parallel.astra import Astra
from harness.parallel.codebooks import attention_inputs_to
from harness.parallel.manifest import VARIANT_KEYS, check_checkpoint, read_manifest
from harness.train.checkpoint import base_dir, base_manifest, load_base, load_checkpoint, run_dir
from harness.train.common import (
    ASTRA_ROWS,
    FULL_ROWS,
    TrainError,
    TrainFailed,
    config_key,
    log,
    now,
    read_safetensors,
    write_safetensors,
)
from harness.train.sim import AstraSim, assign_devices, fpar
from harness.train.tasks import Task, eval_batches, evaluate_split, full_forward, sim_options

ACC_COLUMNS = ["task", "model", "method", "groups", "codebook_size", "devices", "noise_lambda", "commitment_beta",
               "dct", "split", "noise_cov", "ema_decay", "metric", "eval_split", "value", "bits_per_token",
               "train_wall_s", "eval_wall_s", "variant", "checkpoint", "checkpoint_status", "checkpoint_step", "seed",
               "run_id", "timestamp"]
ACC_KEYS = ("task", "metric", "value", "run_id", "timestamp")  # the columns that make a file an accuracy store


def bits_per_token(mc: ModelConfig, groups: int | None, k: int | None) -> int:
    """Bits one token costs over the whole forward pass (paper Tables 1/3): L·D·32 full, L·G·log2K ASTRA."""
    if groups is None:
        return mc.layers * mc.hidden * 32
    return mc.layers * groups * vq.bits_per_index(k)


def runtime_check(cfg: DictConfig, task: Task, d: Path, m: dict, sim: AstraSim) -> dict:
    """Run the checkpoint in the real multi-process ASTRA runtime (loopback) on a test batch; compare with the
    masked simulation: fraction of equal predictions and the largest logit difference."""
    from harness.launch import launch_local
    from harness.spec.build import make_spec

    n = int(cfg.evaluate.runtime_batch)
    model = sim.model
    x, _ = next(eval_batches(task, model, "test", chunk=n))
    with torch.no_grad():
        ref = sim.forward(x)[0]
    with tempfile.TemporaryDirectory(prefix="astra-train-check-") as wd:
        wd = Path(wd)
        write_safetensors(wd / "inputs.safetensors", {"inputs": x})
        method = {"name": Astra.name, "groups": int(m["groups"]), "codebook_size": int(m["codebook_size"]),
                  "dct": bool(m["dct"]), "vq": "checkpoint", "checkpoint": str(d)}
        spec = make_spec(ModelConfig(**m["model"]), method, devices=int(m["devices"]), tokens=task.tokens,
                         batch=len(x), seed=int(cfg.seed), repeats=1, warmup=0, verify=False,
                         timeout_s=float(cfg.evaluate.timeout_s),
                         device={"name": "cpu1", "cores": 1.0, "threads": 1, "allow_oversubscribe": False},
                         results={"path": str(wd / "unused.parquet"), "record_failures": "auto",
                                  "skip_existing": "auto"})
        spec = spec.replace(codebooks=str((d / "codebooks.safetensors").resolve()),
                            model_state=str((d / "model.safetensors").resolve()),
                            inputs_path=str(wd / "inputs.safetensors"), outputs_dir=str(wd))
        try:
            launch_local(spec, wd)
        except RunFailed as exc:
            raise TrainFailed(f"runtime check of {d.name} failed: {exc}") from None
        outs = [read_safetensors(wd / f"rank{r}.safetensors") for r in range(spec.devices)
                if (wd / f"rank{r}.safetensors").is_file()]
    if task.vit:
        got = outs[0]["logits"]
    else:
        got = torch.cat([o["logits"] for o in sorted(outs, key=lambda o: int(o["positions"][0]))], 1)
    return {"runtime_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
            "runtime_max_abs_diff": float((got - ref).abs().max())}


def relative_quant_error(task: Task, sim: AstraSim) -> float:
    """mean ‖x − x̂‖² / mean ‖x‖² of the attention inputs of the checkpoint's weights run in full precision, over
    the test split and all blocks (all tokens, the class token included)."""
    st = sim.state
    acc = {"e": 0.0, "r": 0.0}

    def measure(i: int, x: torch.Tensor) -> None:
        acc["e"] += float((x - st.decode(i, st.encode(i, x))).pow(2).sum())
        acc["r"] += float(x.pow(2).sum())

    model = sim.model
    with attention_inputs_to(model, measure):
        for x, _ in eval_batches(task, model, "test"):
            full_forward(model, x)
    return acc["e"] / max(acc["r"], 1e-12)


def _row(task: Task, cfg: DictConfig, v: dict | None, metric: str, split: str, value: float, **extra) -> dict:
    astra = v is not None
    return {"task": task.name, "model": task.mc.name, "method": ASTRA_ROWS if astra else FULL_ROWS,
            "groups": int(v["groups"]) if astra else None,
            "codebook_size": int(v["codebook_size"]) if astra else None,
            "devices": int(v["devices"]) if astra else 1,
            "noise_lambda": float(v["noise_lambda"]) if astra else None,
            "commitment_beta": float(v["commitment_beta"]) if astra else None,
            "dct": (bool(v["dct"]) if task.vit else None) if astra else None,
            "split": v["split"] if astra else None, "noise_cov": v["noise_cov"] if astra else None,
            "ema_decay": float(v["ema_decay"]) if astra else None, "metric": metric, "eval_split": split,
            "value": float(value),
            "bits_per_token": bits_per_token(task.mc, v and int(v["groups"]), v and int(v["codebook_size"])),
            "seed": int(cfg.seed), "timestamp": now(), **extra}


def _listed(raw, scalars: tuple) -> list:
    """An ``evaluate`` setting given as one value (of one of the ``scalars`` types) or a list, as a list (None:
    empty)."""
    return [] if raw is None else ([raw] if isinstance(raw, scalars) else list(raw))


def weight_bits(cfg: DictConfig) -> list[int]:
    """The post-training weight quantizations to evaluate besides full precision (``evaluate.weight_bits``)."""
    raw = _listed(cfg.evaluate.get("weight_bits"), (int, str))
    try:
        bits = [int(b) for b in raw]
    except (TypeError, ValueError):
        raise TrainError(f"evaluate.weight_bits={raw}: use a list of 8 and/or 4 (or [] to skip)") from None
    bad = [b for b in bits if b not in (8, 4)]
    if bad:
        raise TrainError(f"evaluate.weight_bits={bits}: {bad[0]} is not supported; use a list of 8 and/or 4")
    return bits


def index_losses(cfg: DictConfig) -> tuple[list[float], str]:
    """The index-loss fractions to evaluate ASTRA under (``evaluate.index_loss``, paper Table 11) and the fill."""
    raw = _listed(cfg.evaluate.get("index_loss"), (int, float, str))
    try:
        ps = [float(p) for p in raw]
    except (TypeError, ValueError):
        raise TrainError(f"evaluate.index_loss={raw}: use a list of fractions in (0, 1), e.g. [0.01, 0.05]") from None
    bad = [p for p in ps if not 0 < p < 1]
    if bad:
        raise TrainError(f"evaluate.index_loss={ps}: {bad[0]:g} is not a fraction in (0, 1); e.g. [0.01, 0.05]")
    fill = str(cfg.evaluate.get("index_loss_fill", "mask"))
    if fill not in vq.INDEX_LOSS_FILLS:
        raise TrainError(f"evaluate.index_loss_fill={fill}: use one of {', '.join(vq.INDEX_LOSS_FILLS)}")
    return ps, fill


def loss_label(p: float) -> str:
    """The metric suffix of an index loss: 0.05 -> ``loss5`` (percent)."""
    return f"loss{100 * p:g}"


def fpar_quintiles(task: Task, sim: AstraSim, devices: int, dct: bool, seed: int) -> list[tuple[str, float]]:
    """Paper Table 9 at small scale: every test sample gets its own random uneven token-to-device map (random share
    sizes and positions, ``assign_devices``), the samples are binned into FPAR quintiles (Σ n_k² / T² of the
    content tokens), and each bin reports its FPAR range and mean and its top-1 (ViT) or perplexity (GPT2)."""
    import math

    import numpy as np
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed + 9)
    fr, score = [], []
    with torch.no_grad():
        for x, y in eval_batches(task, sim.model, "test"):
            dev = assign_devices(task.tokens, devices, dct, task.vit, True, x.shape[0], g)
            fr.append(fpar(dev[:, devices if task.vit and dct else 0:], devices))
            logits = sim.forward(x, dev=dev)[0]
            if task.vit:
                score.append((logits.argmax(-1) == y).float())
            else:
                score.append(F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(-1))
    fr_all, sc = torch.cat(fr).numpy(), torch.cat(score).numpy()
    edges = np.quantile(fr_all, np.linspace(0, 1, 6))
    out = []
    for q in range(5):
        last = q == 4
        sel = (fr_all >= edges[q]) & ((fr_all <= edges[q + 1]) if last else (fr_all < edges[q + 1]))
        if not sel.any():
            continue
        value = 100.0 * float(sc[sel].mean()) if task.vit else math.exp(float(sc[sel].mean()))
        out += [(f"{'top1' if task.vit else 'ppl'}_fparq{q + 1}", value), (f"fpar_q{q + 1}_lo", float(edges[q])),
                (f"fpar_q{q + 1}_hi", float(edges[q + 1])), (f"fpar_q{q + 1}_mean", float(fr_all[sel].mean()))]
    return out


def check_quantization(cfg: DictConfig, mc: ModelConfig) -> None:
    """``evaluate.weight_group`` fits every width it will be applied to, before anything is evaluated."""
    group = cfg.evaluate.get("weight_group")
    if group is not None and (not isinstance(group, int) or group < 0):
        raise TrainError(f"evaluate.weight_group={group}: use null, 0 (one scale per row) or a positive divisor "
                          "of the model's width")
    for bits in weight_bits(cfg):
        g = group_for(bits, group)
        bad = misfit_width(mc, g)
        if bad:
            raise TrainError(f"evaluate.weight_group={g} does not divide the model's input width {bad}: use a "
                              "divisor, or 0 for one scale per row")


def quantized(model, bits: int, group: int | None):
    """A copy of ``model`` with its block linears quantized to ``bits`` (harness/ptq.py)."""
    q = copy.deepcopy(model)
    quantize_model(q, bits, group)
    return q


def evaluate_full(cfg: DictConfig, task: Task) -> list[dict]:
    model = load_base(cfg, task)
    t0 = time.perf_counter()
    rows = []
    for split in (("test", "train") if task.vit else ("test",)):
        for metric, value in evaluate_split(task, model, lambda x: full_forward(model, x), split).items():
            rows.append(_row(task, cfg, None, metric, split, value))
    for bits in weight_bits(cfg):  # the paper's Table 5: the same model after post-training weight quantization
        mq = quantized(model, bits, cfg.evaluate.get("weight_group"))
        for metric, value in evaluate_split(task, mq, lambda x: full_forward(mq, x), "test").items():
            rows.append(_row(task, cfg, None, f"{metric}_w{bits}", "test", value))
    wall = time.perf_counter() - t0
    base_info = base_manifest(cfg)
    for r in rows:
        r.update(train_wall_s=base_info.get("wall_s"), eval_wall_s=round(wall, 2), variant="full",
                 checkpoint=str(base_dir(cfg)))
    main = "top1" if task.vit else "ppl"
    log(f"evaluate full: {main} {next(r['value'] for r in rows if r['metric'] == main):.3f} (test)")
    return rows


def evaluate_checkpoint(cfg: DictConfig, task: Task, d: Path) -> list[dict]:
    model, state, m = load_checkpoint(d, int(cfg.seed))
    v = {k: m[k] for k in VARIANT_KEYS}
    t0 = time.perf_counter()
    sim = AstraSim(model, state, sim_options(v))
    rows = []
    for split in (("test", "train") if task.vit else ("test",)):
        res = evaluate_split(task, model, lambda x: sim.forward(x)[0], split)
        for metric, value in res.items():
            rows.append(_row(task, cfg, v, metric, split, value))
    # the same weights in full precision on one device: the accuracy cost of quantization alone
    for metric, value in evaluate_split(task, model, lambda x: full_forward(model, x), "test").items():
        rows.append(_row(task, cfg, v, f"{metric}_fp", "test", value))
    for bits in weight_bits(cfg):  # ASTRA on the post-training weight-quantized model (codebooks unchanged)
        sim_q = AstraSim(quantized(model, bits, cfg.evaluate.get("weight_group")), state, sim_options(v))
        for metric, value in evaluate_split(task, sim_q.model, lambda x: sim_q.forward(x)[0], "test").items():
            rows.append(_row(task, cfg, v, f"{metric}_w{bits}", "test", value))
    losses, fill = index_losses(cfg)
    for p in losses:  # paper Table 11: a fraction of the remote tokens' indices never arrives
        sim_l = AstraSim(model, state, dataclasses.replace(sim_options(v), index_loss=p, index_loss_fill=fill))
        batches = itertools.count()

        def lossy(x, sim_l=sim_l, batches=batches):
            sim_l.loss_seed = int(cfg.seed) * 100_003 + next(batches)  # other tokens lost in every batch
            return sim_l.forward(x)[0]

        for metric, value in evaluate_split(task, model, lossy, "test").items():
            rows.append(_row(task, cfg, v, f"{metric}_{loss_label(p)}", "test", value))
    if v["split"] == "random":  # also on random uneven splits, with their full-precision attention rate
        g = torch.Generator().manual_seed(int(cfg.seed) + 5)

        def random_forward(x):
            dev = assign_devices(task.tokens, v["devices"], v["dct"], task.vit, True, x.shape[0], g)
            fr.append(fpar(dev[:, v["devices"] if task.vit and v["dct"] else 0:], v["devices"]))
            return sim.forward(x, dev=dev)[0]

        fr: list[torch.Tensor] = []
        for metric, value in evaluate_split(task, model, random_forward, "test").items():
            rows.append(_row(task, cfg, v, metric, "test_random_split", value))
        rows.append(_row(task, cfg, v, "fpar_mean", "test_random_split", float(torch.cat(fr).mean())))
    if cfg.evaluate.get("fpar_quintiles", False) and v["devices"] > 1:
        for metric, value in fpar_quintiles(task, sim, v["devices"], v["dct"], int(cfg.seed)):
            rows.append(_row(task, cfg, v, metric, "test_random_split", value))
    rows.append(_row(task, cfg, v, "quant_rel_mse", "test", relative_quant_error(task, sim)))
    if cfg.evaluate.runtime_check:
        for metric, value in runtime_check(cfg, task, d, m, sim).items():
            rows.append(_row(task, cfg, v, metric, "test", value))
    wall = time.perf_counter() - t0
    for r in rows:
        r.update(train_wall_s=m.get("train_wall_s"), eval_wall_s=round(wall, 2), variant=d.name,
                 checkpoint=str(d), checkpoint_status=m.get("status"), checkpoint_step=m.get("step"))
    main = "top1" if task.vit else "ppl"
    agree = [r["value"] for r in rows if r["metric"] == "runtime_agreement"]
    log(f"evaluate {d.name}: {main} {next(r['value'] for r in rows if r['metric'] == main):.3f} (test)"
        + (f", runtime agreement {agree[0]:.3f}" if agree else ""))
    return rows


def stage_evaluate(cfg: DictConfig, task: Task, variants: list[dict]) -> list[dict]:
    from harness.store.results import _read, append_rows

    run_id = uuid.uuid4().hex[:12]
    path = Path(cfg.results_path)
    old = _read(path) if path.exists() and not cfg.force else None
    done: set[str] = set(old["eval_key"].dropna()) if old is not None and "eval_key" in old.columns else set()
    reused: list[dict] = []
    eval_cfg = {"evaluate": OmegaConf.to_container(cfg.evaluate, resolve=True), "eval_limit": task.cfg.eval_limit,
                "task": task.name}

    def fresh(key: str, what: str) -> str | None:
        """The evaluation key of ``what``, or None if the store already holds its rows (reused)."""
        k = config_key({"checkpoint": key, **eval_cfg})
        if k in done:
            # re-append them (new run_id and timestamp) so they are the latest rows of this variant again
            last = old[old["eval_key"] == k]
            last = last[last["run_id"] == last.sort_values("timestamp", kind="stable")["run_id"].iloc[-1]]
            reused.extend(dict(r, timestamp=now(), reused=True) for r in last.to_dict("records"))
            log(f"evaluate {what}: reusing its rows in {path}")
            return None
        return k

    check_quantization(cfg, task.mc)
    index_losses(cfg)
    rows: list[dict] = []
    k = fresh(base_manifest(cfg)["key"], "full")
    if k:
        rows += [dict(r, eval_key=k) for r in evaluate_full(cfg, task)]
    dirs = [Path(cfg.checkpoint)] if cfg.checkpoint else [run_dir(cfg, v) for v in variants]
    for d in dirs:
        m = read_manifest(d)
        for w in check_checkpoint(m, task.mc, int(m["groups"]) if not cfg.checkpoint else int(cfg.astra.groups),
                                  int(m["codebook_size"]) if not cfg.checkpoint else int(cfg.astra.codebook_size),
                                  task.tokens, str(d), "evaluate it on the task it was trained for"):
            log(f"WARNING: {w}")
        k = fresh(f"{m.get('key')}:{m.get('step')}", d.name)
        if k:
            rows += [dict(r, eval_key=k) for r in evaluate_checkpoint(cfg, task, d)]
    n_new = len(rows)
    rows += reused
    for r in rows:
        r["run_id"] = run_id
    if rows:
        append_rows(cfg.results_path, rows, ACC_COLUMNS, keys=ACC_KEYS)
    log(f"evaluate: {n_new} new and {len(reused)} reused rows -> {cfg.results_path}")
    return rows
