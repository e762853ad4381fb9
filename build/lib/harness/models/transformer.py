"""Plain PyTorch ViT and GPT2 (pre-LN Transformers) with no parallelism inside.

The model files know nothing about ranks. Parallel methods (``harness.parallel``) apply a *plan* to an unmodified
model: they replace or wrap ``Block.attn`` / ``Block.mlp`` and drive the embedding / head pieces themselves.

Layout follows the HF checkpoints closely enough that weight import is a pure renaming:
attention uses one fused ``qkv`` Linear (out = 3*hidden, q|k|v order), ``proj`` for the output projection, and
the MLP is ``fc`` -> GELU -> ``proj``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.config import ModelConfig


class Attention(nn.Module):
    """Multi-head self attention with a fused q|k|v projection.

    ``forward(x, mask)`` is the single-device computation. Methods that split heads change ``self.heads`` and the
    projection shapes (see ``parallel/tp.py``); methods that split tokens replace the module (``parallel/sp.py``).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.causal = cfg.causal

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, -1, self.head_dim).transpose(1, 2)

    def attend(self, q, k, v, mask=None, is_causal=False) -> torch.Tensor:
        """q: (B, n, H*hd) ; k, v: (B, m, H*hd) -> (B, n, H*hd). ``mask`` is boolean, True = may attend."""
        o = F.scaled_dot_product_attention(
            self.split_heads(q), self.split_heads(k), self.split_heads(v), attn_mask=mask, is_causal=is_causal
        )
        b, h, n, d = o.shape
        return o.transpose(1, 2).reshape(b, n, h * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(self.attend(q, k, v, is_causal=self.causal))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.hidden, cfg.mlp_ratio * cfg.hidden)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.hidden, cfg.hidden)
        # GPT2 uses the tanh approximation, ViT the exact erf GELU (as in the HF checkpoints).
        self.approximate = "tanh" if cfg.kind == "gpt2" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class Block(nn.Module):
    """Pre-LN block: x + attn(ln1(x)), then + mlp(ln2(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
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
        self.ln_f = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)

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


class GPT2(Transformer):
    """GPT2 decoder with tied LM head. Input: token ids (B, T)."""

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

    def forward(self, ids: torch.Tensor, all_positions: bool = True) -> torch.Tensor:
        t = ids.shape[1]
        x = self.embed_tokens(ids, torch.arange(t, device=ids.device))
        h = self.encode(x)
        return self.logits(h if all_positions else h[:, -1:])


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
    else:
        raise ValueError(f"unknown model kind {cfg.kind!r}: use 'vit' or 'gpt2'")
    if cfg.weights:
        from harness.models.hf import load_hf_weights

        load_hf_weights(model, cfg.weights)
    else:
        init_weights(model, seed)
    return model.eval()


def make_inputs(cfg: ModelConfig, tokens: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Random inputs identical on every rank: patch pixels for ViT, token ids for GPT2."""
    g = torch.Generator().manual_seed(seed + 7919)
    if cfg.kind == "vit":
        return torch.randn(batch, tokens, cfg.patch_dim, generator=g)
    return torch.randint(0, cfg.vocab_size, (batch, tokens), generator=g)
