"""``bp_ag``: DeTransformer block parallelism with all-gathered retained layers (BP+AllGather, ASTRA's strongest
baseline; the architecture is ``harness/models/detransformer.py``).

Device k holds the k-th channel shard (D/N channels of every token) and sub-block k of every decoupled layer, and
runs those with no communication. At a retained layer the devices all-gather their shards, every device runs the
whole original layer on all tokens (its weights replicated), and keeps its own channel shard of the result. After
the last layer every device holds the full output and computes the head. One all-gather of a T x D/N shard per
retained layer: ``retained`` (Nb) exchanges per inference, whatever the depth.

The BP model is a different model from the original (the paper trains it from scratch): outputs are checked
against the same BP model run on one device (``verify``), and speedups are measured against ``single`` (the
original model), as in the paper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from harness.errors import ConfigError
from harness.models.detransformer import VARIANTS, DecoupledModel, check_shape
from harness.options import opt
from harness.parallel.base import Method, MethodOptions, Output, register, sequence_length, traffic_of


@dataclass
class BlockParallelOptions(MethodOptions):
    name: str = opt("bp_ag", "the method")
    retained: int = opt(1, "Nb: original layers kept, the last of each of Nb equal groups (must divide the "
                        "layers); the others are decoupled into one sub-block per device", lo=1)
    sub_block: str = opt("a", "decoupled sub-block shape: a = all heads, D/N -> D -> D/N (the authors' current "
                         "code); b = heads/N heads of D/N and a wider MLP (their earlier design)", choices=VARIANTS)


@register
class BlockParallelAllGather(Method):
    name = "bp_ag"
    title = "BP+AG"
    exchanges_per_retained = 1  # shard-sends per retained layer in the paper's accounting
    Options = BlockParallelOptions
    uniform_blocks = False  # decoupled layers between retained ones

    # -- the controller's side ------------------------------------------------------------------------------------
    @classmethod
    def check(cls, spec) -> None:
        why = check_shape(spec.model, spec.devices, spec.method.retained, spec.method.sub_block)
        if why:
            raise ConfigError(why)

    @classmethod
    def columns(cls, spec) -> dict:
        return {"retained": spec.method.retained}

    @classmethod
    def paper_bits(cls, knobs, devices, tokens, layers, hidden) -> float:
        return cls.exchanges_per_retained * int(knobs["retained"]) * tokens / devices * hidden * 32

    @classmethod
    def retained_depths(cls, spec) -> list[int]:
        group = spec.model.layers // spec.method.retained
        return [i for i in range(spec.model.layers) if (i + 1) % group == 0]

    @classmethod
    def traffic(cls, spec, rank: int) -> list[tuple[str, str, int]]:
        shard = spec.batch * sequence_length(spec) * (spec.model.hidden // spec.devices) * 4
        return traffic_of(spec, [("all_gather", f"block{i}", shard) for i in cls.retained_depths(spec)])

    @classmethod
    def reference_model(cls, model, spec):
        o = spec.method
        return DecoupledModel(model, spec.devices, o.retained, o.sub_block, seed=spec.seed)

    @classmethod
    def plan(cls, model, comm, spec):
        return cls(model, comm, {**asdict(spec.method), "seed": spec.seed})

    # -- the rank's side ------------------------------------------------------------------------------------------
    def __init__(self, model, comm, opts=None):
        super().__init__(model, comm, opts)
        o = self.opts
        self.bp = DecoupledModel(model, comm.world, int(o.get("retained", 1)), str(o.get("sub_block", "a")),
                                 seed=int(o.get("seed", 0)), build_parts=[comm.rank])
        for i, kind in enumerate(self.bp.kinds):  # this device never runs the original layers that were decoupled
            if kind == "sub":
                model.blocks[i] = nn.Identity()

    def retained_layer(self, block: nn.Module, h: torch.Tensor, index: int, last: bool) -> torch.Tensor:
        """All-gather the shards, run the original layer on everything, keep this device's channels (or, after
        the last layer, the full output)."""
        x = torch.cat(self.comm.all_gather(h, tag=f"block{index}"), -1)
        y = block(x)
        return y if last else self.bp.shard(y, self.comm.rank)

    def output(self, h: torch.Tensor, all_positions: bool) -> Output:
        bp = self.bp
        if self.cfg.decoder:
            t = h.shape[1]
            return Output(bp.head(h, all_positions), torch.arange(t) if all_positions else torch.tensor([t - 1]))
        return Output(bp.head(h))

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, all_positions: bool = False) -> Output:
        bp, k = self.bp, self.comm.rank
        h = bp.embed_shard(inputs, k)
        last = len(bp.kinds) - 1
        for i, (kind, layer) in enumerate(zip(bp.kinds, bp.layers)):
            h = layer[str(k)](h) if kind == "sub" else self.retained_layer(layer, h, i, i == last)
        return self.output(h, all_positions)
