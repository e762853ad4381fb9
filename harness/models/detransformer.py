"""DeTransformer's block-parallel architecture (Du et al.; the BP+AG / BP+SP baselines of ASTRA), built around an
original ViT/GPT2 (docs/methods.md says what is known and what is inferred).

With L layers, ``parts`` = N sub-blocks per decoupled layer and ``retained`` = Nb, the model is Nb groups of
(L/Nb - 1) *decoupled* layers followed by one *retained* original layer, so the last layer is always an original
one. A decoupled layer splits the hidden state along channels into N shards of D/N and runs N independent narrow
Transformer layers ("sub-blocks", their own weights) side by side; sub-blocks never see each other's shards. Only
the retained layers mix channels.

Sub-block shapes (the DeTransformer code has several; ``variant``):

- ``a`` (default, the authors' current accuracy code): q/k/v map D/N -> D with all H heads of D/H, the output
  projection D -> D/N, the MLP D/N -> r·D -> D/N. N sub-blocks hold as many weights as one original layer.
- ``b`` (their earlier design): q/k/v D/N -> D/N with H/N heads of D/H, MLP D/N -> I -> D/N with
  I = (2 + r)·D - 2·D/N, which also keeps the weight count of one original layer (I = 5.5·D at r = 4, N = 4).

We keep our models' pre-LN block layout (DeTransformer's BERT is post-LN) so a retained layer is exactly the
original ``Block`` at that depth, with its weights. The embedding, final LayerNorm and head are the original
model's. Decoupled sub-blocks get deterministic random weights from (seed, layer, part), so every rank builds the
same model without communication and a rank builds only the sub-blocks it runs. A BP model is a different model
from the original (the paper trains it from scratch): latency baselines use random weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.config import ModelConfig
from harness.models.transformer import MLP, Attention, Block, Transformer, init_weights, norm

VARIANTS = ("a", "b")


class SubBlock(Block):
    """One decoupled sub-layer: a pre-norm Transformer layer (the model's family: LayerNorm/GELU, or
    RMSNorm/rotary/grouped-query/SwiGLU) on a D/N channel shard of every token."""

    def __init__(self, cfg: ModelConfig, parts: int, variant: str):
        nn.Module.__init__(self)
        width = cfg.hidden // parts
        if variant == "a":
            heads, kv_heads, inner = cfg.heads, cfg.n_kv_heads, cfg.inner
        else:  # the weight count of one original layer: the MLP takes what the narrower attention leaves
            heads, kv_heads = cfg.heads // parts, max(1, cfg.n_kv_heads // parts)
            inner = 2 * cfg.hidden + cfg.inner - 2 * cfg.hidden // parts
        self.cfg = cfg  # init_weights reads cfg.layers for the residual-projection scaling
        self.ln1 = norm(cfg, width)
        self.attn = Attention(cfg, width, heads, kv_heads)
        self.ln2 = norm(cfg, width)
        self.mlp = MLP(cfg, width, inner)


def check_shape(cfg: ModelConfig, parts: int, retained: int, variant: str) -> str | None:
    """Why (cfg, N, Nb, variant) cannot be built, as one line with the fix; None if it can."""
    if variant not in VARIANTS:
        return f"method.sub_block={variant!r} is unknown: use one of {', '.join(VARIANTS)}"
    if retained < 1 or cfg.layers % retained:
        return (f"method.retained={retained} does not divide the model's {cfg.layers} layers: "
                f"use a divisor of {cfg.layers} (e.g. 1 or 4)")
    if cfg.hidden % parts:
        return (f"block parallelism splits the hidden size {cfg.hidden} into devices={parts} channel shards: "
                f"use a device count dividing {cfg.hidden}")
    if variant == "b" and not cfg.heads % parts and (cfg.heads // parts) % max(1, cfg.n_kv_heads // parts):
        return (f"method.sub_block=b gives each sub-block {cfg.heads // parts} heads over "
                f"{max(1, cfg.n_kv_heads // parts)} key/value heads, which do not group evenly: use sub_block=a")
    if variant == "b" and cfg.heads % parts:
        return (f"method.sub_block=b gives each sub-block heads/devices heads, but heads={cfg.heads} is not "
                f"divisible by devices={parts}: use sub_block=a or devices dividing {cfg.heads}")
    return None


def sub_seed(seed: int, layer: int, part: int) -> int:
    return (seed * 1_000_003 + layer * 1_009 + part) % (2**63)


class DecoupledModel(nn.Module):
    """The BP model around ``base`` (whose blocks at retained depths are reused, not copied). ``layers[i]`` is a
    ``ModuleDict`` of sub-blocks keyed by part (only ``build_parts`` are built; all by default) or a ``Block``.

    ``forward`` is the whole model on one device: the reference every BP plan must reproduce."""

    def __init__(self, base: Transformer, parts: int, retained: int, variant: str = "a", seed: int = 0,
                 build_parts: list[int] | None = None):
        super().__init__()
        cfg = base.cfg
        why = check_shape(cfg, parts, retained, variant)
        if why:
            raise ValueError(why)
        self.base = base
        self.cfg = cfg
        self.parts = parts
        self.retained = retained
        build = list(range(parts)) if build_parts is None else list(build_parts)
        group = cfg.layers // retained
        self.kinds: list[str] = []
        layers = []
        for i in range(cfg.layers):
            if (i + 1) % group == 0:
                self.kinds.append("full")
                layers.append(base.blocks[i])
            else:
                self.kinds.append("sub")
                subs = nn.ModuleDict()
                for p in build:
                    sub = SubBlock(cfg, parts, variant)
                    init_weights(sub, sub_seed(seed, i, p))
                    subs[str(p)] = sub
                layers.append(subs)
        self.layers = nn.ModuleList(layers)
        self.eval()

    @property
    def width(self) -> int:
        return self.cfg.hidden // self.parts

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """The original model's embedding of every token (ViT: class token first)."""
        m = self.base
        t = inputs.shape[1]
        pos = torch.arange(t)
        if self.cfg.decoder:
            return m.embed_tokens(inputs, pos)
        return torch.cat([m.embed_cls(inputs.shape[0]), m.embed_tokens(inputs, pos)], 1)

    def embed_shard(self, inputs: torch.Tensor, part: int) -> torch.Tensor:
        """Channels ``part`` of ``embed(inputs)``, computing only those (a device never needs the others)."""
        if self.cfg.decoder:
            return self.shard(self.embed(inputs), part)
        m, w = self.base, self.width
        cols = slice(part * w, (part + 1) * w)
        t = inputs.shape[1]
        tokens = F.linear(inputs, m.patch_embed.weight[cols], m.patch_embed.bias[cols]) + m.pos_embed[:, 1: t + 1, cols]
        cls = (m.cls_token[..., cols] + m.pos_embed[:, :1, cols]).expand(inputs.shape[0], -1, -1)
        return torch.cat([cls, tokens], 1)

    def head(self, h: torch.Tensor, all_positions: bool = True) -> torch.Tensor:
        """Final LayerNorm and head on full-width states: ViT the class token (row 0), GPT2 every row (or the last)."""
        if self.cfg.decoder:
            return self.base.logits(self.base.ln_f(h if all_positions else h[:, -1:]))
        return self.base.logits(self.base.ln_f(h[:, 0]))

    def shard(self, x: torch.Tensor, part: int) -> torch.Tensor:
        w = self.width
        return x[..., part * w: (part + 1) * w]

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, all_positions: bool = True) -> torch.Tensor:
        x = self.embed(inputs)
        for kind, layer in zip(self.kinds, self.layers):
            if kind == "full":
                x = layer(x)
            else:
                x = torch.cat([layer[str(p)](self.shard(x, p)) for p in range(self.parts)], -1)
        return self.head(x, all_positions)


def parameter_count(model: DecoupledModel) -> int:
    """Parameters of the BP model: the original's embedding, head and retained layers plus every sub-block (the
    original layers at decoupled depths, still held by ``base``, are not part of it)."""
    dropped = {id(p) for i, kind in enumerate(model.kinds) if kind == "sub" for p in model.base.blocks[i].parameters()}
    seen = {id(p): p for p in model.parameters() if id(p) not in dropped}
    return sum(p.numel() for p in seen.values())


def flops_per_layer(cfg: ModelConfig, tokens: int, parts: int, variant: str = "a") -> dict[str, float]:
    """Multiply-adds x 2 of one full layer and of one sub-block at ``tokens`` tokens (attention over all tokens)."""
    d, t = cfg.hidden, tokens
    full = 2 * t * (4 * d * d + 2 * cfg.mlp_ratio * d * d) + 2 * 2 * t * t * d
    w = d // parts
    if variant == "a":
        inner, ffn = d, cfg.mlp_ratio * d
    else:
        inner, ffn = w, (2 + cfg.mlp_ratio) * d - 2 * w
    sub = 2 * t * (4 * w * inner + 2 * w * ffn) + 2 * 2 * t * t * inner
    return {"full": float(full), "sub": float(sub), "ratio": sub / full if full else math.nan}
