"""The stages of ``astra-train``: base → calibrate → finetune → evaluate → report.

Output layout under ``out_dir``:

    base/model.safetensors, base/manifest.json          full-precision model for the task
    calib/G{G}-K{K}.safetensors                         k-means codebooks + residual statistics of the base model
    runs/<variant>/model.safetensors                     fine-tuned weights (native names)
    runs/<variant>/codebooks.safetensors                 codebooks (L, G, K, D/G) + EMA / noise state
    runs/<variant>/manifest.json                         model config, G, K, N, λ, β, DCT, split, status, steps
    tables.md                                            the markdown tables of the last report

A stage whose output exists with the same configuration key is reused (``force=true`` redoes it). Every file is
written to a temporary name and renamed, so an interrupted stage leaves the previous good files in place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from .. import vq
from ..codebooks import attention_inputs_to
from ..config import CONF_DIR
from ..models import ModelConfig, Transformer, build_model
from . import data as D
from .sim import AstraSim, SimOptions, VQState, assign_devices, fpar, residual_stats

STAGES = ("base", "calibrate", "finetune", "evaluate", "report")
ACC_COLUMNS = ["task", "model", "method", "groups", "codebook_size", "devices", "noise_lambda", "commitment_beta",
               "dct", "split", "noise_cov", "ema_decay", "metric", "eval_split", "value", "bits_per_token",
               "train_wall_s", "eval_wall_s", "variant", "checkpoint", "checkpoint_status", "checkpoint_step", "seed",
               "run_id", "timestamp"]
CHECKPOINT_FORMAT = "astra-checkpoint/1"


class TrainError(ValueError):
    """Bad input: one line naming the problem and the fix (exit 2)."""


class TrainFailed(TrainError):
    """A stage failed while running (non-finite loss, runtime check): one line (exit 1)."""


def results_path_check(path) -> None:
    from ..results import _check_suffix

    try:
        _check_suffix(Path(str(path)), "results_path")
    except ValueError as exc:
        raise TrainError(str(exc)) from None


def log(msg: str) -> None:
    print(f"[astra-train] {msg}", file=sys.stderr, flush=True)


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _atomic_safetensors(path: Path, tensors: dict, meta: dict | None = None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={k: str(v) for k, v in (meta or {}).items()})
    os.replace(tmp, path)


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


# ---------------------------------------------------------------------------------------------------------------
# The task: model config + data
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Task:
    name: str
    mc: ModelConfig
    data: D.ImageData | D.TextData
    tokens: int
    cfg: DictConfig

    @property
    def vit(self) -> bool:
        return self.mc.kind == "vit"

    def __post_init__(self):
        self.weights_classes: int | None = None  # class count of the HF ViT head before it is replaced
        t = OmegaConf.to_container(self.cfg, resolve=True)
        t.pop("finetune", None)
        t.pop("eval_limit", None)
        self._key = {"task": t, "model": self.mc.to_dict()}  # fixed before the model is built

    def key(self) -> dict:
        """What the base model depends on."""
        return self._key


def _model_config(tcfg: DictConfig, tokens: int) -> ModelConfig:
    if tcfg.weights:
        from ..models.hf import WeightLoadError, config_from_hf

        if not Path(tcfg.weights).is_dir():
            raise TrainError(f"task.weights={tcfg.weights} is not a directory: pass an HF-layout model directory")
        try:
            return config_from_hf(tcfg.weights, tokens=tokens)
        except WeightLoadError as exc:
            raise TrainError(str(exc)) from None
    path = CONF_DIR / "model" / f"{tcfg.model}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        raise TrainError(f"task.model={tcfg.model} is unknown: choose one of {', '.join(names)}")
    m = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if tcfg.model_overrides:
        m.update(OmegaConf.to_container(tcfg.model_overrides, resolve=True))
    unknown = set(m) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise TrainError(f"task.model_overrides has unknown field(s) {sorted(unknown)}")
    m["tokens"] = tokens
    mc = ModelConfig(**m)
    if mc.hidden % mc.heads:
        raise TrainError(f"hidden={mc.hidden} is not divisible by heads={mc.heads}: fix task.model_overrides")
    return mc


def load_task(cfg: DictConfig) -> Task:
    t = cfg.task
    if t.dataset in ("imagefolder", "textfiles") and (OmegaConf.is_missing(t, "path") or not t.path):
        raise TrainError(f"task.dataset={t.dataset} needs task.path=<local dataset>: pass the file or folder")
    seed = int(cfg.seed)
    if t.dataset in ("digits", "imagefolder"):
        patch = _model_config(t, 1).patch_size  # the token count follows from it
        size = int(t.image_size)
        if size % patch:
            raise TrainError(f"task.image_size={size} is not a multiple of the patch size {patch}: change one")
        tokens = (size // patch) ** 2
        mc = _model_config(t, tokens)
        if mc.kind != "vit":
            raise TrainError(f"task.dataset={t.dataset} is an image task but the model is a {mc.kind}: use a ViT")
        if t.dataset == "digits":
            data = D.digits(size, mc.channels, float(t.test_fraction), seed)
        else:
            data = D.imagefolder(t.path, size, mc.channels, float(t.test_fraction), seed)
        hf_classes = mc.num_classes
        mc.num_classes = data.num_classes  # the model we train and save has the dataset's classes
    elif t.dataset in ("pydoc", "textfiles"):
        tokens = int(t.tokens)
        mc = _model_config(t, tokens)
        if mc.kind != "gpt2":
            raise TrainError(f"task.dataset={t.dataset} is a text task but the model is a {mc.kind}: use a GPT2")
        if tokens > max(mc.max_positions, mc.tokens) or (t.weights and tokens > mc.max_positions):
            raise TrainError(f"task.tokens={tokens} exceeds the model's {mc.max_positions} positions: lower it")
        if t.dataset == "pydoc":
            data = D.pydoc_text(float(t.test_fraction), tokens)
        else:
            data = D.textfiles(t.path, float(t.test_fraction), tokens, str(t.tokenizer), t.weights)
        if data.vocab_size > mc.vocab_size:
            raise TrainError(f"the {t.tokenizer} tokenizer has {data.vocab_size} ids but the model's vocabulary is "
                             f"{mc.vocab_size}: use task.tokenizer=hf or a model with a larger vocabulary")
    else:
        raise TrainError(f"task.dataset={t.dataset} is unknown: use digits, imagefolder, pydoc or textfiles")
    task = Task(str(t.name), mc, data, tokens, t)
    task.weights_classes = hf_classes if t.dataset in ("digits", "imagefolder") else None
    return task


def new_model(task: Task, seed: int) -> Transformer:
    """The task's starting model: HF weights (classifier head replaced if the class count differs) or random."""
    mc = task.mc
    if task.cfg.weights and mc.kind == "vit" and task.weights_classes != mc.num_classes:
        model = build_model(ModelConfig(**{**mc.to_dict(), "num_classes": task.weights_classes}), seed)
        torch.manual_seed(seed)
        model.head = torch.nn.Linear(mc.hidden, mc.num_classes)
        model.cfg.num_classes = mc.num_classes
    else:
        model = build_model(mc, seed)
    model.cfg.weights = None
    mc.weights = None
    return model


# ---------------------------------------------------------------------------------------------------------------
# Batches, loss, metrics
# ---------------------------------------------------------------------------------------------------------------
def train_batch(task: Task, model: Transformer, batch: int, g: torch.Generator):
    if task.vit:
        d = task.data
        idx = torch.randint(0, len(d.train_y), (batch,), generator=g)
        x = D.augment_shift(d.train_x[idx], int(task.cfg.augment_shift), g)
        return model.patchify(x), d.train_y[idx]
    w = D.text_windows(task.data.train, task.tokens, batch, g)
    return w[:, :-1], w[:, 1:]


def eval_batches(task: Task, model: Transformer, split: str, chunk: int = 128):
    """(inputs, targets) chunks of a whole split (limited by task.eval_limit)."""
    limit = task.cfg.eval_limit
    if task.vit:
        x, y = (task.data.test_x, task.data.test_y) if split == "test" else (task.data.train_x, task.data.train_y)
        if limit and len(y) > limit:
            keep = torch.linspace(0, len(y) - 1, int(limit)).long()
            x, y = x[keep], y[keep]
        for s in range(0, len(y), chunk):
            yield model.patchify(x[s: s + chunk]), y[s: s + chunk]
        return
    ids = task.data.test if split == "test" else task.data.train
    w = D.eval_windows(ids, task.tokens, int(limit) if limit else None)
    for s in range(0, len(w), chunk):
        yield w[s: s + chunk, :-1], w[s: s + chunk, 1:]


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def full_forward(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    return model(x, all_positions=True) if model.cfg.kind == "gpt2" else model(x)


def evaluate_split(task: Task, model: Transformer, forward, split: str) -> dict:
    total, n, correct = 0.0, 0, 0
    with torch.no_grad():
        for x, y in eval_batches(task, model, split):
            logits = forward(x)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
            n += y.numel()
            correct += int((logits.argmax(-1) == y).sum())
    loss = total / n
    if task.vit:
        return {"top1": 100.0 * correct / n, "loss": loss}
    return {"ppl": math.exp(loss), "loss": loss, "next_token_acc": 100.0 * correct / n}


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
def base_dir(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir) / "base"


def _saved_key(manifest: Path) -> str | None:
    """The ``key`` recorded in a manifest, or None if it is missing or unreadable (then the stage runs again)."""
    try:
        return json.loads(manifest.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def base_manifest(cfg: DictConfig) -> dict:
    d = base_dir(cfg)
    man = d / "manifest.json"
    if not man.is_file():
        raise TrainError(f"no base model in {d}: run the base stage first (stages=base or stages=all)")
    try:
        return json.loads(man.read_text())
    except json.JSONDecodeError:
        raise TrainError(f"{man} is not valid JSON: re-run stages=base with force=true") from None


def load_base(cfg: DictConfig, task: Task) -> Transformer:
    d = base_dir(cfg)
    info = base_manifest(cfg)
    if info.get("key") != _key(task.key() | {"seed": int(cfg.seed)}):
        raise TrainError(f"the base model in {d} was trained for another task/model config: "
                         "re-run stages=base (or force=true)")
    mc = ModelConfig(**info["model"])
    model = build_model(mc, int(cfg.seed))
    model.load_state_dict(_load_safetensors(d / "model.safetensors"))
    task.mc = mc
    return model


def stage_base(cfg: DictConfig, task: Task) -> None:
    d = base_dir(cfg)
    key = _key(task.key() | {"seed": int(cfg.seed)})
    man = d / "manifest.json"
    if not cfg.force and _saved_key(man) == key:
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
    d.mkdir(parents=True, exist_ok=True)
    _atomic_safetensors(d / "model.safetensors", model.state_dict())
    _atomic_json(man, {"format": "astra-base/1", "key": key, "task": task.name, "model": task.mc.to_dict(),
                       "steps": steps, "wall_s": round(wall, 1), "created": _now()})
    log(f"base: done in {wall:.0f} s -> {d}")


# ---------------------------------------------------------------------------------------------------------------
# Stage: calibrate
# ---------------------------------------------------------------------------------------------------------------
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
    per_sample = task.tokens + task.mc.prefix_tokens
    if task.vit:
        return min(max_vectors, len(task.data.train_y) * per_sample)
    return max_vectors


def calib_path(cfg: DictConfig, groups: int, k: int) -> Path:
    return Path(cfg.out_dir) / "calib" / f"G{groups}-K{k}.safetensors"


def stage_calibrate(cfg: DictConfig, task: Task, variants: list[dict]) -> None:
    model = load_base(cfg, task)
    base_key = base_manifest(cfg)["key"]
    pairs = sorted({(int(v["groups"]), int(v["codebook_size"])) for v in variants})
    vectors = None
    for g, k in pairs:
        path = calib_path(cfg, g, k)
        key = _key({"base": base_key, "G": g, "K": k, "calib": OmegaConf.to_container(cfg.calibrate)})
        if path.is_file() and not cfg.force:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                if f.metadata().get("key") == key:
                    log(f"calibrate: reusing {path}")
                    continue
        if vectors is None:
            vectors = attention_inputs(task, model, int(cfg.calibrate.max_vectors), int(cfg.seed))
        t0 = time.perf_counter()
        held = [v[: len(v) // 8] for v in vectors]  # held-out part for the quantization error
        fit = [v[len(v) // 8:] for v in vectors]
        try:
            books = torch.stack([vq.fit_codebooks(v, g, k, seed=int(cfg.seed), max_iter=int(cfg.calibrate.kmeans_iters))
                                 for v in fit])
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        stats = [residual_stats(v, b) for v, b in zip(fit, books)]
        mse = [vq.quantization_error(h, b) / float(h.pow(2).mean()) for h, b in zip(held, books)]
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_safetensors(path, {"codebooks": books, "resid_mean": torch.stack([s[0] for s in stats]),
                                   "resid_cov": torch.stack([s[1] for s in stats])},
                            {"key": key, "groups": g, "codebook_size": k, "rel_mse": json.dumps(mse),
                             "vectors": len(fit[0])})
        log(f"calibrate: G={g} K={k} k-means on {len(fit[0])} vectors/block in {time.perf_counter() - t0:.0f} s; "
            f"held-out relative MSE per block {', '.join(f'{m:.4f}' for m in mse)}")


def load_calibration(cfg: DictConfig, g: int, k: int) -> tuple[dict, dict]:
    from safetensors import safe_open

    path = calib_path(cfg, g, k)
    if not path.is_file():
        raise TrainError(f"no codebooks for G={g} K={k} in {path.parent}: run the calibrate stage first")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return _load_safetensors(path), meta


# ---------------------------------------------------------------------------------------------------------------
# Variants and checkpoints
# ---------------------------------------------------------------------------------------------------------------
VARIANT_KEYS = ("groups", "codebook_size", "devices", "noise_lambda", "noise_cov", "commitment_beta", "dct", "split",
                "ema_decay")


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


def variant_name(v: dict) -> str:
    return (f"G{v['groups']}-K{v['codebook_size']}-N{v['devices']}-lam{v['noise_lambda']:g}-"
            f"beta{v['commitment_beta']:g}-{'' if v['dct'] is None else ('dct-' if v['dct'] else 'cls-')}{v['split']}"
            + ("" if v["noise_cov"] == "full" else f"-{v['noise_cov']}")
            + ("" if float(v["ema_decay"]) == 0.99 else f"-ema{float(v['ema_decay']):g}"))


def run_dir(cfg: DictConfig, v: dict) -> Path:
    return Path(cfg.out_dir) / "runs" / variant_name(v)


def check_numbers(cfg: DictConfig) -> None:
    """The numeric settings, before anything is loaded or written."""
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


def save_checkpoint(d: Path, model: Transformer, state: VQState, manifest: dict) -> None:
    """Write the checkpoint into a sibling directory, then swap it in, so weights, codebooks and manifest always
    belong to the same step (an interrupt leaves the previous checkpoint, or this one, complete)."""
    import shutil

    tmp = d.with_name(f".{d.name}.tmp{os.getpid()}")
    old = d.with_name(f".{d.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_checkpoint(tmp, model, state, manifest)
    if d.exists():
        os.rename(d, old)
    os.rename(tmp, d)
    shutil.rmtree(old, ignore_errors=True)


def _write_checkpoint(d: Path, model: Transformer, state: VQState, manifest: dict) -> None:
    _atomic_safetensors(d / "model.safetensors", model.state_dict())
    _atomic_safetensors(d / "codebooks.safetensors",
                        {"codebooks": state.codebooks, "ema_count": state.ema_count, "ema_sum": state.ema_sum,
                         "resid_mean": state.resid_mean, "resid_cov": state.resid_cov},
                        {"model": manifest["model"]["name"], "groups": manifest["groups"],
                         "codebook_size": manifest["codebook_size"]})
    _atomic_json(d / "manifest.json", manifest)


def read_manifest(d: Path) -> dict:
    p = Path(d) / "manifest.json"
    if not p.is_file():
        raise TrainError(f"{d} is not an astra-train checkpoint (no manifest.json): pass a runs/<variant> directory")
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise TrainError(f"{p} is not valid JSON: re-create the checkpoint with astra-train") from None
    if not isinstance(m, dict) or m.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{p} is not an {CHECKPOINT_FORMAT} manifest: re-create the checkpoint with astra-train")
    missing = [k for k in ("model", *VARIANT_KEYS) if k not in m]
    if missing:
        raise TrainError(f"{p} lacks {missing}: re-create the checkpoint with astra-train")
    return m


# Model fields that must agree between a checkpoint and the run that uses it.
ARCH_FIELDS = ("kind", "layers", "hidden", "heads", "mlp_ratio", "patch_size", "channels", "num_classes", "vocab_size",
               "max_positions", "ln_eps")


def check_checkpoint(manifest: dict, mc: ModelConfig, groups: int, codebook_size: int, tokens: int | None,
                     where: str, fix: str) -> list[str]:
    """Raise TrainError if the checkpoint does not fit the requested model/G/K; return warnings."""
    m = manifest["model"]
    diff = [f"{f}={m.get(f)} (run: {getattr(mc, f)})" for f in ARCH_FIELDS
            if f in m and m.get(f) != getattr(mc, f) and not (mc.kind == "vit" and f in ("vocab_size", "max_positions"))
            and not (mc.kind == "gpt2" and f in ("patch_size", "channels", "num_classes"))]
    if diff:
        raise TrainError(f"checkpoint {where} was trained for another model: {', '.join(diff)}: {fix}")
    if (manifest["groups"], manifest["codebook_size"]) != (groups, codebook_size):
        raise TrainError(f"checkpoint {where} has G={manifest['groups']} K={manifest['codebook_size']} but the run "
                         f"asks for G={groups} K={codebook_size}: set the groups/codebook_size to match")
    if tokens is not None and mc.kind == "vit" and m.get("tokens") != tokens:
        raise TrainError(f"checkpoint {where} was trained for {m.get('tokens')} tokens (ViT position table) but "
                         f"the run uses tokens={tokens}: use tokens={m.get('tokens')}")
    if tokens is not None and mc.kind == "gpt2":
        table = max(int(m.get("max_positions", 0)), int(m.get("tokens", 0)))
        mp = int(m.get("max_positions", 0))
        if max(mp, tokens) != table:
            fix = f"use tokens <= {table}" if table == mp else f"use tokens={table} (it was trained on {table})"
            raise TrainError(f"checkpoint {where} has a {table}-position table but the run uses tokens={tokens}: {fix}")
    warnings = []
    if manifest.get("status") != "complete":
        warnings.append(f"checkpoint {where} is {manifest.get('status')} (step {manifest.get('step')} of "
                        f"{manifest.get('steps')})")
    return warnings


# ---------------------------------------------------------------------------------------------------------------
# Stage: finetune
# ---------------------------------------------------------------------------------------------------------------
def sim_options(v: dict) -> SimOptions:
    return SimOptions(devices=int(v["devices"]), dct=bool(v["dct"]), noise_lambda=float(v["noise_lambda"]),
                      noise_cov=str(v["noise_cov"]), commitment_beta=float(v["commitment_beta"]),
                      ema_decay=float(v["ema_decay"]), split=str(v["split"]))


def finetune_one(cfg: DictConfig, task: Task, v: dict) -> None:
    d = run_dir(cfg, v)
    hp = task.cfg.finetune
    base_key = base_manifest(cfg)["key"]
    calib, calib_meta = load_calibration(cfg, int(v["groups"]), int(v["codebook_size"]))
    key = _key({"base": base_key, "calib": calib_meta.get("key"), "variant": v,
                "finetune": OmegaConf.to_container(hp, resolve=True), "seed": int(cfg.seed)})
    if not cfg.force and _saved_key(d / "manifest.json") == key and read_manifest(d).get("status") == "complete":
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
                "base": str(base_dir(cfg)), "seed": seed, "created": _now(), "train_wall_s": 0.0}
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


# ---------------------------------------------------------------------------------------------------------------
# Stage: evaluate
# ---------------------------------------------------------------------------------------------------------------
def load_checkpoint(d: Path, seed: int) -> tuple[Transformer, VQState, dict]:
    m = read_manifest(d)
    model = build_model(ModelConfig(**m["model"]), seed)
    model.load_state_dict(_load_safetensors(d / "model.safetensors"))
    t = _load_safetensors(d / "codebooks.safetensors")
    state = VQState(t["codebooks"], t.get("resid_mean"), t.get("resid_cov"))
    return model.eval(), state, m


def bits_per_token(mc: ModelConfig, groups: int | None, k: int | None) -> int:
    """Bits one token costs over the whole forward pass (paper Tables 1/3): L·D·32 full, L·G·log2K ASTRA."""
    if groups is None:
        return mc.layers * mc.hidden * 32
    return mc.layers * groups * vq.bits_per_index(k)


def runtime_check(cfg: DictConfig, task: Task, d: Path, m: dict, sim: AstraSim) -> dict:
    """Run the checkpoint in the real multi-process ASTRA runtime (loopback) on a test batch; compare with the
    masked simulation: fraction of equal predictions and the largest logit difference."""
    from ..network.loopback import RunFailed, launch

    n = int(cfg.evaluate.runtime_batch)
    model = sim.model
    x, _ = next(eval_batches(task, model, "test", chunk=n))
    with torch.no_grad():
        ref = sim.forward(x)[0]
    with tempfile.TemporaryDirectory(prefix="astra-train-check-") as wd:
        wd = Path(wd)
        _atomic_safetensors(wd / "inputs.safetensors", {"inputs": x})
        spec = {"model": m["model"], "tokens": task.tokens, "batch": len(x), "seed": int(cfg.seed),
                "devices": int(m["devices"]), "repeats": 1, "warmup": 0, "verify": False, "threads": 1,
                "timeout_s": float(cfg.evaluate.timeout_s), "collectives": "p2p", "fault": {},
                "method": {"name": "astra", "groups": m["groups"], "codebook_size": m["codebook_size"],
                           "dct": bool(m["dct"]), "vq": "checkpoint", "kv_table": "auto", "kv_table_max_mb": 512},
                "codebooks": str((d / "codebooks.safetensors").resolve()),
                "model_state": str((d / "model.safetensors").resolve()),
                "inputs_path": str(wd / "inputs.safetensors"), "outputs_dir": str(wd)}
        try:
            launch(spec, wd)
        except RunFailed as exc:
            raise TrainFailed(f"runtime check of {d.name} failed: {exc}") from None
        outs = [_load_safetensors(wd / f"rank{r}.safetensors") for r in range(spec["devices"])
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
    return {"task": task.name, "model": task.mc.name, "method": "astra" if astra else "full",
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
            "seed": int(cfg.seed), "timestamp": _now(), **extra}


def evaluate_full(cfg: DictConfig, task: Task) -> list[dict]:
    model = load_base(cfg, task)
    t0 = time.perf_counter()
    rows = []
    for split in (("test", "train") if task.vit else ("test",)):
        for metric, value in evaluate_split(task, model, lambda x: full_forward(model, x), split).items():
            rows.append(_row(task, cfg, None, metric, split, value))
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
    from ..results import _read, append_rows

    run_id = uuid.uuid4().hex[:12]
    path = Path(cfg.results_path)
    old = _read(path) if path.exists() and not cfg.force else None
    done: set[str] = set(old["eval_key"].dropna()) if old is not None and "eval_key" in old.columns else set()
    reused: list[dict] = []
    eval_cfg = {"evaluate": OmegaConf.to_container(cfg.evaluate, resolve=True), "eval_limit": task.cfg.eval_limit,
                "task": task.name}

    def fresh(key: str, what: str) -> str | None:
        """The evaluation key of ``what``, or None if the store already holds its rows (reused)."""
        k = _key({"checkpoint": key, **eval_cfg})
        if k in done:
            # re-append them (new run_id and timestamp) so they are the latest rows of this variant again
            last = old[old["eval_key"] == k]
            last = last[last["run_id"] == last.sort_values("timestamp", kind="stable")["run_id"].iloc[-1]]
            reused.extend(dict(r, timestamp=_now(), reused=True) for r in last.to_dict("records"))
            log(f"evaluate {what}: reusing its rows in {path}")
            return None
        return k

    rows: list[dict] = []
    base_key = base_manifest(cfg)["key"]
    k = fresh(base_key, "full")
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
        append_rows(cfg.results_path, rows, ACC_COLUMNS)
    log(f"evaluate: {n_new} new and {len(reused)} reused rows -> {cfg.results_path}")
    return rows
