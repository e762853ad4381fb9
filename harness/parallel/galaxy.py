"""``galaxy``: Galaxy's hybrid model parallelism for edge devices (Ye et al., INFOCOM 2024), with its tile-based
overlap of communication and compute.

Tensor parallelism for the attention and the MLP (each rank keeps its heads and its MLP columns, as ``tp``),
sequence parallelism for the connective parts (LayerNorm, residual, bias of the row-parallel projections): between
the tensor-parallel blocks a rank holds only its share of the tokens. Each tensor-parallel block is entered with an
all-gather of the LayerNormed tokens and left with a reduce-scatter of the partial sums — the same bytes as ``tp``'s
all-reduce, split in two — and both are overlapped with compute, tile by tile: the sequence is cut into
``tiles`` tiles along the tokens, each rank owning an even sub-slice of every tile.

- Attention: the all-gather of tile t + 1 runs while q|k|v of tile t are projected; once all k|v are there, the
  attention and output projection of query tile t run while the reduce-scatter of tile t - 1 travels.
- MLP: the all-gather of tile t + 1 and the reduce-scatter of tile t - 1 run while tile t goes through fc, GELU and
  proj.

The transfer of a tile hides under the compute of the next as long as that compute takes longer (fast links, large
tiles); the first all-gather and the last reduce-scatter of each block are the pipeline's fill and drain, never
hidden. More tiles shorten fill and drain but add a message per tile.

ViT: the class token is sequence position 0, in rank 0's sub-slice of the first tile: rank 0 gives the class
prediction. GPT2: the rank holding the last position gives the next-token logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.comm.wire import row_ranges
from harness.errors import ConfigError
from harness.options import opt
from harness.parallel.base import Method, MethodOptions, Output, register, sequence_length, traffic_of
from harness.parallel.tp import _rows, head_shard


def _biased(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias


@dataclass
class GalaxyOptions(MethodOptions):
    name: str = opt("galaxy", "the method")
    tiles: int = opt(4, "tiles per tensor-parallel block along the tokens: the transfer of one overlaps the compute "
                     "of the next (at most the sequence length / devices)", above=0)


def galaxy_tiles(seq: int, world: int, tiles: int) -> list[list[tuple[int, int]]]:
    """Per tile, each rank's [start, end) sequence positions: ``tiles`` even tiles (at most seq // world, so every
    rank owns a row of every tile), each split evenly over the ranks."""
    count = max(1, min(tiles, seq // world))
    return [[(a + s, a + e) for s, e in row_ranges(b - a, world)] for a, b in row_ranges(seq, count)]


@register
class Galaxy(Method):
    name = "galaxy"
    title = "Galaxy"
    Options = GalaxyOptions
    overlaps = True

    @classmethod
    def check(cls, spec) -> None:
        if spec.devices > spec.model.heads:
            raise ConfigError(f"galaxy gives every device at least one of the {spec.model.heads} heads, but devices="
                              f"{spec.devices}: use at most {spec.model.heads} devices")
        if spec.devices > sequence_length(spec):
            raise ConfigError(f"galaxy gives every device at least one token, but devices={spec.devices} > "
                              f"{sequence_length(spec)} positions: use fewer devices")

    @classmethod
    def traffic(cls, spec, rank: int) -> list[tuple[str, str, int]]:
        row = spec.batch * spec.model.hidden * 4
        out = []
        tiles = galaxy_tiles(sequence_length(spec), spec.devices, spec.method.tiles)
        sizes = [max(e - s for s, e in subs) * row for subs in tiles]
        nt = len(tiles)
        for i in range(spec.model.layers):
            gathers = [("all_gather", f"block{i}.attn.tile{t}", sizes[t]) for t in range(nt)]
            scatters = [("reduce_scatter", f"block{i}.attn.tile{t}", spec.devices * sizes[t]) for t in range(nt)]
            out += gathers + scatters
            # the MLP's, in the order they are started: gather 0, then per tile the next gather and its scatter
            out.append(("all_gather", f"block{i}.mlp.tile0", sizes[0]))
            for t in range(nt):
                if t + 1 < nt:
                    out.append(("all_gather", f"block{i}.mlp.tile{t + 1}", sizes[t + 1]))
                out.append(("reduce_scatter", f"block{i}.mlp.tile{t}", spec.devices * sizes[t]))
        return traffic_of(spec, out)

    def __init__(self, model, comm, opts=None):
        super().__init__(model, comm, opts)
        cfg = self.cfg
        n, r = comm.world, comm.rank
        if cfg.heads < n:
            raise ValueError(f"galaxy needs a head per device: {cfg.heads} heads over {n} devices")
        self.tiles = int(self.opts.get("tiles", 4))
        self.shard = sh = head_shard(cfg, n, r)
        self.weights = []
        for blk in model.blocks:  # this rank's heads and MLP columns; the row-parallel halves keep their bias apart
            self.weights.append({"qkv": _rows(blk.attn.qkv, sh.qkv_rows), "proj_w": blk.attn.proj.weight[:, sh.mine],
                                 "proj_b": blk.attn.proj.bias, "fc": _rows(blk.mlp.fc, blk.mlp.fc_rows(sh.cols)),
                                 "out_w": blk.mlp.proj.weight[:, sh.cols], "out_b": blk.mlp.proj.bias})
        self.layout: list[list[tuple[int, int]]] = []
        self.seq = 0

    # -- layout ---------------------------------------------------------------------------------------------------
    def setup(self, seq: int) -> None:
        self.seq = seq
        self.layout = galaxy_tiles(seq, self.comm.world, self.tiles)
        r = self.comm.rank
        self.mine = torch.cat([torch.arange(*subs[r]) for subs in self.layout])  # this rank's positions
        self.pieces = [subs[r][1] - subs[r][0] for subs in self.layout]  # its rows in each tile

    def _gather(self, h_tiles: list[torch.Tensor], t: int, tag: str):
        """Start the all-gather of tile ``t``: this rank's rows, padded to the tile's largest sub-slice."""
        subs = self.layout[t]
        short = max(e - s for s, e in subs) - h_tiles[t].shape[1]
        return self.comm.start_all_gather(F.pad(h_tiles[t], (0, 0, 0, short)) if short else h_tiles[t],
                                          tag=f"{tag}.tile{t}")

    def _joined(self, shards: list[torch.Tensor], t: int) -> torch.Tensor:
        """The tile's rows in sequence order from the gathered (padded) shards."""
        return torch.cat([sh[:, : e - s] for sh, (s, e) in zip(shards, self.layout[t])], 1)

    def _scatter(self, y: torch.Tensor, t: int, tag: str):
        """Start the reduce-scatter of tile ``t``'s partial sums ``y`` (B, tile rows, D): each rank's sub-slice to
        its owner, padded to the largest."""
        subs = self.layout[t]
        a, n_max = subs[0][0], max(e - s for s, e in subs)
        parts = []
        for s, e in subs:
            part = y[:, s - a: e - a]
            parts.append(F.pad(part, (0, 0, 0, n_max - (e - s))) if e - s < n_max else part)
        return self.comm.start_reduce_scatter(parts, tag=f"{tag}.tile{t}")

    # -- one block ------------------------------------------------------------------------------------------------
    def _attention(self, blk, w: dict, x: torch.Tensor, index: int) -> torch.Tensor:
        tag, nt = f"block{index}.attn", len(self.layout)
        h = list(blk.ln1(x).split(self.pieces, 1))
        gathers = [self._gather(h, 0, tag)] + [None] * (nt - 1)
        qkv = []
        for t in range(nt):  # the all-gather of tile t + 1 while tile t is projected
            if t + 1 < nt:
                gathers[t + 1] = self._gather(h, t + 1, tag)
            qkv.append(w["qkv"](self._joined(gathers[t].wait(), t)))
        sh, attn, scatters = self.shard, blk.attn, []
        q, k, v = torch.cat(qkv, 1).split([sh.q_size, sh.kv_size, sh.kv_size], dim=-1)  # the tiles in sequence order
        every = torch.arange(self.seq)
        q, k = attn.rotate(q, every), attn.rotate(k, every)
        for t, subs in enumerate(self.layout):  # query tile t's attention and projection while tile t-1 scatters
            a, b = subs[0][0], subs[-1][1]
            if self.cfg.causal:
                mask = torch.arange(b)[None, :] <= torch.arange(a, b)[:, None]
                o = attn.attend(q[:, a:b], k[:, :b], v[:, :b], mask=mask, kv_index=sh.kv_index)
            else:
                o = attn.attend(q[:, a:b], k, v, kv_index=sh.kv_index)
            scatters.append(self._scatter(F.linear(o, w["proj_w"]), t, tag))
        return _biased(torch.cat([self._own(p.wait(), t) for t, p in enumerate(scatters)], 1), w["proj_b"])

    def _mlp(self, blk, w: dict, x: torch.Tensor, index: int) -> torch.Tensor:
        tag, nt = f"block{index}.mlp", len(self.layout)
        h = list(blk.ln2(x).split(self.pieces, 1))
        gathers = [self._gather(h, 0, tag)] + [None] * (nt - 1)
        scatters = []
        for t in range(nt):  # tile t's MLP while tile t + 1 gathers and tile t - 1 scatters
            if t + 1 < nt:
                gathers[t + 1] = self._gather(h, t + 1, tag)
            full = self._joined(gathers[t].wait(), t)
            y = F.linear(blk.mlp.activate(w["fc"](full)), w["out_w"])
            scatters.append(self._scatter(y, t, tag))
        return _biased(torch.cat([self._own(p.wait(), t) for t, p in enumerate(scatters)], 1), w["out_b"])

    def _own(self, summed: torch.Tensor, t: int) -> torch.Tensor:
        """This rank's rows of a reduce-scattered tile (without the padding)."""
        s, e = self.layout[t][self.comm.rank]
        return summed[:, : e - s]

    # -- one inference --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, all_positions: bool = False) -> Output:
        m, vit = self.model, self.cfg.kind == "vit"
        seq = inputs.shape[1] + (1 if vit else 0)
        if seq != self.seq:
            self.setup(seq)
        pos = self.mine
        if vit:  # sequence position 0 is the class token, position c + 1 content token c
            content = pos[pos > 0] - 1
            parts = [m.embed_cls(inputs.shape[0])] if len(pos) and int(pos[0]) == 0 else []
            x = torch.cat(parts + [m.embed_tokens(inputs[:, content], content)], 1)
        else:
            x = m.embed_tokens(inputs[:, pos], pos)
        for i, (blk, w) in enumerate(zip(m.blocks, self.weights)):
            x = x + self._attention(blk, w, x, i)
            x = x + self._mlp(blk, w, x, i)
        h = m.ln_f(x)
        if vit:
            return Output(m.logits(h[:, 0]) if int(pos[0]) == 0 else None)
        if all_positions:
            return Output(m.logits(h), pos)
        if int(pos[-1]) == seq - 1:
            return Output(m.logits(h[:, -1:]), torch.tensor([seq - 1]))
        return Output(None)
