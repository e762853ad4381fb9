"""The ASTRA variants a suite asks for (``conf/suite/*.yaml``), and every check of the settings that can be made
before anything is loaded, trained or written."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.options import convert, parse_options
from harness.parallel import vq
from harness.parallel.manifest import VARIANT_KEYS
from harness.train.calibrate import calibration_count
from harness.train.common import TrainError
from harness.train.options import VariantOptions
from harness.train.tasks import Task

__all__ = ["VARIANT_KEYS", "check_numbers", "check_paths", "check_variants", "expand_suite", "results_path_check"]


def expand_suite(cfg: DictConfig, vit: bool) -> list[dict]:
    """The ASTRA variants of the suite (the main ``astra`` settings first, no duplicates)."""
    main = {k: cfg.astra[k] for k in VARIANT_KEYS}
    main = {k: (float(v) if isinstance(v, float) else v) for k, v in main.items()}
    s = cfg.suite
    out: list[dict] = []

    def add(**kw):
        v = {**main, **kw}
        if not vit:
            v["dct"] = None  # no class token
        if v not in out:
            out.append(v)

    add()
    for g in s.groups:
        add(groups=int(g))
    for n in s.devices:
        add(groups=int(s.get("devices_groups", main["groups"])), devices=int(n))
    for lam in s.noise_lambda:
        add(groups=int(s.get("lambda_groups", main["groups"])), noise_lambda=float(lam))
    if vit:
        for g in s.dct_off_groups:
            add(groups=int(g), dct=False)
    for b in s.beta:
        for g in s.beta_groups or [main["groups"]]:
            add(groups=int(g), commitment_beta=float(b))
    for k in s.get("codebook_size", []):
        add(groups=int(s.get("codebook_groups", main["groups"])), codebook_size=int(k))
    for g in s.get("random_split_groups", []):
        add(groups=int(g), split="random")
    return out


def results_path_check(path) -> None:
    """The accuracy store: .parquet/.csv, not a directory, and if it exists a readable store (left untouched)."""
    from harness.store.results import check_store
    from harness.train.evaluate import ACC_KEYS

    try:
        check_store(str(path), "results_path", keys=ACC_KEYS)
    except ConfigError as exc:
        raise TrainError(str(exc)) from None


def check_paths(cfg: DictConfig) -> None:
    out = Path(str(cfg.out_dir))
    if out.exists() and not out.is_dir():
        raise TrainError(f"out_dir={out} is a file: pass a directory (it holds base/, calib/, runs/, tables.md)")


def check_numbers(cfg: DictConfig) -> None:
    """The numeric settings, before anything is loaded or written."""
    meta = {"help": "", "lo": 1, "hi": None, "above": None, "choices": None, "kind": None}
    try:
        convert(OmegaConf.select(cfg, "task.eval_limit"), int | None, "task.eval_limit", meta)
        convert(OmegaConf.select(cfg, "evaluate.timeout_s"), float, "evaluate.timeout_s", {**meta, "lo": None,
                                                                                           "above": 0})
        parse_options(VariantOptions, OmegaConf.to_container(cfg.astra, resolve=True), "astra.", "astra-train")
    except ConfigError as exc:
        raise TrainError(str(exc)) from None
    for key, lo in (("task.base.steps", 1), ("task.base.batch", 1), ("task.finetune.steps", 1),
                    ("task.finetune.batch", 1), ("task.finetune.save_every", 1), ("evaluate.runtime_batch", 1),
                    ("calibrate.max_vectors", 2), ("calibrate.kmeans_iters", 1), ("threads", 1), ("seed", 0)):
        val = OmegaConf.select(cfg, key)
        if not isinstance(val, int) or isinstance(val, bool) or val < lo:
            raise TrainError(f"{key}={val} must be an integer >= {lo}")
    frac = OmegaConf.select(cfg, "task.test_fraction")
    if not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise TrainError(f"task.test_fraction={frac} must be between 0 and 1 (exclusive)")
    for key in ("task.base.lr", "task.finetune.lr"):
        val = OmegaConf.select(cfg, key)
        if not isinstance(val, (int, float)) or not val > 0:
            raise TrainError(f"{key}={val} must be a number > 0")


def check_variants(task: Task, variants: list[dict], cfg: DictConfig) -> None:
    """Everything about the variants that can be checked before any training starts."""
    n_calib = calibration_count(task, int(cfg.calibrate.max_vectors)) * 7 // 8
    for v in variants:
        try:
            parse_options(VariantOptions, v, "astra.", "astra-train")
        except ConfigError as exc:
            raise TrainError(f"suite {cfg.suite.get('name', '')} makes a variant with {exc}: fix the suite's values")
        try:
            vq.check_groups(task.mc.hidden, int(v["groups"]))
            vq.bits_per_index(int(v["codebook_size"]))
            float(v["noise_lambda"]), float(v["commitment_beta"]), float(v["ema_decay"]), int(v["devices"])
        except (TypeError, ValueError) as exc:
            raise TrainError(str(exc).replace("method.", "astra.")) from None
        if int(v["codebook_size"]) > n_calib:
            raise TrainError(f"astra.codebook_size={v['codebook_size']} exceeds the {n_calib} calibration vectors "
                             "per block: lower it or raise calibrate.max_vectors / use more data")
        if not 1 <= int(v["devices"]) <= task.tokens:
            raise TrainError(f"astra.devices={v['devices']} must be between 1 and {task.tokens} tokens")
        if v["noise_cov"] not in ("full", "diag"):
            raise TrainError(f"astra.noise_cov={v['noise_cov']} is unknown: use full or diag")
        if v["split"] not in ("contiguous", "random"):
            raise TrainError(f"astra.split={v['split']} is unknown: use contiguous or random")
        if float(v["noise_lambda"]) < 0 or float(v["commitment_beta"]) < 0 or not 0 <= float(v["ema_decay"]) < 1:
            raise TrainError("astra.noise_lambda and astra.commitment_beta must be >= 0 and astra.ema_decay in [0, 1)")
