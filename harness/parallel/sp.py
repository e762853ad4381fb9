"""``sp``: Voltage-style sequence parallelism.

Tokens are split contiguously over ranks (as evenly as possible; T need not divide by N). Every rank holds the full
weights. Per block, each rank all-gathers the full-precision attention input (the block input after ``ln1`` — the
same size as the block input, and it saves every rank re-normalising remote tokens), computes attention for its own
queries over all keys, and runs the MLP on its own tokens. The ViT class token is replicated on every rank
(computed redundantly, never sent), so every rank ends with the exact class prediction.

GPT2 (causal prefill): the mask is built on global positions, and a rank needs keys only up to its last token, so
it projects K/V for earlier ranks' tokens only. The next-token logits come from the rank holding the last token.

``exchange_dtype`` (fp32 | fp16 | int8 with per-token scales, ``harness.wire``) quantizes what crosses the network —
the quantized-exchange baseline ASTRA's reviewers asked for; a rank's own tokens stay full precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.comm.wire import WIRE_DTYPES, decode_rows, encode_rows, row_bytes
from harness.options import opt
from harness.parallel.base import Method, MethodOptions, Output, partition, register, traffic_of


def token_slices(content: int, extra: int, world: int, shares: list[int] | None) -> list[tuple[int, int]]:
    """[start, end) sequence positions per rank: the even partition of ``content`` + ``extra`` positions (``extra``:
    a partitioned ViT class token at position 0), or the given content ``shares`` with the class token added to
    rank 0's."""
    if not shares:
        return partition(content + extra, world)
    out, start = [], 0
    for r, n in enumerate(shares):
        size = n + (extra if r == 0 else 0)
        out.append((start, start + size))
        start += size
    return out


@dataclass
class SequenceParallelOptions(MethodOptions):
    name: str = opt("sp", "the method")
    exchange_dtype: str = opt("fp32", "what the all-gather sends: fp32 (exact), fp16, or int8 with a per-token fp32 "
                              "scale; local tokens stay fp32", choices=WIRE_DTYPES)


class SeqParallelAttention(nn.Module):
    """Stands in for ``Block.attn``; keeps the original module (its weights) and defers to the plan."""

    def __init__(self, inner: nn.Module, plan: "SequenceParallel", index: int):
        super().__init__()
        self.inner = inner
        self.index = index
        self._plan = [plan]  # a list, so the plan is not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._plan[0].attention(self.inner, x, self.index)


@register
class SequenceParallel(Method):
    name = "sp"
    title = "SP"
    Options = SequenceParallelOptions
    # Replicate the ViT class token on every rank (never sent). Subclasses may partition it instead.
    replicate_cls = True
    # Mean-pool the class-token replicas over ranks before the head (ASTRA's Distributed Class Tokens).
    pool_cls = False
    splits_tokens = True  # honours split= (uneven token shares)

    @classmethod
    def paper_bits(cls, knobs, devices, tokens, layers, hidden) -> float:
        return layers * tokens / devices * hidden * 32

    @classmethod
    def exchanged_rows(cls, spec) -> int:
        """Rows of every rank's all-gather shard: the largest share of the partitioned tokens (shards are padded)."""
        replicated = spec.model.kind == "vit" and cls.replicates_cls(spec)
        extra = 1 if spec.model.kind == "vit" and not replicated else 0
        return max(e - s for s, e in token_slices(spec.tokens, extra, spec.devices, spec.shares))

    @classmethod
    def columns(cls, spec) -> dict:
        """``fpar``: the full-precision attention rate Σ n_k² / T² of the content-token shares (paper App. D)."""
        sizes = [e - s for s, e in token_slices(spec.tokens, 0, spec.devices, spec.shares)]
        return {"fpar": sum(n * n for n in sizes) / spec.tokens ** 2}

    @classmethod
    def replicates_cls(cls, spec) -> bool:
        return cls.replicate_cls

    @classmethod
    def traffic(cls, spec, rank: int) -> list[tuple[str, str, int]]:
        wire = getattr(spec.method, "exchange_dtype", "fp32")
        shard = spec.batch * cls.exchanged_rows(spec) * row_bytes(spec.model.hidden, wire)
        return traffic_of(spec, [("all_gather", f"block{i}", shard) for i in range(spec.model.layers)])

    def __init__(self, model, comm, opts=None):
        super().__init__(model, comm, opts)
        vit = self.cfg.kind == "vit"
        self.prefix = 1 if (vit and self.replicate_cls) else 0
        self.causal = self.cfg.causal
        self.attns = [b.attn for b in model.blocks]
        self.kv_weights = [b.attn.kv_weights() for b in model.blocks]
        for i, blk in enumerate(model.blocks):
            blk.attn = SeqParallelAttention(blk.attn, self, i)
        self.slices: list[tuple[int, int]] = []
        self.mask = None
        # set by ``remote_kv`` when some remote keys must be left out of attention (ASTRA's lost indices): one
        # (batch, n_j) boolean tensor per rank of ``needed_ranks()``, True = lost
        self.lost_keys: list[torch.Tensor] | None = None
        self.wire = str(self.opts.get("exchange_dtype", "fp32"))
        self.shares = self.opts.get("shares")  # uneven content-token shares (split=), else None

    # -- sequence bookkeeping -----------------------------------------------------------------------------------
    def setup(self, content_tokens: int) -> None:
        """Partition for a sequence of ``content_tokens`` (plus the class token if it is partitioned)."""
        extra = 1 if (self.cfg.kind == "vit" and not self.prefix) else 0
        if self.shares and sum(self.shares) != content_tokens:
            raise ValueError(f"split shares {self.shares} do not add up to the input's {content_tokens} tokens")
        self.slices = token_slices(content_tokens, extra, self.comm.world, self.shares)
        s, e = self.slices[self.comm.rank]
        self.positions = [torch.arange(a, b) for a, b in self.slices]  # each rank's global positions (rotary)
        if self.causal:
            self.mask = torch.arange(e)[None, :] <= torch.arange(s, e)[:, None]

    @property
    def my_slice(self) -> tuple[int, int]:
        return self.slices[self.comm.rank]

    def needed_ranks(self) -> list[int]:
        """Remote ranks whose tokens this rank attends to (earlier ranks only when causal)."""
        last = self.comm.rank if self.causal else self.comm.world - 1
        return [j for j in range(last + 1) if j != self.comm.rank]

    def embed_local(self, inputs: torch.Tensor) -> torch.Tensor:
        m, (s, e) = self.model, self.my_slice
        if self.cfg.decoder:
            return m.embed_tokens(inputs[:, s:e], torch.arange(s, e))
        b = inputs.shape[0]
        if self.prefix:  # class token replicated
            return torch.cat([m.embed_cls(b), m.embed_tokens(inputs[:, s:e], torch.arange(s, e))], 1)
        # class token partitioned: it is sequence position 0, content token c sits at position c + 1
        lo, hi = max(s, 1) - 1, e - 1
        parts = [m.embed_cls(b)] if s == 0 else []
        parts.append(m.embed_tokens(inputs[:, lo:hi], torch.arange(lo, hi)))
        return torch.cat(parts, 1)

    def pad(self, t: torch.Tensor) -> torch.Tensor:
        """Pad dim 1 (tokens) to the largest rank's share so all-gather shards have equal shapes."""
        n_max = max(e - s for s, e in self.slices)
        short = n_max - t.shape[1]
        return F.pad(t, (0, 0) * (t.dim() - 2) + (0, short)) if short else t

    # -- the exchange (overridden by ASTRA) ---------------------------------------------------------------------
    def remote_kv(self, content: torch.Tensor, index: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """K/V for the tokens of ``needed_ranks()`` (in that order), from a full-precision all-gather."""
        padded = self.pad(content)
        if self.wire == "fp32":
            shards = self.comm.all_gather(padded, tag=f"block{index}")
        else:  # one encoded message per rank; remote tokens are decoded, this rank's own stay exact
            b, n, d = padded.shape
            got = self.comm.all_gather(encode_rows(padded.reshape(-1, d), self.wire), tag=f"block{index}")
            shards = [decode_rows(g, b * n, d, self.wire).view(b, n, d) for g in got]
        need = self.needed_ranks()
        if not need:
            return []
        x = torch.cat([shards[j][:, : self.slices[j][1] - self.slices[j][0]] for j in need], 1)
        w, b = self.kv_weights[index]
        return self.split_kv(F.linear(x, w, b), need, index)

    def split_kv(self, kv: torch.Tensor, need: list[int], index: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Remote ranks' k|v (B, their tokens, 2 x kv width) -> (k, v) per rank, k rotated at its tokens' global
        positions (rotary models: remote keys are formed here, from what crossed the wire, like local ones)."""
        sizes = [self.slices[j][1] - self.slices[j][0] for j in need]
        out = []
        for j, part in zip(need, kv.split(sizes, dim=1)):
            k, v = part.chunk(2, dim=-1)
            out.append((self.attns[index].rotate(k, self.positions[j]), v))
        return out

    # -- attention ----------------------------------------------------------------------------------------------
    def attention(self, attn: nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
        p = self.prefix
        q, k, v = attn.project(x, self.positions[self.comm.rank] if self.causal else torch.arange(x.shape[1]))
        self.lost_keys = None
        remote = iter(self.remote_kv(x[:, p:], index))
        ks, vs = [k[:, :p]], [v[:, :p]]
        last = self.comm.rank if self.causal else self.comm.world - 1
        for j in range(last + 1):
            kj, vj = (k[:, p:], v[:, p:]) if j == self.comm.rank else next(remote)
            ks.append(kj)
            vs.append(vj)
        mask = self.mask
        if self.lost_keys:  # keys kept: (batch, 1 head, 1 query, keys), and the causal mask where there is one
            lost = iter(self.lost_keys)
            keep = [~next(lost) if j != self.comm.rank else torch.ones(kj.shape[:2], dtype=torch.bool)
                    for j, kj in zip(range(last + 1), ks[1:])]
            mask = torch.cat([torch.ones(x.shape[0], p, dtype=torch.bool), *keep], 1)[:, None, None, :]
            if self.mask is not None:
                mask = mask & self.mask
        return attn.proj(attn.attend(q, torch.cat(ks, 1), torch.cat(vs, 1), mask=mask))

    # -- one inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, all_positions: bool = False) -> Output:
        t = inputs.shape[1]
        if not self.slices or self.slices[-1][1] != t + (1 if self.cfg.kind == "vit" and not self.prefix else 0):
            self.setup(t)
        h = self.model.encode(self.embed_local(inputs))
        s, e = self.my_slice
        if self.cfg.decoder:
            if all_positions:
                return Output(self.model.logits(h), torch.arange(s, e))
            if e == t:
                return Output(self.model.logits(h[:, -1:]), torch.tensor([t - 1]))
            return Output(None)
        if self.prefix:
            h_cls = h[:, 0]
            if self.pool_cls:
                h_cls = self.comm.all_reduce(h_cls.contiguous(), tag="cls_pool") / self.comm.world
            return Output(self.model.logits(h_cls))
        return Output(self.model.logits(h[:, 0]) if s == 0 else None)
