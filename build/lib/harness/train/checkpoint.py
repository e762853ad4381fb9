"""Where stages keep their outputs, and the two saved models: the base model (``base/``) and the ASTRA checkpoints
(``runs/<variant>/``, format in ``harness.manifest``).

    base/model.safetensors, base/manifest.json          full-precision model for the task
    runs/<variant>/model.safetensors                     fine-tuned weights (native names)
    runs/<variant>/codebooks.safetensors                 codebooks (L, G, K, D/G) + EMA / noise state
    runs/<variant>/manifest.json                         model config, G, K, N, λ, β, DCT, split, status, steps

Every file is written to a temporary name and renamed; a checkpoint directory is swapped in whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

from harness.models import ModelConfig, Transformer, build_model
from harness.parallel.manifest import read_manifest
from harness.train.common import TrainError, config_key, read_safetensors, write_json, write_safetensors
from harness.train.sim import VQState
from harness.train.tasks import Task


# ---------------------------------------------------------------------------------------------------------------
# The base model
# ---------------------------------------------------------------------------------------------------------------
def base_dir(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir) / "base"


def base_key(cfg: DictConfig, task: Task) -> str:
    """The key the base model of this task/model/seed is saved under."""
    return config_key(task.key() | {"seed": int(cfg.seed)})


def saved_key(manifest: Path) -> str | None:
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


def save_base(d: Path, model: Transformer, manifest: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    write_safetensors(d / "model.safetensors", model.state_dict())
    write_json(d / "manifest.json", manifest)


def load_base(cfg: DictConfig, task: Task) -> Transformer:
    """The saved base model of this task (its config becomes ``task.mc``)."""
    d = base_dir(cfg)
    info = base_manifest(cfg)
    if info.get("key") != base_key(cfg, task):
        raise TrainError(f"the base model in {d} was trained for another task/model config: "
                         "re-run stages=base (or force=true)")
    mc = ModelConfig(**info["model"])
    model = build_model(mc, int(cfg.seed))
    model.load_state_dict(read_safetensors(d / "model.safetensors"))
    task.mc = mc
    return model


# ---------------------------------------------------------------------------------------------------------------
# ASTRA checkpoints
# ---------------------------------------------------------------------------------------------------------------
def variant_name(v: dict) -> str:
    return (f"G{v['groups']}-K{v['codebook_size']}-N{v['devices']}-lam{v['noise_lambda']:g}-"
            f"beta{v['commitment_beta']:g}-{'' if v['dct'] is None else ('dct-' if v['dct'] else 'cls-')}{v['split']}"
            + ("" if v["noise_cov"] == "full" else f"-{v['noise_cov']}")
            + ("" if float(v["ema_decay"]) == 0.99 else f"-ema{float(v['ema_decay']):g}"))


def run_dir(cfg: DictConfig, v: dict) -> Path:
    return Path(cfg.out_dir) / "runs" / variant_name(v)


def save_checkpoint(d: Path, model: Transformer, state: VQState, manifest: dict) -> None:
    """Write the checkpoint into a sibling directory, then swap it in, so weights, codebooks and manifest always
    belong to the same step (an interrupt leaves the previous checkpoint, or this one, complete)."""
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
    write_safetensors(d / "model.safetensors", model.state_dict())
    write_safetensors(d / "codebooks.safetensors",
                      {"codebooks": state.codebooks, "ema_count": state.ema_count, "ema_sum": state.ema_sum,
                       "resid_mean": state.resid_mean, "resid_cov": state.resid_cov},
                      {"model": manifest["model"]["name"], "groups": manifest["groups"],
                       "codebook_size": manifest["codebook_size"]})
    write_json(d / "manifest.json", manifest)


def load_checkpoint(d: Path, seed: int) -> tuple[Transformer, VQState, dict]:
    m = read_manifest(d)
    model = build_model(ModelConfig(**m["model"]), seed)
    model.load_state_dict(read_safetensors(d / "model.safetensors"))
    t = read_safetensors(d / "codebooks.safetensors")
    state = VQState(t["codebooks"], t.get("resid_mean"), t.get("resid_cov"))
    return model.eval(), state, m
