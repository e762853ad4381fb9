"""``tp``: Megatron-LM tensor parallelism.

Per block: column-parallel q|k|v (each rank keeps its heads; heads that do not divide evenly go one more to the
first ranks, so 12 heads run on 8 devices) and MLP-in; row-parallel attention-out and MLP-out,
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
    b = torch.cat([linear.bias[s] for s in parts])
    new = nn.Linear(w.shape[1], w.shape[0])
    new.weight.data.copy_(w)
    new.bias.data.copy_(b)
    return new


def head_shard(cfg, world: int, rank: int) -> tuple[slice, slice, list[slice]]:
    """This rank's share of a block under tensor parallelism, heads and MLP columns as even as possible (12 heads
    over 8 devices: 2,2,2,2,1,1,1,1): (its attention channels, its MLP columns, its rows of the fused q|k|v)."""
    h0, h1 = partition(cfg.heads, world)[rank]
    mine = slice(h0 * cfg.head_dim, h1 * cfg.head_dim)
    f0, f1 = partition(cfg.mlp_ratio * cfg.hidden, world)[rank]
    d = cfg.hidden
    return mine, slice(f0, f1), [slice(k * d + mine.start, k * d + mine.stop) for k in range(3)]


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
        self.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        self.comm = comm
        self.tag = tag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        self.comm.all_reduce(y, tag=self.tag, wire=self.wire)
        return y + self.bias


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
        mine, cols, qkv_rows = head_shard(cfg, n, r)
        for i, blk in enumerate(model.blocks):
            blk.attn.qkv = _rows(blk.attn.qkv, qkv_rows)
            wire = str(self.opts.get("exchange_dtype", "fp32"))
            blk.attn.proj = RowParallelLinear(blk.attn.proj, mine, comm, f"block{i}.attn", wire)
            blk.mlp.fc = _rows(blk.mlp.fc, [cols])
            blk.mlp.proj = RowParallelLinear(blk.mlp.proj, cols, comm, f"block{i}.mlp", wire)

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, all_positions: bool = False) -> Output:
        return single_device_output(self.model, inputs, all_positions)
