"""``ring_attn``: ring attention (context parallelism; Liu, Zaharia and Abbeel, 2023).

Every rank keeps its shard of the sequence through the whole model, with the full weights. In each block's
attention it projects q, k and v for its own tokens only; the k|v blocks then travel round the ring of ranks: in
step s a rank holds the block of rank r - s, starts sending it to rank r + 1 (``Comm.start_shift``) and, while it
travels, computes the attention of its queries over that block; the partial results are merged with the
online-softmax rule (running log-sum-exp), which gives exactly the softmax over all keys. After N - 1 shifts every
rank has seen every block; the last block's compute has no transfer to hide (the pipeline's drain), the first block
is the rank's own (its fill). Each rank sends (N - 1) k|v blocks per block — twice the bytes of ``sp``'s all-gather
of the attention input — and in exchange does not wait for them, as long as a block's attention takes longer than
its transfer.

ViT: content tokens split contiguously (as ``sp``); the class token is replicated on every rank (its k|v stay local,
never sent), so every rank ends with the class prediction. GPT2 (causal): a contiguous split would leave the last
rank with most of the work (its queries see every key), so tokens are *striped* — rank r holds positions r, r + N,
r + 2N, ... — and every pair of ranks shares the causal mask's work evenly; the next-token logits come from the
rank holding the last position.

The block attention is written out (scores, mask, log-sum-exp) rather than PyTorch's fused kernel, which returns
no log-sum-exp; on this project's sequence lengths it is a small part of a block's compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import ConfigError
from harness.options import opt
from harness.parallel.base import Method, MethodOptions, Output, partition, register, traffic_of


@dataclass
class RingOptions(MethodOptions):
    name: str = opt("ring_attn", "the method")


def ring_positions(tokens: int, world: int, causal: bool) -> list[torch.Tensor]:
    """Each rank's content positions: contiguous even shards, or striped (rank r: r, r + N, ...) when causal."""
    if causal:
        return [torch.arange(r, tokens, world) for r in range(world)]
    return [torch.arange(s, e) for s, e in partition(tokens, world)]


class RingAttention(nn.Module):
    """Stands in for ``Block.attn``; keeps the original module (its weights) and defers to the plan."""

    def __init__(self, inner: nn.Module, plan: Ring, index: int):
        super().__init__()
        self.inner = inner
        self.index = index
        self._plan = [plan]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._plan[0].attention(self.inner, x, self.index)


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
    """Attention of ``q`` (B, H, n, d) over one block of keys ``k``/``v`` (B, H, m, d): (output normalised within
    the block, its log-sum-exp (B, H, n)); a query that may see no key of the block gets output 0 and -inf."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    return torch.exp(scores - safe.unsqueeze(-1)) @ v, lse


def merge(out: torch.Tensor, lse: torch.Tensor, blk: torch.Tensor, blk_lse: torch.Tensor):
    """Two partial attentions over disjoint keys, combined by their log-sum-exps (``lse`` must be finite)."""
    new = torch.logaddexp(lse, blk_lse)
    return out * torch.exp(lse - new).unsqueeze(-1) + blk * torch.exp(blk_lse - new).unsqueeze(-1), new


@register
class Ring(Method):
    name = "ring_attn"
    title = "Ring attention"
    Options = RingOptions
    overlaps = True

    @classmethod
    def check(cls, spec) -> None:
        if spec.devices > spec.tokens:
            raise ConfigError(f"ring_attn gives every device at least one token, but devices={spec.devices} > tokens="
                              f"{spec.tokens}: use at most {spec.tokens} devices")

    @classmethod
    def traffic(cls, spec, rank: int) -> list[tuple[str, str, int]]:
        n_max = max(len(p) for p in ring_positions(spec.tokens, spec.devices, spec.model.decoder))
        block = spec.batch * n_max * 2 * spec.model.n_kv_heads * spec.model.head_dim * 4  # k|v of the largest shard
        return traffic_of(spec, [("shift", f"block{i}.step{s}", block)
                                 for i in range(spec.model.layers) for s in range(1, spec.devices)])

    def __init__(self, model, comm, opts=None):
        super().__init__(model, comm, opts)
        self.prefix = 1 if self.cfg.kind == "vit" else 0  # the replicated class token
        self.causal = self.cfg.causal
        for i, blk in enumerate(model.blocks):
            blk.attn = RingAttention(blk.attn, self, i)
        self.positions: list[torch.Tensor] = []
        self.masks: list[torch.Tensor | None] = []

    def setup(self, tokens: int) -> None:
        w, r = self.comm.world, self.comm.rank
        self.positions = ring_positions(tokens, w, self.causal)
        mine = self.positions[r]
        # the mask of this rank's queries over block j's keys (causal only), True = may attend
        self.masks = [(self.positions[j][None, :] <= mine[:, None]) if self.causal else None for j in range(w)]

    def attention(self, attn: nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
        w, r, p = self.comm.world, self.comm.rank, self.prefix
        # rotary models (no class token) rotate q and k at the tokens' global positions, before k travels
        at = torch.arange(x.shape[1]) if p else self.positions[r]
        q, k, v = (attn.split_heads(t) for t in attn.project(x, at))  # (B, H or kv heads, p + n, d)
        n_max = max(len(pos) for pos in self.positions)
        kv = torch.cat([k[:, :, p:], v[:, :, p:]], dim=1)  # (B, 2H, n, d): this rank's block, what travels
        short = n_max - kv.shape[2]
        cur = F.pad(kv, (0, 0, 0, short)) if short else kv
        # the first shift starts, then the own block's attention runs (the class token's k|v with it: every query
        # sees at least one key there); then each block received is sent on while it is folded in
        pending = self.comm.start_shift(cur, tag=f"block{index}.step1") if w > 1 else None
        own_mask = self.masks[r]
        if own_mask is not None and p:
            own_mask = torch.cat([torch.ones(own_mask.shape[0], p, dtype=torch.bool), own_mask], 1)
        hq = q.shape[1]
        out, lse = block_attention(q, attn.expand_kv(k, hq), attn.expand_kv(v, hq), own_mask)
        heads = k.shape[1]  # key/value heads: what travels
        for s in range(1, w):
            cur = pending.wait()  # rank r - s's block
            if s + 1 < w:
                pending = self.comm.start_shift(cur, tag=f"block{index}.step{s + 1}")
            out, lse = self._fold(attn, q, out, lse, cur, heads, (r - s) % w)
        b, h, n, d = out.shape
        return attn.proj(out.transpose(1, 2).reshape(b, n, h * d))

    def _fold(self, attn, q, out, lse, block, heads, src):
        """Merge the attention over rank ``src``'s k|v ``block`` (padded to the largest shard) into (out, lse)."""
        n, hq = len(self.positions[src]), q.shape[1]
        kj, vj = attn.expand_kv(block[:, :heads, :n], hq), attn.expand_kv(block[:, heads:, :n], hq)
        blk, blk_lse = block_attention(q, kj, vj, self.masks[src])
        return merge(out, lse, blk, blk_lse)

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, all_positions: bool = False) -> Output:
        t = inputs.shape[1]
        if not self.positions or sum(len(p) for p in self.positions) != t:
            self.setup(t)
        m, mine = self.model, self.positions[self.comm.rank]
        if self.cfg.decoder:
            h = m.encode(m.embed_tokens(inputs[:, mine], mine))
            if all_positions:
                return Output(m.logits(h), mine)
            if len(mine) and int(mine[-1]) == t - 1:
                return Output(m.logits(h[:, -1:]), torch.tensor([t - 1]))
            return Output(None)
        b = inputs.shape[0]
        h = m.encode(torch.cat([m.embed_cls(b), m.embed_tokens(inputs[:, mine], mine)], 1))
        return Output(m.logits(h[:, 0]))
