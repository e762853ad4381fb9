"""Encode benchmark: can ASTRA's exact nearest-codeword search be made cheaper on this CPU without changing an index?

ASTRA's encode is one (n x D) @ (D x K) score matmul per block and group plus an argmin. Two ways to make it cheaper
while keeping every index exact, both measured here on real activations — a random-weight
ViT-Base's attention inputs at 1024 tokens against k-means codebooks fitted on other inputs (K = 1024, G = 1):

1. *Score in low precision, re-score the best few exactly.* Needs a fast low-precision matmul (bf16/fp16 matrix
   units, int8 dot products) and an error bound small against the gap between the best and second-best codeword.
2. *Prune with a projection bound.* Score all codewords on the top-d' principal directions plus the norm of the
   rest (a lower bound on the true distance: ||a_x - a_c||^2 + (||b_x|| - ||b_c||)^2), re-score the best m exactly,
   and certify a token when the (m+1)-th bound already exceeds the best exact distance.

It prints the timings of the score matmul in each precision the CPU offers, and how many tokens the projection
bound certifies. Nothing here is used by the runtime: on the machine this was written on (AMD EPYC, AVX2, no
AVX-512/VNNI/AMX) neither way pays, see docs/measurements.md.

    python benchmarks/encode.py [--tokens 256] [--samples 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from compute import time_it  # noqa: E402  (benchmarks/compute.py, this script's folder)

from harness.models import build_model
from harness.parallel import vq
from harness.parallel.codebooks import calibration_vectors
from harness.spec.build import model_from_conf


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def certified_fraction(x: torch.Tensor, books: torch.Tensor, dims: int, m: int) -> float:
    """Share of tokens whose exact nearest codeword the projection bound proves from m exact re-scores."""
    sq = books.pow(2).sum(1)
    _, _, vh = torch.linalg.svd(books, full_matrices=False)
    p = vh[:dims].t()
    ac = books @ p
    bc = (sq - ac.pow(2).sum(1)).clamp_min(0).sqrt()
    ax = x @ p
    bx = (x.pow(2).sum(1) - ax.pow(2).sum(1)).clamp_min(0).sqrt()
    lower = torch.addmm(sq, torch.cat([ax, bx[:, None]], 1), torch.cat([ac, bc[:, None]], 1).t(), alpha=-2)
    bound, idx = lower.topk(m + 1, 1, largest=False)
    exact = sq[idx[:, :m]] - 2 * torch.bmm(books[idx[:, :m]], x.unsqueeze(2)).squeeze(2)
    return float((bound[:, m] > exact.min(1).values).float().mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=256, help="tokens one device encodes per block (1024 / N)")
    ap.add_argument("--codebook-size", type=int, default=1024)
    ap.add_argument("--blocks", default="0,5,11")
    args = ap.parse_args()
    torch.set_num_threads(1)
    flags = cpu_flags()
    print(f"CPU flags: avx2={'avx2' in flags} avx512f={'avx512f' in flags} avx512_bf16={'avx512_bf16' in flags} "
          f"avx512_vnni={'avx512_vnni' in flags} amx_bf16={'amx_bf16' in flags}; 1 thread")
    cfg = model_from_conf("vit_base", 1024)
    model = build_model(cfg, seed=0)
    k = args.codebook_size
    fit = calibration_vectors(model, 1024, max(2, 4 * k // 1024), seed=0)
    held = calibration_vectors(model, 1024, 1, seed=77)
    n, d = args.tokens, cfg.hidden
    for b in [int(v) for v in args.blocks.split(",")]:
        books = vq.fit_codebooks(fit[b], 1, k, seed=0, max_iter=10)[0]
        x = held[b][:n].contiguous()
        sq = books.pow(2).sum(1)
        bt = books.t().contiguous()
        dist = torch.cdist(x.double(), books.double()).pow(2)
        two = dist.topk(2, 1, largest=False).values
        gap = (two[:, 1] - two[:, 0]) / two[:, 0]
        rows = {"fp32 addmm + argmin (today)": time_it(lambda: torch.addmm(sq, x, bt, alpha=-2).argmin(1), 15)}
        xb, bb = x.bfloat16(), bt.bfloat16()
        rows["bf16 matmul"] = time_it(lambda: xb @ bb, 3)
        xh, bh = x.half(), bt.half()
        rows["fp16 matmul"] = time_it(lambda: xh @ bh, 3)
        xi = torch.randint(-127, 127, (n, d), dtype=torch.int8)
        bi = torch.randint(-127, 127, (d, k), dtype=torch.int8)
        try:
            rows["int8 torch._int_mm"] = time_it(lambda: torch._int_mm(xi, bi), 3)
        except RuntimeError as exc:
            rows["int8 torch._int_mm"] = float("nan")
            print(f"  int8 _int_mm unavailable: {exc}")
        for dims in (64, 128):
            rows[f"fp32 matmul on {dims} of {d} dims"] = time_it(lambda: x[:, :dims] @ bt[:dims], 15)
        print(f"block {b}: {n} tokens x {d} x K={k}; nearest-vs-second gap median {100 * float(gap.median()):.2f} % "
              f"of the distance (p10 {100 * float(gap.quantile(0.1)):.2f} %)")
        for name, ms in rows.items():
            print(f"  {name:38s} {ms:9.2f} ms")
        for dims in (64, 128):
            for m in (4, 16):
                print(f"  projection bound d'={dims:3d}, m={m:2d}: certifies {100 * certified_fraction(x, books, dims, m):5.1f} % "
                      "of tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
