"""The astra-train checkpoint format, as both astra-train (which writes it) and astra-bench (which runs it) read it.

A checkpoint directory holds ``model.safetensors`` (fine-tuned weights), ``codebooks.safetensors`` ((L, G, K, D/G)
codebooks plus EMA / noise state) and ``manifest.json``: the model config, the ASTRA variant (G, K, N, λ, β, DCT,
split, ...), the training status and step.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import ConfigError
from harness.models import ModelConfig

CHECKPOINT_FORMAT = "astra-checkpoint/1"
VARIANT_KEYS = ("groups", "codebook_size", "devices", "noise_lambda", "noise_cov", "commitment_beta", "dct", "split",
                "ema_decay")


def read_manifest(d: Path) -> dict:
    p = Path(d) / "manifest.json"
    if not p.is_file():
        raise ConfigError(f"{d} is not an astra-train checkpoint (no manifest.json): pass a runs/<variant> directory")
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{p} is not valid JSON: re-create the checkpoint with astra-train") from None
    if not isinstance(m, dict) or m.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{p} is not an {CHECKPOINT_FORMAT} manifest: re-create the checkpoint with astra-train")
    missing = [k for k in ("model", *VARIANT_KEYS) if k not in m]
    if missing:
        raise ConfigError(f"{p} lacks {missing}: re-create the checkpoint with astra-train")
    return m


# Model fields that must agree between a checkpoint and the run that uses it.
ARCH_FIELDS = ("kind", "layers", "hidden", "heads", "mlp_ratio", "patch_size", "channels", "num_classes", "vocab_size",
               "max_positions", "ln_eps", "kv_heads", "mlp_hidden", "rope_theta", "tie_embeddings",
               "qkv_bias")


def check_checkpoint(manifest: dict, mc: ModelConfig, groups: int, codebook_size: int, tokens: int | None,
                     where: str, fix: str) -> list[str]:
    """Raise ConfigError if the checkpoint does not fit the requested model/G/K; return warnings."""
    m = manifest["model"]
    diff = [f"{f}={m.get(f)} (run: {getattr(mc, f)})" for f in ARCH_FIELDS
            if f in m and m.get(f) != getattr(mc, f) and not (mc.kind == "vit" and f in ("vocab_size", "max_positions"))
            and not (mc.decoder and f in ("patch_size", "channels", "num_classes"))]
    if diff:
        raise ConfigError(f"checkpoint {where} was trained for another model: {', '.join(diff)}: {fix}")
    if (manifest["groups"], manifest["codebook_size"]) != (groups, codebook_size):
        raise ConfigError(f"checkpoint {where} has G={manifest['groups']} K={manifest['codebook_size']} but the run "
                         f"asks for G={groups} K={codebook_size}: set the groups/codebook_size to match")
    if tokens is not None and mc.kind == "vit" and m.get("tokens") != tokens:
        raise ConfigError(f"checkpoint {where} was trained for {m.get('tokens')} tokens (ViT position table) but "
                         f"the run uses tokens={tokens}: use tokens={m.get('tokens')}")
    if tokens is not None and mc.kind == "gpt2":  # its position table
        table = max(int(m.get("max_positions", 0)), int(m.get("tokens", 0)))
        mp = int(m.get("max_positions", 0))
        if max(mp, tokens) != table:
            fix = f"use tokens <= {table}" if table == mp else f"use tokens={table} (it was trained on {table})"
            raise ConfigError(f"checkpoint {where} has a {table}-position table but the run uses tokens={tokens}: {fix}")
    warnings = []
    if manifest.get("status") != "complete":
        warnings.append(f"checkpoint {where} is {manifest.get('status')} (step {manifest.get('step')} of "
                        f"{manifest.get('steps')})")
    return warnings
