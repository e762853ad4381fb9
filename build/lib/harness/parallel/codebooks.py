"""Codebooks for ASTRA runs: k-means calibration on the model's own activations, a file cache, and loading.

A codebook file is a safetensors file holding one tensor ``codebooks`` of shape (layers, G, K, hidden/G) plus
string metadata (model name, groups, codebook_size). A trained checkpoint directory (``astra-train``) holds the
same file as ``codebooks.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from harness.errors import atomic_write
from harness.models import ModelConfig, Transformer, build_model, make_inputs
from harness.parallel import vq


@contextmanager
def attention_inputs_to(model: Transformer, fn: Callable[[int, torch.Tensor], None]):
    """While active, every forward pass calls ``fn(block_index, x)`` with each block's attention input (the ``ln1``
    output ASTRA quantizes) as an (n, hidden) tensor; runs under ``torch.no_grad``."""
    hooks = [blk.ln1.register_forward_hook(lambda _m, _i, out, i=i: fn(i, out.detach().reshape(-1, out.shape[-1])))
             for i, blk in enumerate(model.blocks)]
    try:
        with torch.no_grad():
            yield
    finally:
        for h in hooks:
            h.remove()


def calibration_vectors(model: Transformer, tokens: int, samples: int, seed: int) -> list[torch.Tensor]:
    """Attention inputs (``ln1`` outputs) of every block, for ``samples`` random inputs -> list of (n, hidden)."""
    acts: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    with attention_inputs_to(model, lambda i, x: acts[i].append(x)):
        for s in range(samples):
            model(make_inputs(model.cfg, tokens, 1, seed=seed + 1000 + s))
    return [torch.cat(a) for a in acts]


def calibration_samples(tokens: int, codebook_size: int, factor: int = 4) -> int:
    """Enough random inputs that every block has at least ``factor``·K calibration vectors."""
    return max(2, math.ceil(factor * codebook_size / tokens))


def kmeans_codebooks(
    model: Transformer, tokens: int, groups: int, codebook_size: int, seed: int = 0, max_iter: int = 20,
    log: Callable[[str], None] | None = None, init: str = "k-means++",
) -> torch.Tensor:
    """Per-block grouped codebooks fitted by k-means on the model's activations for random inputs (not the
    evaluation input: calibration inputs use other seeds). ``log`` hears of each block as it is done."""
    samples = calibration_samples(tokens, codebook_size)
    vecs = calibration_vectors(model, tokens, samples, seed)
    books = []
    for i, v in enumerate(vecs):
        books.append(vq.fit_codebooks(v, groups, codebook_size, seed=seed, max_iter=max_iter, init=init))
        if log:
            log(f"codebooks: k-means G={groups} K={codebook_size} on {len(v)} activations: block {i + 1}/{len(vecs)}")
    return torch.stack(books)


def save_codebooks(path: str | os.PathLike, books: torch.Tensor, meta: dict) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({"codebooks": books.contiguous()}, str(tmp),
                                             metadata={k: str(v) for k, v in meta.items()}))


def load_codebooks(path: str | os.PathLike) -> torch.Tensor:
    """Load (layers, G, K, hidden/G) codebooks from a file or a checkpoint directory holding codebooks.safetensors."""
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        p = p / "codebooks.safetensors"
    if not p.is_file():
        raise FileNotFoundError(f"codebook file {p} does not exist: pass method.checkpoint=<dir or .safetensors file>")
    data = load_file(str(p))
    if "codebooks" not in data:
        raise ValueError(f"{p} holds no 'codebooks' tensor: it is not an astra codebook file")
    return data["codebooks"]


def cached_kmeans_codebooks(
    model_cfg: ModelConfig, tokens: int, groups: int, codebook_size: int, seed: int, max_iter: int, cache_dir: str,
    log: Callable[[str], None] | None = None, init: str = "k-means++",
) -> Path:
    """Path of k-means codebooks for this exact model/seed/G/K, computing and caching them on first use."""
    from harness.models.ptq import model_identity, quantize_model

    ident = {"model": {**model_identity(model_cfg), "extra": model_cfg.extra}, "tokens": tokens, "G": groups,
             "K": codebook_size, "seed": seed, "iters": max_iter, "v": 1}
    if init != "k-means++":  # the default stays out of the key: files cached before the option keep their names
        ident["init"] = init
    key = json.dumps(ident, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"codebooks-{model_cfg.name}-G{groups}-K{codebook_size}-{digest}.safetensors"
    if not path.is_file():
        if log:
            log(f"codebooks: fitting k-means G={groups} K={codebook_size} for {model_cfg.name} ({model_cfg.layers} "
                f"blocks; first use, cached in {cache_dir} afterwards)")
        model = build_model(model_cfg, seed=seed)
        quantize_model(model, model_cfg.weight_bits, model_cfg.weight_group)  # fitted on the model that runs
        books = kmeans_codebooks(model, tokens, groups, codebook_size, seed=seed, max_iter=max_iter, log=log,
                                 init=init)
        save_codebooks(path, books, {"model": model_cfg.name, "groups": groups, "codebook_size": codebook_size})
    return path
