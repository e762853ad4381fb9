"""The two training stages: ``base`` trains (or fine-tunes HF weights into) the full-precision model; ``finetune``
trains model and codebooks jointly in the masked ASTRA simulation, one checkpoint per variant."""

from __future__ import annotations

import math
import time

import torch
from omegaconf import DictConfig, OmegaConf

from harness.models import Transformer
from harness.parallel.manifest import CHECKPOINT_FORMAT, VARIANT_KEYS, read_manifest
from harness.train.calibrate import load_calibration
from harness.train.checkpoint import (
    base_dir,
    base_key,
    base_manifest,
    load_base,
    run_dir,
    save_base,
    save_checkpoint,
    saved_key,
)
from harness.train.common import TrainFailed, config_key, log, now
from harness.train.sim import AstraSim, VQState
from harness.train.tasks import Task, full_forward, new_model, sim_options, task_loss, train_batch


def _schedule(opt, warmup: int, steps: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _optimizer(model: Transformer, hp: DictConfig):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": float(hp.weight_decay)},
                              {"params": rest, "weight_decay": 0.0}], lr=float(hp.lr))


# ---------------------------------------------------------------------------------------------------------------
# Stage: base
# ---------------------------------------------------------------------------------------------------------------
def stage_base(cfg: DictConfig, task: Task) -> None:
    d = base_dir(cfg)
    key = base_key(cfg, task)
    if not cfg.force and saved_key(d / "manifest.json") == key:
        log(f"base: reusing {d}")
        return
    hp = task.cfg.base
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    model = new_model(task, seed).train()
    steps = int(hp.steps)
    opt = _optimizer(model, hp)
    sched = _schedule(opt, int(hp.warmup), steps)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    log(f"base: training {task.mc.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) "
        f"for {steps} steps on {task.name}")
    for step in range(steps):
        x, y = train_batch(task, model, int(hp.batch), g)
        loss = task_loss(full_forward(model, x), y)
        if not torch.isfinite(loss):
            raise TrainFailed(f"base: non-finite loss at step {step}: lower task.base.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)):
            raise TrainFailed(f"base: non-finite gradients at step {step}: lower task.base.lr")
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 5) == 0:
            log(f"base: step {step + 1}/{steps} loss {loss.item():.4f}")
    model.eval()
    wall = time.perf_counter() - t0
    save_base(d, model, {"format": "astra-base/1", "key": key, "task": task.name, "model": task.mc.to_dict(),
                         "steps": steps, "wall_s": round(wall, 1), "created": now()})
    log(f"base: done in {wall:.0f} s -> {d}")


# ---------------------------------------------------------------------------------------------------------------
# Stage: finetune
# ---------------------------------------------------------------------------------------------------------------
def finetune_one(cfg: DictConfig, task: Task, v: dict) -> None:
    d = run_dir(cfg, v)
    hp = task.cfg.finetune
    base = base_manifest(cfg)["key"]  # first: without a base model, the calibration is missing too
    calib, calib_meta = load_calibration(cfg, int(v["groups"]), int(v["codebook_size"]))
    key = config_key({"base": base, "calib": calib_meta.get("key"), "variant": v,
                      "finetune": OmegaConf.to_container(hp, resolve=True), "seed": int(cfg.seed)})
    if not cfg.force and saved_key(d / "manifest.json") == key and read_manifest(d).get("status") == "complete":
        log(f"finetune: reusing {d}")
        return
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    model = load_base(cfg, task).train()
    state = VQState(calib["codebooks"], calib["resid_mean"], calib["resid_cov"])
    sim = AstraSim(model, state, sim_options(v))
    sim.generator = torch.Generator().manual_seed(seed + 3)
    steps = int(hp.steps)
    opt = _optimizer(model, hp)
    sched = _schedule(opt, int(hp.warmup), steps)
    g = torch.Generator().manual_seed(seed + 4)
    manifest = {"format": CHECKPOINT_FORMAT, "key": key, "task": task.name, "model": task.mc.to_dict(),
                **{k: v[k] for k in VARIANT_KEYS}, "steps": steps, "step": 0, "status": "partial",
                "base": str(base_dir(cfg)), "seed": seed, "created": now(), "train_wall_s": 0.0}
    save_checkpoint(d, model, state, manifest)  # step 0: a good checkpoint exists from the start
    t0 = time.perf_counter()
    nan_at = hp.get("inject_nan_at_step")
    every = max(1, int(hp.save_every))
    beta = float(v["commitment_beta"])
    for step in range(steps):
        x, y = train_batch(task, model, int(hp.batch), g)
        logits, commit = sim.forward(x, train=True)
        loss = task_loss(logits, y) + beta * commit
        if nan_at is not None and step == int(nan_at):
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            raise TrainFailed(f"finetune {d.name}: non-finite loss at step {step}; stopped, the last good checkpoint "
                              f"(step {manifest['step']}) is in {d}: lower task.finetune.lr or astra.noise_lambda")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)) or \
                not torch.isfinite(state.codebooks).all():
            raise TrainFailed(f"finetune {d.name}: non-finite gradients or codebooks at step {step}; stopped, the "
                              f"last good checkpoint (step {manifest['step']}) is in {d}: lower task.finetune.lr")
        opt.step()
        sched.step()
        if (step + 1) % every == 0 or step + 1 == steps:
            manifest.update(step=step + 1, train_wall_s=round(time.perf_counter() - t0, 2),
                            status="complete" if step + 1 == steps else "partial", last_loss=loss.item())
            save_checkpoint(d, model.eval(), state, manifest)
            model.train()
    log(f"finetune {d.name}: {steps} steps in {time.perf_counter() - t0:.0f} s (last loss {loss.item():.4f})")


def stage_finetune(cfg: DictConfig, task: Task, variants: list[dict]) -> None:
    for v in variants:
        finetune_one(cfg, task, v)
