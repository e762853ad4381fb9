"""``astra``: sequence parallelism where only bit-packed VQ indices cross the network (Mixed-Precision Attention).

Where VQ sits (the paper leaves it open): we quantize the **attention input** — the block input after
``ln1`` — i.e. exactly the tensor plain ``sp`` would all-gather. Remote K̂/V̂ are then linear projections of
codewords, so per block we can precompute a table of projected codewords ("kv table"):

    K̂|V̂ = W_kv x̂ + b = Σ_g W_kv[:, g] c_g[i_g] + b   →   table[g, i] = W_kv[:, g] c_g[i]

which is exact (up to float rounding) and replaces the remote K/V projections by G row lookups per token. The table
costs G·K·2·hidden floats per block, so ``kv_table=auto`` uses it only while all blocks' tables fit in
``kv_table_max_mb``; otherwise remote K̂/V̂ are projected from the decoded embeddings.

Per block each rank: encodes its local tokens (nearest codeword per group), bit-packs the indices (G·log2K bits per
token), all-gathers the packed bytes (shards padded to the largest rank's token count), unpacks the indices it
needs and looks up K̂/V̂. Local queries attend to local K/V in full precision and to remote K̂/V̂ (Eq. 1).

ViT: Distributed Class Tokens (``dct=true``, default): the class token is replicated on every rank, each replica
attends to its local tokens in full precision and to remote tokens through the codebook, and the final
(LayerNormed) replicas are mean-pooled by an all-reduce of one hidden vector before the head. With ``dct=false`` the
class token is an ordinary token of rank 0 (sent quantized like the others) and only rank 0 predicts.

``vq=lossless`` sends the full-precision attention input instead of indices (a lossless stand-in for VQ): the
result must equal ``sp``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from harness.options import opt
from harness.parallel import vq
from harness.parallel.base import MethodOptions, register, traffic_of
from harness.parallel.sp import SequenceParallel
from harness.parallel.vq import INDEX_LOSS_FILLS, KMEANS_INITS  # by name: AstraOptions has a field called vq


@dataclass
class AstraOptions(MethodOptions):
    name: str = opt("astra", "the method")
    groups: int = opt(1, "G: sub-vectors per token, each with its own codebook (G * log2(K) bits per token)", lo=1)
    codebook_size: int = opt(1024, "K: a power of two, 2..65536", lo=2, hi=65536)
    dct: bool = opt(True, "ViT: Distributed Class Tokens (replicated CLS, mean-pooled before the head)")
    vq: str = opt("kmeans", "kmeans: codebooks fitted on the model's activations (cached); lossless: send fp32 "
                  "(== sp); checkpoint: codebooks from method.checkpoint", choices=("kmeans", "lossless", "checkpoint"))
    checkpoint: str | None = opt(None, "an astra-train checkpoint dir or a codebooks .safetensors file")
    kmeans_iters: int = opt(20, "k-means iterations when fitting codebooks", lo=1)
    kmeans_init: str = opt("k-means++", "k-means seeding: k-means++ (better codebooks) or random (about 10x faster "
                           "fit; latency does not depend on the codebooks' values)", choices=KMEANS_INITS)
    index_loss: float = opt(0.0, "fraction of remote tokens whose indices are lost in transit and never "
                            "retransmitted (paper Table 11), drawn per block, sender and receiver from seed", lo=0,
                            hi=1)
    index_loss_fill: str = opt("mask", "a lost token: mask (its key is left out of attention) or zero (attended as "
                               "a zero vector: K and V are the projections' biases)", choices=INDEX_LOSS_FILLS)
    kv_table: Any = opt("auto", "precomputed K|V projections of codewords: auto (if they fit kv_table_max_mb), "
                        "true, false", kind="auto_bool")
    kv_table_max_mb: float = opt(512.0, "the kv tables' memory limit for kv_table=auto", lo=0)


def vq_mode(o: AstraOptions) -> str:
    """``method.vq``; a ``method.checkpoint`` given with the default k-means mode means the checkpoint."""
    return "checkpoint" if (o.vq == "kmeans" and o.checkpoint) else o.vq


@register
class Astra(SequenceParallel):
    name = "astra"
    title = "ASTRA"
    is_proposed = True
    Options = AstraOptions

    # -- the controller's side ------------------------------------------------------------------------------------
    @classmethod
    def check(cls, spec) -> None:
        o = spec.method
        try:
            vq.check_groups(spec.model.hidden, o.groups)
            vq.bits_per_index(o.codebook_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        mode = vq_mode(o)
        if o.index_loss >= 1:
            raise ConfigError(f"method.index_loss={o.index_loss:g} would lose every index: use a fraction in [0, 1)")
        if o.index_loss and mode == "lossless":
            raise ConfigError("method.index_loss needs indices to lose: remove it, or use method.vq=kmeans/checkpoint")
        if mode == "checkpoint" and not o.checkpoint:
            raise ConfigError("method.vq=checkpoint needs method.checkpoint=<dir or codebooks .safetensors file>")
        if o.checkpoint and not Path(o.checkpoint).exists():
            raise ConfigError(f"method.checkpoint={o.checkpoint} does not exist: pass an astra-train run directory "
                              "or a codebooks .safetensors file")
        if o.checkpoint and mode == "lossless":
            raise ConfigError("method.vq=lossless sends full precision and uses no codebooks: drop method.checkpoint "
                              "or use method.vq=checkpoint")

    @classmethod
    def identity(cls, spec) -> dict:
        from dataclasses import asdict

        ident = asdict(spec.method)
        ident["vq"] = vq_mode(spec.method)
        if ident["kmeans_init"] == "k-means++" or ident["vq"] != "kmeans":
            del ident["kmeans_init"]  # the default stays out: points stored before the option keep their keys
        if not ident["index_loss"]:  # likewise for no loss
            del ident["index_loss"], ident["index_loss_fill"]
        if ident["checkpoint"]:
            ident["checkpoint"] = str(Path(ident["checkpoint"]).resolve())
        return ident

    @classmethod
    def columns(cls, spec) -> dict:
        mode = vq_mode(spec.method)
        return {**super().columns(spec), "groups": spec.method.groups, "codebook_size": None if mode == "lossless" else spec.method.codebook_size,
                "vq": mode}

    @classmethod
    def prepare(cls, spec, log):
        """The codebooks the ranks load (k-means ones computed and cached on first use, or a checkpoint's), and a
        checkpoint's fine-tuned weights; a checkpoint that does not fit the run is refused here."""
        o, mc, mode = spec.method, spec.model, vq_mode(spec.method)
        if mode == "lossless":
            return spec
        want = (mc.layers, o.groups, o.codebook_size, mc.hidden // o.groups)
        if mode == "checkpoint":
            from harness.parallel.codebooks import load_codebooks

            path = Path(o.checkpoint).resolve()
            model_state = cls._checkpoint_weights(spec, path, log)
            try:
                books = load_codebooks(path)
            except (OSError, ValueError) as exc:
                raise ConfigError(str(exc)) from None
            if tuple(books.shape) != want:
                raise ConfigError(f"codebooks in {path} have shape {tuple(books.shape)}, this run needs {want} "
                                  "(layers, groups, codebook_size, hidden/groups): set method.groups/codebook_size "
                                  "to match")
            return spec.replace(codebooks=str(path), model_state=model_state)
        from harness.parallel.codebooks import cached_kmeans_codebooks

        t0 = time.perf_counter()
        path = cached_kmeans_codebooks(mc, spec.tokens, o.groups, o.codebook_size, spec.seed, o.kmeans_iters,
                                       os.path.abspath(spec.cache_dir), log, init=o.kmeans_init)
        if time.perf_counter() - t0 > 1:
            log(f"codebooks: k-means G={o.groups} K={o.codebook_size} took {time.perf_counter() - t0:.0f} s "
                f"(cached in {spec.cache_dir})")
        return spec.replace(codebooks=str(path))

    @classmethod
    def prepare_shapes(cls, spec, workdir: Path):
        """Codebooks of the run's shape (random values: the work does not depend on them) instead of fitting them."""
        o, mc = spec.method, spec.model
        if vq_mode(o) != "kmeans":
            return cls.prepare(spec, lambda msg: None)
        from safetensors.torch import save_file

        g = torch.Generator().manual_seed(spec.seed)
        books = torch.randn(mc.layers, o.groups, o.codebook_size, mc.hidden // o.groups, generator=g)
        path = Path(workdir) / f"shapes-G{o.groups}-K{o.codebook_size}-{mc.layers}x{mc.hidden}.safetensors"
        save_file({"codebooks": books}, str(path))
        return spec.replace(codebooks=str(path))

    @classmethod
    def _checkpoint_weights(cls, spec, path: Path, log) -> str | None:
        """For an astra-train checkpoint directory: check it fits this run, return its fine-tuned weights file."""
        if not (path.is_dir() and (path / "manifest.json").is_file()):
            return None  # a bare codebook file: random (or model.weights) weights with these codebooks
        from harness.parallel.manifest import check_checkpoint, read_manifest

        o = spec.method
        manifest = read_manifest(path)
        warnings = check_checkpoint(manifest, spec.model, o.groups, o.codebook_size, spec.tokens, str(path),
                                    f"use the model it was trained with (model={manifest['model'].get('name')})")
        if manifest.get("devices") != spec.devices:
            warnings.append(f"checkpoint {path} was fine-tuned for {manifest.get('devices')} devices, this run uses "
                            f"{spec.devices} (the paper retrains per device count)")
        if manifest.get("dct") is not None and bool(manifest["dct"]) != o.dct:
            warnings.append(f"checkpoint {path} was fine-tuned with dct={manifest['dct']}, this run uses "
                            f"method.dct={o.dct}")
        for w in warnings:
            log(f"WARNING: {w}")
        return str(path / "model.safetensors")

    @classmethod
    def paper_bits(cls, knobs, devices, tokens, layers, hidden) -> float:
        return layers * tokens / devices * int(knobs["groups"]) * vq.bits_per_index(int(knobs.get("codebook_size")
                                                                                     or 1024))

    @classmethod
    def replicates_cls(cls, spec) -> bool:
        return bool(spec.method.dct)

    @classmethod
    def traffic(cls, spec, rank: int) -> list[tuple[str, str, int]]:
        o = spec.method
        if vq_mode(o) == "lossless":
            out = super().traffic(spec, rank)
        else:
            rows = spec.batch * cls.exchanged_rows(spec)
            out = [("all_gather", f"block{i}", vq.packed_nbytes(rows, o.groups, o.codebook_size))
                   for i in range(spec.model.layers)]
        if o.dct and spec.model.kind == "vit":  # the class-token replicas' mean pooling
            out.append(("all_reduce", "cls_pool", spec.batch * spec.model.hidden * 4))
        return traffic_of(spec, out)

    @classmethod
    def plan(cls, model, comm, spec):
        from dataclasses import asdict

        opts = asdict(spec.method)
        opts["vq"] = vq_mode(spec.method)
        opts["seed"] = spec.seed  # which indices are lost (method.index_loss)
        if spec.shares:
            opts["shares"] = list(spec.shares)
        if spec.codebooks:
            from harness.parallel.codebooks import load_codebooks

            opts["codebooks"] = load_codebooks(spec.codebooks)
        return cls(model, comm, opts)

    # -- the rank's side ------------------------------------------------------------------------------------------

    def __init__(self, model, comm, opts=None):
        opts = dict(opts or {})
        self.dct = bool(opts.get("dct", True))
        self.replicate_cls = self.dct
        self.pool_cls = self.dct and model.cfg.kind == "vit"
        super().__init__(model, comm, opts)
        self.groups = int(opts.get("groups", 1))
        self.codebook_size = int(opts.get("codebook_size", 1024))
        self.lossless = opts.get("vq", "kmeans") == "lossless"
        self.index_loss = float(opts.get("index_loss", 0.0))
        self.loss_fill = str(opts.get("index_loss_fill", "mask"))
        self.loss_seed = int(opts.get("seed", 0))
        vq.check_groups(self.cfg.hidden, self.groups)
        vq.bits_per_index(self.codebook_size)
        self.tables = None
        if self.lossless:
            return
        books = opts.get("codebooks")
        if books is None:
            raise ValueError("astra needs codebooks (method.vq=kmeans computes them; or pass method.checkpoint=...)")
        want = (self.cfg.layers, self.groups, self.codebook_size, self.cfg.hidden // self.groups)
        if tuple(books.shape) != want:
            raise ValueError(
                f"codebooks have shape {tuple(books.shape)} but this run needs {want} "
                "(layers, groups, codebook_size, hidden/groups): use a codebook file made for this model, G and K"
            )
        self.codebooks = books.float().contiguous()
        self.sq_norms = self.codebooks.pow(2).sum(-1)
        if self.use_table(opts.get("kv_table", "auto"), float(opts.get("kv_table_max_mb", 512))):
            self.tables = [self.kv_table(i) for i in range(self.cfg.layers)]

    def use_table(self, mode, max_mb: float) -> bool:
        if isinstance(mode, bool):
            return mode
        if str(mode).lower() in ("true", "on", "yes"):
            return True
        if str(mode).lower() in ("false", "off", "no"):
            return False
        size = self.cfg.layers * self.groups * self.codebook_size * 2 * self.cfg.n_kv_heads * self.cfg.head_dim * 4
        return size <= max_mb * 2**20

    def kv_table(self, index: int) -> torch.Tensor:
        """(G, K, 2 x kv width): the K|V projection (without bias) of every group's codewords; rotary keys are
        rotated after the lookup, at each remote token's position (``split_kv``)."""
        w, _ = self.kv_weights[index]
        g, dg = self.groups, self.cfg.hidden // self.groups
        w_groups = w.view(w.shape[0], g, dg).permute(1, 2, 0)  # (G, dg, 2D)
        return torch.bmm(self.codebooks[index], w_groups).contiguous()

    def remote_kv(self, content: torch.Tensor, index: int):
        if self.lossless:
            return super().remote_kv(content, index)
        b, n, d = content.shape
        g, k = self.groups, self.codebook_size
        idx = vq.encode(content.reshape(-1, d), self.codebooks[index], self.sq_norms[index]).view(b, n, g)
        idx = self.pad(idx)
        n_max = idx.shape[1]
        shards = self.comm.all_gather(vq.pack_indices(idx, k), tag=f"block{index}")
        need = self.needed_ranks()
        if not need:
            return []
        got = [
            vq.unpack_indices(shards[j], b * n_max * g, k).view(b, n_max, g)[:, : self.slices[j][1] - self.slices[j][0]]
            for j in need
        ]
        idx_r = torch.cat(got, 1).reshape(-1, g)  # (b*m, G)
        w, bias = self.kv_weights[index]
        if self.tables is not None:
            table = self.tables[index]
            if g == 1:  # index_select: ~4x faster than advanced indexing for row gathers on CPU
                kv = torch.index_select(table[0], 0, idx_r[:, 0])
            else:
                kv = sum(torch.index_select(table[i], 0, idx_r[:, i]) for i in range(g))
            kv = (kv if bias is None else kv + bias).view(b, -1, w.shape[0])
        else:
            kv = F.linear(vq.decode(idx_r, self.codebooks[index]).view(b, -1, d), w, bias)
        if self.index_loss:
            lost = [vq.lost_tokens(self.loss_seed, index, j, self.comm.rank, b, x.shape[1], self.index_loss)
                    for j, x in zip(need, got)]
            if self.loss_fill == "zero":  # a zero vector's K|V projection is the bias (or zero)
                fill = bias.expand_as(kv) if bias is not None else torch.zeros_like(kv)
                kv = torch.where(torch.cat(lost, 1)[..., None], fill, kv)
            else:
                self.lost_keys = lost
        return self.split_kv(kv, need, index)
