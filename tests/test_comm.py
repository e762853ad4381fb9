"""The real gloo collectives of ``DistComm`` on loopback: the p2p, ring, bruck, auto and gloo implementations give the
same results (and the all-to-all delivers uneven blocks to the right ranks), with uneven chunking (a tensor size
not divisible by the group), for 3 ranks; the ring and auto ones also on tensors large enough for auto's ring."""

from __future__ import annotations

import os

import pytest
import torch
from threadcomm import run_gloo


def _rank(rank: int, world: int, port: int, results) -> None:
    import torch.distributed as dist

    from harness.comm.collectives import DistComm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)
        x = torch.randn(2, 7, 5)  # 70 elements over 3 ranks: uneven chunks
        shard = torch.arange(4, dtype=torch.uint8) + 10 * rank
        out = {}
        big = torch.randn(3, 100_003)  # 400 kB per all-reduce chunk, 1.2 MB per all-gather shard: auto goes round
        for impl in ("p2p", "ring", "bruck", "auto", "gloo"):
            comm = DistComm(impl)
            out[impl] = (comm.all_reduce(x.clone()), torch.stack(comm.all_gather(shard)))
            assert [r.payload_bytes for r in comm.records] == [70 * 4, 4]
            out[impl + "-big"] = (comm.all_reduce(big.clone()), torch.cat(comm.all_gather(big)))
            # all-to-all with uneven shapes: rank r sends rank j a (j+1, r+1) block filled with 100r + j
            parts = [torch.full((j + 1, rank + 1), 100.0 * rank + j) for j in range(world)]
            got = comm.all_to_all(parts, [(rank + 1, j + 1) for j in range(world)])
            assert [g.tolist() for g in got] == [[[100.0 * j + rank] * (j + 1)] * (rank + 1) for j in range(world)]
            assert comm.records[-1].payload_bytes == sum(p.numel() * 4 for p in parts)
            # quantized all-reduce: encoded both ways, summed in fp32, identical bits on every rank
            for wire, nbytes in (("fp16", 14 * 5 * 2), ("int8", 14 * (5 + 4))):
                out[wire] = comm.all_reduce(x.clone(), wire=wire)
                assert comm.records[-1].payload_bytes == nbytes
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_p2p_collectives_match_gloo():
    world = 3
    results = run_gloo(_rank, world)
    expect_sum = sum(torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(r)) for r in range(world))
    gens = [torch.Generator().manual_seed(r) for r in range(world)]
    for g in gens:
        torch.randn(2, 7, 5, generator=g)
    bigs = [torch.randn(3, 100_003, generator=g) for g in gens]
    for r in range(world):
        for impl in ("p2p", "ring", "bruck", "auto", "gloo"):
            red, gathered = results[r][impl]
            assert torch.allclose(red, expect_sum, atol=1e-5)
            assert gathered.tolist() == [[10 * j + i for i in range(4)] for j in range(world)]
            red, gathered = results[r][impl + "-big"]
            assert torch.allclose(red, sum(bigs), atol=1e-4)
            assert torch.equal(gathered, torch.cat(bigs))
            if impl != "gloo":  # every reduced chunk is summed once, by its owner: identical bits everywhere
                assert torch.equal(red, results[0][impl + "-big"][0])
                assert torch.equal(results[r][impl][0], results[0][impl][0])
        # auto: the small tensor went the direct way, the big one round the ring
        assert torch.equal(results[r]["auto"][0], results[r]["p2p"][0])
        assert torch.equal(results[r]["auto-big"][0], results[r]["ring-big"][0])
        for wire, tol in (("fp16", 1e-2), ("int8", 0.15)):
            assert torch.equal(results[r][wire], results[0][wire])
            err = (results[r][wire] - expect_sum).abs().max().item()
            assert 0 < err <= tol, (wire, err)


def test_unknown_impl():
    from harness.comm.collectives import DistComm

    with pytest.raises(ValueError, match="unknown"):
        DistComm("nccl-please")
