"""Compute benchmark: per-rank compute time of every method, and the compute-bound ideal speedup.

Each rank runs its real plan alone in this process (``harness.profile``: collectives return local copies), one
rank at a time, with ``--threads`` torch threads — the same budget for every rank and for ``single`` — so the
numbers do not depend on how many cores the machine has. Also times ASTRA's VQ pieces for one block.

    python benchmarks/compute.py --model vit_base --tokens 1024 --devices 1,2,4
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from harness.errors import log
from harness.parallel import vq
from harness.parallel.codebooks import load_codebooks
from harness.rank.profile import compute_ms, profile_ranks
from harness.spec.build import build_spec, compose


def spec_for(model, method, devices, tokens, args):
    """The prepared RunSpec of one point (ASTRA's G and K apply to the methods that have them)."""
    overrides = [f"model={model}", f"method={method}", f"devices={devices}", f"tokens={tokens}",
                 f"repeats={args.repeats}", f"warmup={args.warmup}", f"device.threads={args.threads}",
                 f"cache_dir={args.cache_dir}", f"++method.groups={args.groups}",
                 f"++method.codebook_size={args.codebook_size}"]
    spec = build_spec(compose(overrides), in_sweep=True)  # in_sweep: knobs of other methods are dropped
    return spec.method_class.prepare(spec, lambda msg: log("compute", msg)), None


def time_it(fn, reps=20):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def vq_breakdown(spec, n_local, n_remote, hidden):
    """ms per block for ASTRA's VQ pieces on realistic shapes (n_local tokens encoded, n_remote looked up)."""
    books = load_codebooks(spec.codebooks)[0].float()
    g, k = books.shape[0], books.shape[1]
    x = torch.randn(n_local, hidden)
    sq = books.pow(2).sum(-1)
    idx = vq.encode(x, books, sq)
    packed = vq.pack_indices(idx, k)
    ridx = torch.randint(0, k, (n_remote, g))
    rpacked = vq.pack_indices(ridx, k)
    w = torch.randn(2 * hidden, hidden)
    table = torch.bmm(books, w.view(2 * hidden, g, hidden // g).permute(1, 2, 0))
    return {
        "encode": time_it(lambda: vq.encode(x, books, sq)),
        "pack": time_it(lambda: vq.pack_indices(idx, k)),
        "unpack": time_it(lambda: vq.unpack_indices(rpacked, n_remote * g, k)),
        "lookup": time_it(lambda: torch.index_select(table[0], 0, ridx[:, 0]) if g == 1
                          else sum(torch.index_select(table[i], 0, ridx[:, i]) for i in range(g))),
        "packed_bytes": packed.numel(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--devices", default="1,2,4")
    ap.add_argument("--methods", default="tp,sp,astra")
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--codebook-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / "results" / "cache"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    spec, _ = spec_for(args.model, "single", 1, args.tokens, args)
    single = compute_ms(profile_ranks(spec)[0])
    print(f"# compute benchmark: {args.model}, {args.tokens} tokens, {args.threads} thread(s) per rank, "
          f"astra G={args.groups} K={args.codebook_size}")
    print(f"single-device compute: {single:.1f} ms\n")
    print("| method | N | per-rank compute ms (min..max) | slowest rank ms | ideal speedup | payload B/rank |")
    print("|---|---|---|---|---|---|")
    print(f"| single | 1 | {single:.1f} | {single:.1f} | 1.00 | 0 |")
    astra_spec = None
    for n in [int(v) for v in args.devices.split(",") if int(v) > 1]:
        for method in args.methods.split(","):
            spec, cfg = spec_for(args.model, method, n, args.tokens, args)
            reps = profile_ranks(spec)
            ms = [compute_ms(r) for r in reps]
            payload = max(r["payload_bytes"] for r in reps)
            print(f"| {method} | {n} | {min(ms):.1f}..{max(ms):.1f} | {max(ms):.1f} | {single / max(ms):.2f} | "
                  f"{payload} |", flush=True)
            if spec.codebooks:  # a method exchanging codebook indices: time its VQ pieces below
                astra_spec = (spec, n)
    if astra_spec:
        spec, n = astra_spec
        hidden = spec.model.hidden
        n_local = -(-args.tokens // n)
        br = vq_breakdown(spec, n_local, args.tokens - n_local, hidden)
        block = None
        reps = profile_ranks(spec, ranks=[0])
        block = compute_ms(reps[0]) / spec.model.layers
        wire = br["pack"] + br["unpack"] + br["lookup"]
        print(f"\nASTRA VQ pieces per block (N={n}, {n_local} local / {args.tokens - n_local} remote tokens; "
              f"block compute {block:.2f} ms):")
        for key in ("encode", "pack", "unpack", "lookup"):
            print(f"  {key:7s} {br[key]:7.3f} ms  ({100 * br[key] / block:5.2f} % of a block)")
        print(f"  pack+unpack+lookup: {wire:.3f} ms = {100 * wire / block:.2f} % of a block (target < 2 %)")
        print(f"  packed indices per block: {br['packed_bytes']} B")


if __name__ == "__main__":
    main()
