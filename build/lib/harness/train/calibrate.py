"""The ``calibrate`` stage: per-block grouped k-means codebooks on the base model's attention inputs, plus the
residual statistics NAVQ noise is drawn from, in ``calib/G{G}-K{K}.safetensors``."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from harness.models import Transformer
from harness.parallel import vq
from harness.parallel.codebooks import attention_inputs_to
from harness.train import data as D
from harness.train.checkpoint import base_manifest, load_base
from harness.train.common import TrainError, config_key, log, read_safetensors, write_safetensors
from harness.train.sim import residual_stats
from harness.train.tasks import Task


def attention_inputs(task: Task, model: Transformer, max_vectors: int, seed: int) -> list[torch.Tensor]:
    """ln1 outputs (the tensor ASTRA quantizes) of every block over training inputs -> per block (n, D), at most
    ``max_vectors`` rows (a random subset)."""
    acts: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    per_sample = task.tokens + task.mc.prefix_tokens
    g = torch.Generator().manual_seed(seed + 2)
    need = math.ceil(max_vectors / per_sample)
    with attention_inputs_to(model, lambda i, x: acts[i].append(x)):
        if task.vit:
            n = len(task.data.train_y)
            idx = torch.randperm(n, generator=g)[: need]
            for s in range(0, len(idx), 256):
                model(model.patchify(task.data.train_x[idx[s: s + 256]]))
        else:
            w = D.text_windows(task.data.train, task.tokens, need, g)
            for s in range(0, len(w), 256):
                model(w[s: s + 256, :-1])
    out = []
    for a in acts:
        v = torch.cat(a)
        if len(v) > max_vectors:
            v = v[torch.randperm(len(v), generator=g)[:max_vectors]]
        out.append(v)
    return out


def calibration_count(task: Task, max_vectors: int) -> int:
    """Attention-input vectors per block the calibration will have (before the held-out eighth)."""
    per_sample = task.tokens + task.mc.prefix_tokens
    if task.vit:
        return min(max_vectors, len(task.data.train_y) * per_sample)
    return max_vectors


def calib_path(cfg: DictConfig, groups: int, k: int) -> Path:
    return Path(cfg.out_dir) / "calib" / f"G{groups}-K{k}.safetensors"


def _saved_calib_key(path: Path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata().get("key")


def stage_calibrate(cfg: DictConfig, task: Task, variants: list[dict]) -> None:
    model = load_base(cfg, task)
    base_key = base_manifest(cfg)["key"]
    pairs = sorted({(int(v["groups"]), int(v["codebook_size"])) for v in variants})
    iters = int(cfg.calibrate.kmeans_iters)
    vectors = None
    for g, k in pairs:
        path = calib_path(cfg, g, k)
        key = config_key({"base": base_key, "G": g, "K": k, "calib": OmegaConf.to_container(cfg.calibrate)})
        if path.is_file() and not cfg.force and _saved_calib_key(path) == key:
            log(f"calibrate: reusing {path}")
            continue
        if vectors is None:
            log(f"calibrate: collecting up to {int(cfg.calibrate.max_vectors)} attention inputs per block from the "
                f"base model's training inputs")
            vectors = attention_inputs(task, model, int(cfg.calibrate.max_vectors), int(cfg.seed))
        t0 = time.perf_counter()
        held = [v[: len(v) // 8] for v in vectors]  # held-out part for the quantization error
        fit = [v[len(v) // 8:] for v in vectors]
        log(f"calibrate: G={g} K={k}: k-means ({iters} iterations) on {len(fit[0])} vectors/block x {len(fit)} "
            f"blocks, {len(held[0])} held out")
        try:
            books = torch.stack([vq.fit_codebooks(v, g, k, seed=int(cfg.seed), max_iter=iters) for v in fit])
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        stats = [residual_stats(v, b) for v, b in zip(fit, books)]
        mse = [vq.quantization_error(h, b) / float(h.pow(2).mean()) for h, b in zip(held, books)]
        write_safetensors(path, {"codebooks": books, "resid_mean": torch.stack([s[0] for s in stats]),
                                 "resid_cov": torch.stack([s[1] for s in stats])},
                          {"key": key, "groups": g, "codebook_size": k, "rel_mse": json.dumps(mse),
                           "vectors": len(fit[0])})
        log(f"calibrate: G={g} K={k} k-means on {len(fit[0])} vectors/block in {time.perf_counter() - t0:.0f} s; "
            f"held-out relative MSE per block {', '.join(f'{m:.4f}' for m in mse)}")


def load_calibration(cfg: DictConfig, g: int, k: int) -> tuple[dict, dict]:
    """The codebooks and residual statistics of G/K, and their metadata (the calibration key)."""
    from safetensors import safe_open

    path = calib_path(cfg, g, k)
    if not path.is_file():
        raise TrainError(f"no codebooks for G={g} K={k} in {path.parent}: run the calibrate stage first")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return read_safetensors(path), meta
