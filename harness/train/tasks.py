"""The task: its model config and data (``conf/task/*.yaml``), the starting model, batches, loss and metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.models import ModelConfig, Transformer, build_model
from harness.train import data as D
from harness.train.common import TrainError
from harness.train.sim import SimOptions


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
        from harness.models.ptq import model_identity

        # fixed before the model is built; the quantization fields only when set (keys of fp32 runs unchanged)
        self._key = {"task": t, "model": {**model_identity(self.mc), "extra": self.mc.extra}}

    def key(self) -> dict:
        """What the base model depends on."""
        return self._key


def _model_config(tcfg: DictConfig, tokens: int) -> ModelConfig:
    """HF weights' config, or ``conf/model/<task.model>.yaml`` with ``task.model_overrides`` (the shared builder)."""
    if tcfg.weights:
        from harness.models.hf import WeightLoadError, config_from_hf

        if not Path(tcfg.weights).is_dir():
            raise TrainError(f"task.weights={tcfg.weights} is not a directory: pass an HF-layout model directory")
        try:
            return config_from_hf(tcfg.weights, tokens=tokens)
        except WeightLoadError as exc:
            raise TrainError(str(exc)) from None
    from harness.spec.build import model_from_conf

    overrides = OmegaConf.to_container(tcfg.model_overrides, resolve=True) if tcfg.model_overrides else None
    for key in ("weight_bits", "weight_group"):
        if overrides and key in overrides:
            raise TrainError(f"task.model_overrides.{key}: training runs in full precision; quantize the trained "
                             f"model in the evaluation instead (evaluate.{key})")
    try:
        return model_from_conf(str(tcfg.model), tokens, overrides=overrides, check_positions=False)
    except ConfigError as exc:  # name the task's keys: the model is chosen by task.model, changed by its overrides
        msg = str(exc).replace("model.", "task.model_overrides.").replace("model '", "task.model '")
        raise TrainError(msg) from None


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
        if not mc.decoder:
            raise TrainError(f"task.dataset={t.dataset} is a text task but the model is a {mc.kind}: use a GPT2 or a Llama")
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


def sim_options(v: dict) -> SimOptions:
    """The masked simulation's options for an ASTRA variant (a dict of ``VARIANT_KEYS``)."""
    return SimOptions(devices=int(v["devices"]), dct=bool(v["dct"]), noise_lambda=float(v["noise_lambda"]),
                      noise_cov=str(v["noise_cov"]), commitment_beta=float(v["commitment_beta"]),
                      ema_decay=float(v["ema_decay"]), split=str(v["split"]))


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
    return model(x, all_positions=True) if model.cfg.decoder else model(x)


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
