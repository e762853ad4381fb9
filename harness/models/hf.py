"""Import HF ``ViTForImageClassification`` / ``GPT2LMHeadModel`` / Llama-layout causal LM checkpoints
(``LlamaForCausalLM``, ``MistralForCausalLM`` within its sliding window, ``Qwen2ForCausalLM``) into our plain models.

``config_from_hf(dir)`` turns ``config.json`` into a :class:`ModelConfig`; ``load_hf_weights(model, dir)`` renames
(and, where the layouts differ, reshapes) the checkpoint tensors onto the model. Loading is strict: every parameter
of our model must come from the checkpoint with exactly its shape, and checkpoint tensors we do not know are an
error too (apart from a few known buffers), so a mismatched checkpoint can never load half-way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from harness.models.config import ModelConfig

PREFIXES = ("vit.", "transformer.")
# Checkpoint entries with no parameter of ours behind them: GPT2's causal-mask buffers, its tied LM head (checked
# against wte below) and ViTModel's unused pooler.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "lm_head.weight", "pooler.dense.weight", "pooler.dense.bias",
                    "rotary_emb.inv_freq")
# transformers>=5 names ViT modules differently in memory (a raw ``torch.save(model.state_dict())``) than on disk
# (``save_pretrained`` and Hub checkpoints); rewrite the in-memory names to the on-disk ones.
V5_VIT_NAMES = [
    (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]
CONFIG_FIX = "build the model with config_from_hf(<weights dir>) so its shape matches the checkpoint"


class WeightLoadError(ValueError):
    """A checkpoint that cannot be imported; the message is one line naming the problem and the fix."""


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise WeightLoadError(
            f"weights directory {path} does not exist: pass model.weights=<dir holding config.json and "
            "model.safetensors or pytorch_model.bin>"
        )


def _read_config(path: Path) -> dict:
    _check_dir(path)
    file = path / "config.json"
    if not file.is_file():
        raise WeightLoadError(f"{file} not found: save the HF model with save_pretrained({str(path)!r})")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise WeightLoadError(f"{file} is not valid JSON ({e}): re-save it with save_pretrained") from None


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise WeightLoadError(msg)


def _mlp_ratio(inner: int, hidden: int, file: Path) -> int:
    _require(
        inner % hidden == 0,
        f"{file}: MLP width {inner} is not a multiple of hidden size {hidden}: only integer mlp ratios are supported",
    )
    return inner // hidden


def config_from_hf(path, tokens: int | None = None) -> ModelConfig:
    """ModelConfig for the HF ViT / GPT2 checkpoint in ``path`` (``tokens``: content tokens; default = all)."""
    path = Path(path)
    c = _read_config(path)
    file, kind = path / "config.json", c.get("model_type")
    common = dict(name=path.name, kind=kind, weights=str(path))
    if kind == "vit":
        act = c.get("hidden_act", "gelu")
        _require(act == "gelu", f"{file}: hidden_act={act!r} is not supported: only exact 'gelu' ViTs can be imported")
        _require(c.get("qkv_bias", True), f"{file}: qkv_bias=false is not supported: import a ViT with qkv biases")
        size, p = c.get("image_size", 224), c.get("patch_size", 16)
        h, w = (size, size) if isinstance(size, int) else size
        _require(h % p == 0 and w % p == 0, f"{file}: image_size={size} is not a multiple of patch_size={p}")
        hidden = c["hidden_size"]
        return ModelConfig(
            **common,
            layers=c["num_hidden_layers"],
            hidden=hidden,
            heads=c["num_attention_heads"],
            mlp_ratio=_mlp_ratio(c["intermediate_size"], hidden, file),
            ln_eps=c.get("layer_norm_eps", 1e-12),
            patch_size=p,
            channels=c.get("num_channels", 3),
            num_classes=len(c["id2label"]) if c.get("id2label") else c.get("num_labels", 2),
            tokens=tokens if tokens is not None else (h // p) * (w // p),
        )
    if kind == "gpt2":
        act = c.get("activation_function", "gelu_new")
        _require(
            act in ("gelu_new", "gelu_pytorch_tanh"),
            f"{file}: activation_function={act!r} is not supported: only tanh-GELU ('gelu_new') GPT2s can be imported",
        )
        for key, want in [("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                          ("add_cross_attention", False), ("tie_word_embeddings", True)]:  # fmt: skip
            _require(
                c.get(key, want) == want,
                f"{file}: {key}={c.get(key)} is not supported: only standard GPT2 ({key}={want}) can be imported",
            )
        hidden = c["n_embd"]
        return ModelConfig(
            **common,
            layers=c["n_layer"],
            hidden=hidden,
            heads=c["n_head"],
            mlp_ratio=_mlp_ratio(c.get("n_inner") or 4 * hidden, hidden, file),
            ln_eps=c.get("layer_norm_epsilon", 1e-5),
            vocab_size=c["vocab_size"],
            max_positions=c["n_positions"],
            tokens=tokens if tokens is not None else c["n_positions"],
        )
    if kind in LLAMA_TYPES:
        return _llama_config(c, file, tokens, common)
    raise WeightLoadError(f"{file}: model_type={kind!r} is not supported: import a 'vit', 'gpt2' or Llama-layout "
                          f"({', '.join(LLAMA_TYPES)}) checkpoint")


LLAMA_TYPES = ("llama", "mistral", "qwen2")


def _llama_config(c: dict, file: Path, tokens: int | None, common: dict) -> ModelConfig:
    kind = c["model_type"]
    act = c.get("hidden_act", "silu")
    _require(act == "silu", f"{file}: hidden_act={act!r} is not supported: only SwiGLU (silu) Llama layouts import")
    for key in ("attention_bias", "mlp_bias"):
        _require(not c.get(key, False), f"{file}: {key}=true is not supported: import a checkpoint without it")
    hidden, heads = c["hidden_size"], c["num_attention_heads"]
    head_dim = c.get("head_dim") or hidden // heads
    _require(head_dim * heads == hidden, f"{file}: head_dim={head_dim} x {heads} heads is not hidden_size={hidden}: "
                                         "only head_dim = hidden_size / num_attention_heads is supported")
    rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})  # transformers 5 / 4
    theta = float(rope.pop("rope_theta", c.get("rope_theta", 10000.0)))
    kind_rope = rope.get("rope_type", rope.get("type", "default"))
    _require(kind_rope in ("default", "llama3"), f"{file}: rope type {kind_rope!r} is not supported: only default "
                                                 "and llama3 rotary positions import")
    positions = c.get("max_position_embeddings", 2048)
    window = c.get("sliding_window") if (kind == "mistral" or c.get("use_sliding_window")) else None
    if window:  # attention within the window equals full attention: allow no longer sequences
        positions = min(positions, int(window))
    return ModelConfig(
        **{**common, "kind": "llama"},
        layers=c["num_hidden_layers"],
        hidden=hidden,
        heads=heads,
        kv_heads=c.get("num_key_value_heads") or heads,
        mlp_hidden=c["intermediate_size"],
        ln_eps=c.get("rms_norm_eps", 1e-6),
        vocab_size=c["vocab_size"],
        max_positions=positions,
        rope_theta=theta,
        rope_scaling=rope if kind_rope == "llama3" else None,
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        qkv_bias=kind == "qwen2",
        tokens=tokens if tokens is not None else positions,
    )


def _read_state_dict(path: Path, kind: str = "vit") -> tuple[dict[str, torch.Tensor], Path]:
    _check_dir(path)
    if (file := path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        sd = load_file(str(file))
    elif (file := path / "pytorch_model.bin").is_file():
        sd = torch.load(file, map_location="cpu", weights_only=True)
    else:
        raise WeightLoadError(
            f"no model.safetensors or pytorch_model.bin in {path}: save the HF model there with save_pretrained "
            "(sharded checkpoints are not supported)"
        )
    if kind == "llama":
        return {k.removeprefix("model."): v for k, v in sd.items()}, file
    for pre in PREFIXES:
        sd = {k.removeprefix(pre): v for k, v in sd.items()}
    if any(k.startswith("layers.") for k in sd):
        for pattern, repl in V5_VIT_NAMES:
            sd = {re.sub(pattern, repl, k): v for k, v in sd.items()}
    return sd, file


class _Source:
    """Checkpoint lookup that records which entries were used; a missing entry is a WeightLoadError."""

    def __init__(self, sd: dict[str, torch.Tensor], file: Path):
        self.sd, self.file, self.used = sd, file, set()

    def __call__(self, key: str) -> torch.Tensor:
        if key not in self.sd:
            raise WeightLoadError(f"tensor {key!r} missing from {self.file}: {CONFIG_FIX} (same kind and layers)")
        self.used.add(key)
        return self.sd[key]


def _vit_tensors(t: _Source, layers: int) -> dict[str, tuple[str, torch.Tensor]]:
    """Our parameter name -> (checkpoint name, tensor in our layout)."""
    e = "embeddings."
    conv = f"{e}patch_embeddings.projection."
    out = {
        "cls_token": (f"{e}cls_token", t(f"{e}cls_token")),
        "pos_embed": (f"{e}position_embeddings", t(f"{e}position_embeddings")),
        # Conv2d (D, C, p, p) flattened is (D, C*p*p) in (C, p, p) order, the order ViT.patchify produces.
        "patch_embed.weight": (f"{conv}weight", t(f"{conv}weight").flatten(1)),
        "patch_embed.bias": (f"{conv}bias", t(f"{conv}bias")),
    }
    pairs = [("ln_f", "layernorm"), ("head", "classifier")]
    for i in range(layers):
        s, d = f"encoder.layer.{i}.", f"blocks.{i}."
        pairs += [(f"{d}{a}", f"{s}{b}") for a, b in [
            ("ln1", "layernorm_before"), ("ln2", "layernorm_after"), ("attn.proj", "attention.output.dense"),
            ("mlp.fc", "intermediate.dense"), ("mlp.proj", "output.dense")]]  # fmt: skip
        for wb in ("weight", "bias"):
            names = [f"{s}attention.attention.{n}.{wb}" for n in ("query", "key", "value")]
            out[f"{d}attn.qkv.{wb}"] = ("|".join(names), torch.cat([t(n) for n in names]))
    for ours, theirs in pairs:
        for wb in ("weight", "bias"):
            out[f"{ours}.{wb}"] = (f"{theirs}.{wb}", t(f"{theirs}.{wb}"))
    return out


def _gpt2_tensors(t: _Source, layers: int) -> dict[str, tuple[str, torch.Tensor]]:
    out = {f"{n}.weight": (f"{n}.weight", t(f"{n}.weight")) for n in ("wte", "wpe", "ln_f")}
    out["ln_f.bias"] = ("ln_f.bias", t("ln_f.bias"))
    for i in range(layers):
        s, d = f"h.{i}.", f"blocks.{i}."
        for ours, theirs, conv1d in [("ln1", "ln_1", False), ("ln2", "ln_2", False), ("attn.qkv", "attn.c_attn", True),
                                     ("attn.proj", "attn.c_proj", True), ("mlp.fc", "mlp.c_fc", True),
                                     ("mlp.proj", "mlp.c_proj", True)]:  # fmt: skip
            w = t(f"{s}{theirs}.weight")
            # HF Conv1D stores (in, out); nn.Linear wants (out, in). c_attn's outputs are already q|k|v.
            out[f"{d}{ours}.weight"] = (f"{s}{theirs}.weight", w.t() if conv1d else w)
            out[f"{d}{ours}.bias"] = (f"{s}{theirs}.bias", t(f"{s}{theirs}.bias"))
    return out


def _llama_tensors(t: _Source, cfg: ModelConfig) -> dict[str, tuple[str, torch.Tensor]]:
    out = {"wte.weight": ("embed_tokens.weight", t("embed_tokens.weight")), "ln_f.weight": ("norm.weight",
                                                                                            t("norm.weight"))}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ("lm_head.weight", t("lm_head.weight"))
    for i in range(cfg.layers):
        s, d = f"layers.{i}.", f"blocks.{i}."
        names = [f"{s}self_attn.{n}_proj.weight" for n in "qkv"]
        out[f"{d}attn.qkv.weight"] = ("|".join(names), torch.cat([t(n) for n in names]))
        if cfg.qkv_bias:
            names = [f"{s}self_attn.{n}_proj.bias" for n in "qkv"]
            out[f"{d}attn.qkv.bias"] = ("|".join(names), torch.cat([t(n) for n in names]))
        names = [f"{s}mlp.{n}_proj.weight" for n in ("gate", "up")]  # our fc is gate|up
        out[f"{d}mlp.fc.weight"] = ("|".join(names), torch.cat([t(n) for n in names]))
        for ours, theirs in [("attn.proj", "self_attn.o_proj"), ("mlp.proj", "mlp.down_proj"),
                             ("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")]:
            out[f"{d}{ours}.weight"] = (f"{s}{theirs}.weight", t(f"{s}{theirs}.weight"))
    return out


def _shape_fix(name: str, theirs: torch.Size, cfg: ModelConfig) -> str:
    if name == "pos_embed" and len(theirs) == 3:
        n = theirs[1] - 1
        return f"the checkpoint's position table holds {n} patches + class token; use tokens={n} (or leave it unset)"
    if name == "wpe.weight" and cfg.tokens > theirs[0]:
        return f"tokens={cfg.tokens} exceeds the checkpoint's n_positions={theirs[0]}; use tokens<={theirs[0]}"
    return CONFIG_FIX


def load_hf_weights(model: nn.Module, path) -> None:
    """Copy the HF checkpoint in ``path`` into ``model`` (a ViT, GPT2 or Llama built from a matching config),
    strictly."""
    path, cfg = Path(path), model.cfg
    sd, file = _read_state_dict(path, cfg.kind)
    cfg_file = path / "config.json"
    if cfg_file.is_file():
        kind = _read_config(path).get("model_type")
        if ("llama" if kind in LLAMA_TYPES else kind) != cfg.kind:
            raise WeightLoadError(f"{path} holds a {kind!r} checkpoint but the model is {cfg.kind!r}: {CONFIG_FIX}")
    t = _Source(sd, file)
    if cfg.kind == "llama":
        tensors = _llama_tensors(t, cfg)
        if cfg.tie_embeddings:  # a tied head may be saved beside the embedding; it must be the same matrix
            head = sd.get("lm_head.weight")
            _require(head is None or torch.equal(head, sd["embed_tokens.weight"]),
                     f"{file}: lm_head.weight differs from embed_tokens.weight but tie_word_embeddings is true")
            t.used.add("lm_head.weight")
    else:
        tensors = (_vit_tensors if cfg.kind == "vit" else _gpt2_tensors)(t, cfg.layers)

    if cfg.kind == "gpt2" and "lm_head.weight" in sd and not torch.equal(sd["lm_head.weight"], sd["wte.weight"]):
        raise WeightLoadError(f"{file}: lm_head.weight differs from wte.weight: only tied-embedding GPT2 is supported")
    extra = sorted(k for k in sd if k not in t.used and not k.endswith(IGNORED_SUFFIXES))
    if extra:
        more = f" (+{len(extra) - 3} more)" if len(extra) > 3 else ""
        names = ", ".join(extra[:3]) + more
        raise WeightLoadError(f"{file} has tensors the model has no place for: {names}: {CONFIG_FIX}")

    params = dict(model.named_parameters())
    unmapped = sorted(set(params) - set(tensors))
    _require(not unmapped, f"no checkpoint tensor maps to model parameters {unmapped}: extend harness/models/hf.py")
    for name, (src, value) in tensors.items():
        p = params[name]
        if value.shape != p.shape:
            raise WeightLoadError(
                f"tensor {src} in {file} has shape {tuple(value.shape)} but the model's {name} has shape "
                f"{tuple(p.shape)}: {_shape_fix(name, value.shape, cfg)}"
            )
    with torch.no_grad():
        for name, (_, value) in tensors.items():
            params[name].copy_(value)
