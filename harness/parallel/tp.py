"""``tp``: Megatron-LM tensor parallelism.

Per block: column-parallel q|k|v (each rank keeps its heads; heads that do not divide evenly go one more to the
first ranks, so 12 heads run on 8 devices; with grouped-query attention a rank keeps the key/value heads its query
heads read) and MLP-in (SwiGLU: the gate's and the up projection's columns); row-parallel attention-out and MLP-out,
each followed by an all-reduce of the (B, T, hidden) partial sums — two all-reduces per block. Embeddings, final
LayerNorm and head are replicated (every rank computes them and ends with the same output).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.comm.collectives import Comm
from harness.comm.wire import WIRE_DTYPES, row_bytes
from harness.errors import ConfigError
from harness.options import opt
from harness.parallel.base import (
    Method,
    MethodOptions,
    Output,
    partition,
    register,
    sequence_length,
    single_device_output,
    traffic_of,
)


def _rows(linear: nn.Linear, parts: list[slice]) -> nn.Linear:
    """A Linear keeping the output features (rows of the weight) listed in ``parts``."""
    w = torch.cat([linear.weight[s] for s in parts])
    new = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None)
    new.weight.data.copy_(w)
    if linear.bias is not None:
        new.bias.data.copy_(torch.cat([linear.bias[s] for s in parts]))
    return new


@dataclass
class Shard:
    """This rank's share of a block under tensor parallelism (see ``head_shard``)."""

    mine: slice  # its attention channels (query heads) of the output projection's input
    cols: slice  # its MLP inner columns
    qkv_rows: list[slice]  # its rows of the fused q|k|v: its query heads, the key/value heads they read
    q_size: int
    kv_size: int
    kv_index: torch.Tensor  # for each of its query heads, which of its key/value heads it reads


def head_shard(cfg, world: int, rank: int) -> Shard:
    """This rank's share of a block under tensor parallelism, heads and MLP columns as even as possible (12 heads
    over 8 devices: 2,2,2,2,1,1,1,1). With grouped-query attention a rank keeps the key/value heads its query heads
    read — a key/value head shared by query heads on two ranks is kept (and computed) on both, as Megatron does
    when there are more ranks than key/value heads."""
    hd, group = cfg.head_dim, cfg.heads // cfg.n_kv_heads
    h0, h1 = partition(cfg.heads, world)[rank]
    k0, k1 = h0 // group, (h1 - 1) // group + 1
    f0, f1 = partition(cfg.inner, world)[rank]
    q_size, kv_size = cfg.heads * hd, cfg.n_kv_heads * hd
    rows = [slice(h0 * hd, h1 * hd)] + [slice(base + k0 * hd, base + k1 * hd) for base in (q_size, q_size + kv_size)]
    return Shard(slice(h0 * hd, h1 * hd), slice(f0, f1), rows, (h1 - h0) * hd, (k1 - k0) * hd,
                 torch.arange(h0, h1) // group - k0)


@dataclass
class TensorParallelOptions(MethodOptions):
    name: str = opt("tp", "the method")
    exchange_dtype: str = opt("fp32", "what the all-reduces send: fp32 (exact), fp16, or int8 with a per-token fp32 "
                              "scale (reduced in fp32 between the two phases)", choices=WIRE_DTYPES)


class RowParallelLinear(nn.Module):
    """Keeps the input features ``cols`` of ``linear``; all-reduces the partial output, then adds the bias once."""

    def __init__(self, linear: nn.Linear, cols: slice, comm: Comm, tag: str, wire: str = "fp32"):
        super().__init__()
        self.wire = wire
        self.weight = nn.Parameter(linear.weight.data[:, cols].clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        self.comm = comm
        self.tag = tag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        self.comm.all_reduce(y, tag=self.tag, wire=self.wire)
        return y if self.bias is None else y + self.bias


@register
class TensorParallel(Method):
    name = "tp"
    title = "TP"
    Options = TensorParallelOptions

    @classmethod
    def check(cls, spec) -> None:
        if spec.devices > spec.model.heads:
            raise ConfigError(f"tp gives every device at least one of the {spec.model.heads} heads, but devices="
                              f"{spec.devices}: use at most {spec.model.heads} devices")

    @classmethod
    def paper_bits(cls, knobs, devices, tokens, layers, hidden) -> float:
        return 2 * layers * tokens / devices * hidden * 32  # "2 x SP": two exchanges of the device's share

    @classmethod
    def traffic(cls, spec, rank: int) -> list[tuple[str, str, int]]:
        wire = getattr(spec.method, "exchange_dtype", "fp32")
        size = spec.batch * sequence_length(spec) * row_bytes(spec.model.hidden, wire)  # the (B, S, hidden) partials
        return traffic_of(spec, [("all_reduce", f"block{i}.{part}", size)
                                 for i in range(spec.model.layers) for part in ("attn", "mlp")])

    def __init__(self, model, comm, opts=None):
        super().__init__(model, comm, opts)
        cfg = self.cfg
        n, r = comm.world, comm.rank
        if cfg.heads < n:
            raise ValueError(f"tp needs a head per device: {cfg.heads} heads over {n} devices")
        sh = head_shard(cfg, n, r)
        wire = str(self.opts.get("exchange_dtype", "fp32"))
        for i, blk in enumerate(model.blocks):
            a = blk.attn
            a.qkv = _rows(a.qkv, sh.qkv_rows)
            a.q_size, a.kv_size, a.kv_index = sh.q_size, sh.kv_size, sh.kv_index
            a.proj = RowParallelLinear(a.proj, sh.mine, comm, f"block{i}.attn", wire)
            blk.mlp.fc = _rows(blk.mlp.fc, blk.mlp.fc_rows(sh.cols))
            blk.mlp.proj = RowParallelLinear(blk.mlp.proj, sh.cols, comm, f"block{i}.mlp", wire)

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, all_positions: bool = False) -> Output:
        return single_device_output(self.model, inputs, all_positions)
