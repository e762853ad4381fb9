"""``bp_sp``: DeTransformer block parallelism with sequence-parallel retained layers (BP+SequenceParallel).

The same model and decoupled layers as ``bp_ag``; only the retained layers run differently (the TPDS paper's
second execution plan; its mechanics are inferred, docs/methods.md says what is inferred): the devices
all-gather their channel shards, each computes K/V for every token but queries, attention output and MLP only for
its own contiguous share of the tokens, and an all-to-all turns those full-width rows back into channel shards of
every token. Two exchanges per retained layer (2·Nb per inference) for about 1/N of a layer's compute, and
outputs identical to ``bp_ag`` for the same weights.

After the last layer the output rows are already where the head needs them (the device holding the class token,
or the last token for GPT2), so the final all-to-all only re-shards for layers that do not exist. The paper
charges it (2·Nb exchanges fit its numbers), so ``final_reshard=true`` (default) performs it; ``false`` skips it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.options import opt
from harness.parallel.base import Output, partition, register, sequence_length, traffic_of
from harness.parallel.bp_ag import BlockParallelAllGather, BlockParallelOptions


@dataclass
class BlockParallelSPOptions(BlockParallelOptions):
    name: str = opt("bp_sp", "the method")
    final_reshard: bool = opt(True, "also re-shard after the last retained layer (the paper's 2·Nb exchanges); "
                              "false skips that useless exchange")


@register
class BlockParallelSP(BlockParallelAllGather):
    name = "bp_sp"
    title = "BP+SP"
    exchanges_per_retained = 2
    Options = BlockParallelSPOptions

    @classmethod
    def traffic(cls, spec, rank: int) -> list[tuple[str, str, int]]:
        """bp_ag's all-gathers, each followed by the all-to-all of this rank's rows at full width."""
        s, e = partition(sequence_length(spec), spec.devices)[rank]
        rows = spec.batch * (e - s) * spec.model.hidden * 4
        gathers = super().traffic(spec, rank)
        out = []
        for n, (op, tag, nbytes) in enumerate(gathers):
            out.append((op, tag, nbytes))
            if n < len(gathers) - 1 or spec.method.final_reshard:
                out.append(("all_to_all", f"{tag}.reshard", rows))
        return traffic_of(spec, out)

    def __init__(self, model, comm, opts=None):
        super().__init__(model, comm, opts)
        self.final_reshard = bool(self.opts.get("final_reshard", True))
        self.rows: list[tuple[int, int]] = []
        self.out_rows: torch.Tensor | None = None

    def retained_layer(self, block: nn.Module, h: torch.Tensor, index: int, last: bool) -> torch.Tensor:
        comm, cfg = self.comm, self.cfg
        x = torch.cat(comm.all_gather(h, tag=f"block{index}"), -1)  # (B, S, D)
        b, seq, d = x.shape
        if not self.rows or self.rows[-1][1] != seq:
            self.rows = partition(seq, comm.world)
        s, e = self.rows[comm.rank]
        attn = block.attn
        a = block.ln1(x[:, :e] if cfg.causal else x)  # keys/values: every token (causal: up to my last row)
        w, bias, qs = attn.qkv.weight, attn.qkv.bias, attn.q_size
        q = attn.rotate(F.linear(a[:, s:e], w[:qs], None if bias is None else bias[:qs]), torch.arange(s, e))
        k, v = F.linear(a, *attn.kv_weights()).chunk(2, dim=-1)
        k = attn.rotate(k, torch.arange(a.shape[1]))
        mask = torch.arange(e)[None, :] <= torch.arange(s, e)[:, None] if cfg.causal else None
        y = x[:, s:e] + attn.proj(attn.attend(q, k, v, mask=mask))
        y = y + block.mlp(block.ln2(y))  # (B, rows, D): this device's rows, full width
        if last:
            self.out_rows = y
            if not self.final_reshard:
                return h
        parts = [self.bp.shard(y, j) for j in range(comm.world)]
        shapes = [(b, e2 - s2, self.bp.width) for s2, e2 in self.rows]
        return torch.cat(comm.all_to_all(parts, shapes, tag=f"block{index}.reshard"), 1)

    def output(self, h: torch.Tensor, all_positions: bool) -> Output:
        y, (s, e) = self.out_rows, self.rows[self.comm.rank]
        if self.cfg.decoder:
            seq = self.rows[-1][1]
            if all_positions:
                return Output(self.bp.head(y, True), torch.arange(s, e))
            if e == seq:
                return Output(self.bp.head(y, False), torch.tensor([seq - 1]))
            return Output(None)
        return Output(self.bp.head(y) if s == 0 else None)
