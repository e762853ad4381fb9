"""The masked ASTRA simulation (training/evaluation form) against the model and against the distributed runtime."""

from __future__ import annotations

import copy

import pytest
import torch
from threadcomm import run_ranks

from harness.models import ModelConfig, build_model, make_inputs
from harness.parallel import METHODS, vq
from harness.parallel.codebooks import kmeans_codebooks
from harness.train.checkpoint import variant_name
from harness.train.sim import AstraSim, SimOptions, VQState, assign_devices, fpar, residual_stats
from harness.train.variants import expand_suite

T = 23


def small(kind: str) -> ModelConfig:
    llama = {"kv_heads": 2, "mlp_hidden": 72, "tie_embeddings": False, "rope_theta": 500.0} if kind == "llama" else {}
    return ModelConfig(name="t", kind=kind, layers=2, hidden=32, heads=4, patch_size=2, channels=1, num_classes=5,
                       vocab_size=64, max_positions=64, tokens=T, ln_eps=1e-5, **llama)


def full_logits(model, x):
    return model(x, all_positions=True) if model.cfg.decoder else model(x)


CASES = [("vit", True, 2), ("vit", True, 3), ("vit", False, 3), ("vit", False, 4), ("gpt2", False, 2),
         ("gpt2", False, 4), ("llama", False, 2), ("llama", False, 3)]


@pytest.mark.parametrize("kind,dct,n", CASES)
def test_lossless_simulation_is_the_model(kind, dct, n):
    model = build_model(small(kind), 0)
    x = make_inputs(model.cfg, T, 3, seed=1)
    sim = AstraSim(model, VQState(torch.randn(2, 1, 4, 32)), SimOptions(devices=n, dct=dct))
    sim.lossless = True
    with torch.no_grad():
        assert torch.allclose(sim.forward(x)[0], full_logits(model, x), atol=1e-5)


@pytest.mark.parametrize("kind,dct,n", CASES)
def test_simulation_matches_distributed_runtime(kind, dct, n):
    """Same codebooks, same weights: the single-process mask simulation and the multi-rank runtime agree."""
    model = build_model(small(kind), 0)
    x = make_inputs(model.cfg, T, 3, seed=1)
    books = kmeans_codebooks(model, T, 4, 16, seed=0)
    sim = AstraSim(model, VQState(books), SimOptions(devices=n, dct=dct))
    with torch.no_grad():
        want = sim.forward(x)[0]
        assert (want - full_logits(model, x)).abs().max() > 1e-4  # VQ really changes the output

    def rank(comm):
        plan = METHODS["astra"](copy.deepcopy(model), comm,
                                {"groups": 4, "codebook_size": 16, "dct": dct, "codebooks": books})
        return plan.forward(x, all_positions=True)

    outs = run_ranks(n, rank)
    if kind == "vit":
        got = [o.logits for o in outs if o.logits is not None]
        assert len(got) == (n if dct else 1)
        for g in got:
            assert torch.allclose(g, want, atol=1e-5)
    else:
        got = torch.cat([o.logits for o in outs], 1)
        assert torch.allclose(got, want, atol=1e-5)


LOSS_CASES = [("vit", True, 3), ("vit", False, 4), ("gpt2", False, 3), ("llama", False, 3)]


@pytest.mark.parametrize("fill", ["mask", "zero"])
@pytest.mark.parametrize("kind,dct,n", LOSS_CASES)
def test_index_loss_is_the_same_in_simulation_and_runtime(kind, dct, n, fill):
    """Lost indices (method.index_loss): the runtime and the simulation lose the same tokens and treat them alike."""
    model = build_model(small(kind), 0)
    x = make_inputs(model.cfg, T, 3, seed=1)
    books = kmeans_codebooks(model, T, 4, 16, seed=0)
    opts = SimOptions(devices=n, dct=dct, index_loss=0.3, index_loss_fill=fill)
    sim = AstraSim(model, VQState(books), opts)
    sim.loss_seed = 7
    with torch.no_grad():
        want = sim.forward(x)[0]
        clean = AstraSim(model, VQState(books), SimOptions(devices=n, dct=dct)).forward(x)[0]
        assert (want - clean).abs().max() > 1e-4  # the loss really changes the output
        dev = assign_devices(T, n, dct, kind == "vit", False, 3)
        _, _, sent = sim.masks(dev)
        lost = sim.lost_pairs(0, dev, sent)
        remote = (dev[:, None, :, None] != dev[:, None, None, :]) & sent[:, None, None, :]
        assert not (lost & ~remote).any()  # only keys that crossed the network are lost
        frac = lost.sum() / remote.sum()
        assert 0.15 < frac < 0.45, frac

    def rank(comm):
        plan = METHODS["astra"](copy.deepcopy(model), comm,
                                {"groups": 4, "codebook_size": 16, "dct": dct, "codebooks": books, "seed": 7,
                                 "index_loss": 0.3, "index_loss_fill": fill})
        return plan.forward(x, all_positions=True)

    outs = run_ranks(n, rank)
    if kind == "vit":
        got = [o.logits for o in outs if o.logits is not None]
        for g in got:
            assert torch.allclose(g, want, atol=1e-5)
    else:
        got = torch.cat([o.logits for o in outs], 1)
        assert torch.allclose(got, want, atol=1e-5)


def test_lost_tokens_are_a_seeded_draw():
    a = vq.lost_tokens(0, 3, 1, 2, 4, 1000, 0.05)
    assert a.shape == (4, 1000) and a.equal(vq.lost_tokens(0, 3, 1, 2, 4, 1000, 0.05))
    assert 0.03 < a.float().mean() < 0.07
    for other in [(1, 3, 1, 2), (0, 4, 1, 2), (0, 3, 2, 1), (0, 3, 1, 0)]:  # seed, block, sender, receiver
        assert not a.equal(vq.lost_tokens(*other, 4, 1000, 0.05))
    assert not vq.lost_tokens(0, 3, 1, 2, 4, 1000, 0.0).any()


def test_dct_replicas_do_not_see_each_other():
    model = build_model(small("vit"), 0)
    sim = AstraSim(model, VQState(torch.randn(2, 1, 4, 32)), SimOptions(devices=3, dct=True))
    dev = assign_devices(T, 3, True, True, False, 1)
    _, allowed, sent = sim.masks(dev)
    a = allowed[0, 0]
    assert a[:3, :3].equal(torch.eye(3, dtype=torch.bool))
    assert not sent[0, :3].any() and sent[0, 3:].all()
    # a content token sees only its own device's replica
    for t in range(3, 3 + T):
        assert a[t, :3].sum() == 1 and a[t, int(dev[0, t])]


def test_random_assignment_shares_and_fpar():
    g = torch.Generator().manual_seed(0)
    dev = assign_devices(40, 4, False, False, True, 50, g)
    counts = torch.nn.functional.one_hot(dev, 4).sum(1)
    assert (counts >= 1).all() and (counts.sum(1) == 40).all()
    assert counts.float().std(1).mean() > 1  # uneven shares
    even = assign_devices(40, 4, False, False, False, 1)
    assert fpar(even, 4).item() == pytest.approx(0.25)
    assert (fpar(dev, 4) >= 0.25 - 1e-6).all()


def test_ema_update_moves_codewords_to_assigned_means():
    books = torch.zeros(1, 2, 2, 2)
    books[0, 0, 1] = 10.0
    books[0, 1, 1] = 10.0
    st = VQState(books)
    x = torch.tensor([[1.0, 1.0, 9.0, 9.0]] * 8)  # group 0 -> codeword 0, group 1 -> codeword 1
    idx = st.encode(0, x)
    assert idx.tolist() == [[0, 1]] * 8
    for _ in range(200):
        st.ema_update(0, x, idx, decay=0.9)
    assert torch.allclose(st.codebooks[0, 0, 0], torch.tensor([1.0, 1.0]), atol=1e-3)
    assert torch.allclose(st.codebooks[0, 1, 1], torch.tensor([9.0, 9.0]), atol=1e-3)
    assert torch.allclose(st.codebooks[0, 0, 1], torch.tensor([10.0, 10.0]))  # never assigned: unchanged


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_noise_follows_fitted_residual_statistics(cov):
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.5]])
    resid = torch.randn(40000, 4) @ mix.t() + torch.tensor([0.5, -0.2, 0.0, 1.0])
    books = torch.zeros(2, 1, 2)  # (G=2, K=1, d=2): the residual is x itself
    mean, covm = residual_stats(resid, books)
    st = VQState(books[None], mean[None], covm[None])
    xi = st.sample_noise(0, 40000, cov).view(-1, 2, 2)
    assert torch.allclose(xi.mean(0), mean, atol=0.05)
    emp = torch.stack([torch.cov(xi[:, gi].t()) for gi in range(2)])
    want = covm if cov == "full" else torch.diag_embed(torch.diagonal(covm, dim1=-2, dim2=-1))
    assert torch.allclose(emp, want, atol=0.06)


def test_training_forward_has_gradients_and_commitment():
    model = build_model(small("vit"), 0).train()
    books = kmeans_codebooks(model, T, 1, 16, seed=0)
    sim = AstraSim(model, VQState(books), SimOptions(devices=3, noise_lambda=1.0, split="random"))
    x = make_inputs(model.cfg, T, 4, seed=2)
    before = sim.state.codebooks.clone()
    logits, commit = sim.forward(x, train=True)
    (logits.sum() + commit).backward()
    assert commit.item() > 0
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert not torch.equal(before, sim.state.codebooks)  # EMA moved the codebooks


def test_more_groups_lower_quantization_error():
    torch.manual_seed(0)
    x = torch.randn(3000, 32) @ torch.randn(32, 32)
    errs = [vq.quantization_error(x, vq.fit_codebooks(x, g, 32, max_iter=10)) for g in (1, 4, 16)]
    assert errs[0] > errs[1] > errs[2]


def test_paper_suite_expansion():
    import harness.train  # noqa: F401 - registers the astra block's defaults
    from harness.spec.build import compose

    cfg = compose(["suite=paper"], "train")
    vit = expand_suite(cfg, vit=True)
    names = [variant_name(v) for v in vit]
    assert len(names) == len(set(names))
    assert {v["groups"] for v in vit} == {1, 16, 32}
    assert any(v["dct"] is False for v in vit) and any(v["split"] == "random" for v in vit)
    assert sorted({v["noise_lambda"] for v in vit if v["groups"] == 16}) == [0.0, 0.1, 0.3, 1.0]
    gpt = expand_suite(cfg, vit=False)
    assert all(v["dct"] is None for v in gpt) and len(gpt) < len(vit)
