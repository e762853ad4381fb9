"""Plain PyTorch ViT, GPT2 and Llama-family (pre-norm Transformers) with no parallelism inside.

The model files know nothing about ranks. Parallel methods (``harness.parallel``) apply a *plan* to an unmodified
model: they replace or wrap ``Block.attn`` / ``Block.mlp`` and drive the embedding / head pieces themselves.

Layout follows the HF checkpoints closely enough that weight import is a pure renaming:
attention uses one fused ``qkv`` Linear (q|k|v order; k and v of ``kv_heads`` heads), ``proj`` for the output
projection, and the MLP is ``fc`` -> GELU -> ``proj`` (Llama: ``fc`` the fused gate|up, SwiGLU, ``proj`` = down).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.config import ModelConfig


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """The rotary embedding's inverse frequencies (head_dim / 2), with Llama 3's rescaling of the low frequencies
    when ``scaling`` says ``rope_type: llama3`` (as HF's Llama computes them)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r} is not supported: use a checkpoint with no rope_scaling or "
                         "rope_type llama3")
    factor, lo, hi = float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old = float(scaling["original_max_position_embeddings"])
    wavelength = 2 * math.pi / inv
    scaled = torch.where(wavelength > old / lo, inv / factor, inv)
    smooth = (old / wavelength - lo) / (hi - lo)
    medium = ~(wavelength < old / hi) & ~(wavelength > old / lo)
    return torch.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


class Attention(nn.Module):
    """Multi-head self attention with a fused q|k|v projection; grouped-query (``kv_heads`` < ``heads``) and rotary
    positions for the Llama family.

    ``forward(x)`` is the single-device computation over a whole sequence. Methods that see part of the sequence
    call ``project(x, positions)`` with the tokens' global positions (the rotary embedding needs them; ViT and GPT2
    add positions at the embedding and ignore them here) and ``attend``. Methods that split heads shrink the
    projections and set ``q_size``/``kv_size``/``kv_index`` (see ``parallel/tp.py``).
    """

    def __init__(self, cfg: ModelConfig, width: int | None = None, heads: int | None = None,
                 kv_heads: int | None = None):
        """``cfg``'s attention, or one from ``width`` channels through ``heads`` heads (``kv_heads`` key/value
        heads) of ``cfg.head_dim`` back to ``width`` (block parallelism's narrow sub-blocks)."""
        super().__init__()
        width = width or cfg.hidden
        self.heads, self.kv_heads, self.head_dim = heads or cfg.heads, kv_heads or cfg.n_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = self.heads * cfg.head_dim, self.kv_heads * cfg.head_dim
        llama = cfg.kind == "llama"
        self.qkv = nn.Linear(width, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias or not llama)
        self.proj = nn.Linear(self.q_size, width, bias=not llama)
        self.causal = cfg.causal
        self.kv_index: torch.Tensor | None = None  # the k/v head each query head reads (None: h // group size)
        self.register_buffer("inv_freq", rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
                             if cfg.kind == "llama" else None, persistent=False)

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, -1, self.head_dim).transpose(1, 2)

    def split_qkv(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return t.split([self.q_size, self.kv_size, self.kv_size], dim=-1)

    def rotate(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Queries or keys (B, n, heads x head_dim) at global ``positions`` (n,): rotated (Llama), else as they are."""
        if self.inv_freq is None:
            return t
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]  # (n, 1, head_dim)
        b, n, w = t.shape
        x = t.view(b, n, w // self.head_dim, self.head_dim)
        half = self.head_dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return (x * cos + rotated * sin).view(b, n, w)

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of tokens ``x`` at global ``positions``; q and k rotated where the model has rotary positions."""
        q, k, v = self.split_qkv(self.qkv(x))
        return self.rotate(q, positions), self.rotate(k, positions), v

    def kv_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The k|v rows of the fused projection (weight, bias or None): remote tokens' K/V from their inputs."""
        w, b = self.qkv.weight[self.q_size:], self.qkv.bias
        return w, (b[self.q_size:] if b is not None else None)

    def expand_kv(self, t: torch.Tensor, query_heads: int, kv_index: torch.Tensor | None = None) -> torch.Tensor:
        """k or v split in heads (B, kv heads, n, d) -> one per query head (B, ``query_heads``, n, d), by
        ``kv_index`` (the k/v head each query head reads; default ``self.kv_index``, else h // group size)."""
        index = kv_index if kv_index is not None else self.kv_index
        if index is None:
            if t.shape[1] == query_heads:
                return t
            index = torch.arange(query_heads) // (query_heads // t.shape[1])
        return t.index_select(1, index)

    def attend(self, q, k, v, mask=None, is_causal=False, kv_index=None) -> torch.Tensor:
        """q: (B, n, H*hd) ; k, v: (B, m, Hkv*hd) -> (B, n, H*hd). ``mask`` is boolean, True = may attend;
        ``kv_index``: see ``expand_kv``."""
        q = self.split_heads(q)
        k, v = (self.expand_kv(self.split_heads(t), q.shape[1], kv_index) for t in (k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        b, h, n, d = o.shape
        return o.transpose(1, 2).reshape(b, n, h * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x, torch.arange(x.shape[1]))
        return self.proj(self.attend(q, k, v, is_causal=self.causal))


class MLP(nn.Module):
    """``fc`` -> activation -> ``proj``: GELU (ViT, GPT2), or SwiGLU (Llama: ``fc`` is the fused gate|up
    projection, the activation silu(gate) x up)."""

    def __init__(self, cfg: ModelConfig, width: int | None = None, inner: int | None = None):
        super().__init__()
        width, inner = width or cfg.hidden, inner or cfg.inner
        self.gated = cfg.kind == "llama"
        self.fc = nn.Linear(width, (2 if self.gated else 1) * inner, bias=not self.gated)
        self.proj = nn.Linear(inner, width, bias=not self.gated)
        # GPT2 uses the tanh approximation, ViT the exact erf GELU (as in the HF checkpoints).
        self.approximate = "tanh" if cfg.kind == "gpt2" else "none"

    def fc_rows(self, cols: slice) -> list[slice]:
        """The rows of ``fc`` behind inner columns ``cols`` (SwiGLU: the gate's and the up projection's)."""
        if not self.gated:
            return [cols]
        inner = self.fc.out_features // 2
        return [cols, slice(inner + cols.start, inner + cols.stop)]

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return F.silu(gate) * up
        return F.gelu(h, approximate=self.approximate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.activate(self.fc(x)))


def norm(cfg: ModelConfig, width: int | None = None) -> nn.Module:
    """LayerNorm, or RMSNorm for the Llama family, over ``width`` (default: the hidden size) channels."""
    if cfg.kind == "llama":
        return nn.RMSNorm(width or cfg.hidden, eps=cfg.ln_eps)
    return nn.LayerNorm(width or cfg.hidden, eps=cfg.ln_eps)


class Block(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then + mlp(ln2(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = norm(cfg)
        self.attn = Attention(cfg)
        self.ln2 = norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Shared skeleton; subclasses provide ``embed`` and ``head``."""

    cfg: ModelConfig

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = norm(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x)


class ViT(Transformer):
    """ViT encoder. Input: patch pixels already flattened, shape (B, T, channels*patch*patch).

    ``patchify`` turns (B, C, H, W) images into that layout; a Linear patch embedding on flattened patches is the
    same map as HF's stride-p Conv2d (weights are reshaped on import).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.patch_embed = nn.Linear(cfg.patch_dim, cfg.hidden)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens + 1, cfg.hidden))
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch_size
        b, c, h, w = images.shape
        x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def embed_tokens(self, patches: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Embed content tokens at global content positions ``positions`` (0-based, excluding the class token)."""
        return self.patch_embed(patches) + self.pos_embed[:, 1 + positions]

    def embed_cls(self, batch: int) -> torch.Tensor:
        return (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)

    def logits(self, h_cls: torch.Tensor) -> torch.Tensor:
        """Classifier on the (already final-LayerNormed) class-token state."""
        return self.head(h_cls)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, t, _ = patches.shape
        pos = torch.arange(t, device=patches.device)
        x = torch.cat([self.embed_cls(b), self.embed_tokens(patches, pos)], dim=1)
        return self.logits(self.encode(x)[:, 0])


class Decoder(Transformer):
    """A causal LM: token ids (B, T) in, logits out; subclasses embed the tokens and map states to logits."""

    def forward(self, ids: torch.Tensor, all_positions: bool = True) -> torch.Tensor:
        t = ids.shape[1]
        x = self.embed_tokens(ids, torch.arange(t, device=ids.device))
        h = self.encode(x)
        return self.logits(h if all_positions else h[:, -1:])


class GPT2(Decoder):
    """GPT2 decoder with tied LM head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.wpe = nn.Embedding(max(cfg.max_positions, cfg.tokens), cfg.hidden)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)

    def embed_tokens(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.wte(ids) + self.wpe(positions)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.wte.weight.t()


class Llama(Decoder):
    """Llama-family decoder: positions enter through the attention's rotary embedding, not at the embedding; the
    LM head is the embedding (``tie_embeddings``) or its own matrix."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)

    def embed_tokens(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.wte(ids)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.wte.weight.t() if self.lm_head is None else self.lm_head(h)


def init_weights(model: nn.Module, seed: int) -> None:
    """Deterministic GPT-2 style init (N(0, 0.02) Linear weights, zero biases, residual projections scaled)."""
    g = torch.Generator().manual_seed(seed)
    layers = getattr(getattr(model, "cfg", None), "layers", 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def build_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """Build a model from ``cfg``: random weights from ``seed``, or HF-layout weights from ``cfg.weights``."""
    if cfg.kind == "vit":
        model: Transformer = ViT(cfg)
    elif cfg.kind == "gpt2":
        model = GPT2(cfg)
    elif cfg.kind == "llama":
        model = Llama(cfg)
    else:
        raise ValueError(f"unknown model kind {cfg.kind!r}: use 'vit', 'gpt2' or 'llama'")
    if cfg.weights:
        from harness.models.hf import load_hf_weights

        load_hf_weights(model, cfg.weights)
    else:
        init_weights(model, seed)
    return model.eval()


def parameter_count(cfg: ModelConfig) -> int:
    """The parameters of ``cfg``'s model, counted without allocating them (a model built on the meta device)."""
    with torch.device("meta"):
        model = {"vit": ViT, "gpt2": GPT2, "llama": Llama}[cfg.kind](cfg)
    return sum(p.numel() for p in model.parameters())


def make_inputs(cfg: ModelConfig, tokens: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Random inputs identical on every rank: patch pixels for ViT, token ids for the decoders."""
    g = torch.Generator().manual_seed(seed + 7919)
    if cfg.kind == "vit":
        return torch.randn(batch, tokens, cfg.patch_dim, generator=g)
    return torch.randint(0, cfg.vocab_size, (batch, tokens), generator=g)
