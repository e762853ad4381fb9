"""DeTransformer block parallelism (bp_ag, bp_sp): the architecture, both execution plans against the same model on
one device, their equality, their traffic per retained layer, and the analytic charge of the all-to-all."""


import pytest
import torch
from threadcomm import run_method as run_bp

from harness.comm.cost import charge_seconds
from harness.models import build_model, make_inputs
from harness.models.detransformer import DecoupledModel, check_shape, flops_per_layer, parameter_count
from harness.parallel import METHODS


def cfg_of(tiny_cfg, kind, tokens=13):
    return tiny_cfg(kind, tokens, layers=4, hidden=48, heads=12)  # 48 channels, 12 heads: N = 1..4 all divide


@pytest.mark.parametrize("kind", ["vit", "gpt2", "llama"])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("retained", [1, 2, 4])
def test_bp_plans_equal_the_bp_model_on_one_device(tiny_cfg, kind, world, retained):
    cfg = cfg_of(tiny_cfg, kind)
    model = build_model(cfg, seed=1)
    x = make_inputs(cfg, 13, batch=2, seed=1)
    ref = DecoupledModel(model, world, retained, "a", seed=5)(x)
    outs = {}
    for method in ("bp_ag", "bp_sp"):
        res = run_bp(model, x, method, world, {"retained": retained, "seed": 5})
        got = [(o, p) for o, p, _ in res if o.logits is not None]
        assert got, f"{method}: no rank produced an output"
        for o, p in got:
            assert (o.logits - p.reference_slice(ref, o)).abs().max().item() <= 1e-5
        if cfg.decoder:  # every position is produced by exactly one rank (bp_sp) or by all of them (bp_ag)
            covered = sorted({int(i) for o, _ in got for i in o.positions})
            assert covered == list(range(13))
        outs[method] = got[0][0].logits if kind == "vit" else torch.cat([o.logits for o, _ in got], 1)[:, :13]
    # the two execution plans of one model: the same outputs up to float rounding of differently shaped matmuls
    assert torch.allclose(outs["bp_ag"], outs["bp_sp"], atol=1e-6, rtol=0)


def test_one_device_is_a_plain_forward_and_the_model_differs_from_the_original(tiny_cfg):
    cfg = cfg_of(tiny_cfg, "vit")
    model = build_model(cfg, seed=1)
    x = make_inputs(cfg, 13, seed=1)
    bp = DecoupledModel(model, 1, 1, "a", seed=5)
    (out, _, records), = run_bp(model, x, "bp_ag", 1, {"retained": 1, "seed": 5})
    assert torch.equal(out.logits, bp(x))
    assert all(r.payload_bytes == 0 for r in records)  # one device sends nothing
    # decoupled layers have their own weights: not the original model's output
    assert not torch.allclose(bp(x), model(x), atol=1e-3)
    # a retained layer is the original layer at that depth (its weights, not a copy)
    assert bp.kinds == ["sub", "sub", "sub", "full"] and bp.layers[3] is model.blocks[3]
    assert DecoupledModel(model, 4, 4, "a").kinds == ["full"] * 4
    assert DecoupledModel(model, 4, 2, "a").kinds == ["sub", "full", "sub", "full"]


@pytest.mark.parametrize("variant", ["a", "b"])
def test_sub_blocks_keep_the_weight_count_of_one_layer(tiny_cfg, variant):
    cfg = tiny_cfg("vit", 16, layers=12, hidden=96, heads=12)
    model = build_model(cfg, seed=0)
    original = sum(p.numel() for p in model.parameters())
    bp = parameter_count(DecoupledModel(model, 4, 1, variant))
    unused = sum(p.numel() for b in model.blocks[:11] for p in b.parameters())  # decoupled away
    assert abs(bp - original) / unused < 0.02, "N sub-blocks should weigh as much as one original layer"
    f = flops_per_layer(cfg, 1024, 4, variant)
    assert 0 < f["ratio"] < 1


def test_sub_block_variants_shapes(tiny_cfg):
    cfg = cfg_of(tiny_cfg, "vit")
    model = build_model(cfg, seed=1)
    a = DecoupledModel(model, 4, 1, "a").layers[0]["0"]
    b = DecoupledModel(model, 4, 1, "b").layers[0]["0"]
    assert tuple(a.attn.qkv.weight.shape) == (3 * 48, 12) and a.attn.heads == 12
    assert tuple(b.attn.qkv.weight.shape) == (3 * 12, 12) and b.attn.heads == 3
    assert b.mlp.fc.out_features == 6 * 48 - 2 * 12  # (2 + r)·D - 2·D/N keeps the weights of one layer


@pytest.mark.parametrize("world", [2, 3, 4])
def test_traffic_per_retained_layer(tiny_cfg, world):
    """bp_ag: one all-gather of the T x D/N channel shard per retained layer; bp_sp: that plus an all-to-all of the
    device's rows at full width (the DeTransformer paper), nothing else — and not one byte for decoupled layers."""
    cfg = cfg_of(tiny_cfg, "vit")
    model = build_model(cfg, seed=1)
    b, seq, d = 2, 14, 48  # 13 patches + the class token
    x = make_inputs(cfg, 13, batch=b, seed=1)
    for retained in (1, 4):
        ag = run_bp(model, x, "bp_ag", world, {"retained": retained})
        sp = run_bp(model, x, "bp_sp", world, {"retained": retained})
        sp_lean = run_bp(model, x, "bp_sp", world, {"retained": retained, "final_reshard": False})
        full = [i for i in range(4) if (i + 1) % (4 // retained) == 0]
        for rank in range(world):
            rows = [(seq // world) + (1 if r < seq % world else 0) for r in range(world)][rank]
            shard = b * seq * (d // world) * 4
            assert [(r.op, r.tag, r.payload_bytes) for r in ag[rank][2]] == [
                ("all_gather", f"block{i}", shard) for i in full]
            want = []
            for i in full:
                want += [("all_gather", f"block{i}", shard), ("all_to_all", f"block{i}.reshard", b * rows * d * 4)]
            assert [(r.op, r.tag, r.payload_bytes) for r in sp[rank][2]] == want
            assert [(r.op, r.tag, r.payload_bytes) for r in sp_lean[rank][2]] == want[:-1]
        # only the rank holding the class token predicts under bp_sp; every rank does under bp_ag
        assert [o.logits is not None for o, _, _ in sp] == [True] + [False] * (world - 1)
        assert all(o.logits is not None for o, _, _ in ag)


def test_analytic_charges_of_the_all_to_all():
    mb = 1_000_000
    # paper model: one send of the whole input; ring model: the (N-1)/N of it meant for other ranks
    assert charge_seconds("all_to_all", mb, 4, 8.0, 1e6, "paper", 1.0) == pytest.approx(1.0)
    assert charge_seconds("all_to_all", mb, 4, 8.0, 1e6, "ring", 1.0) == pytest.approx(0.75)
    assert charge_seconds("all_to_all", mb, 1, 8.0, 1e6, "ring", 1.0) == 0.0


@pytest.mark.parametrize("args,words", [
    ((4, 5, "a"), ["retained=5", "divide"]),
    ((5, 1, "a"), ["hidden size 48", "devices=5"]),
    ((8, 1, "b"), ["sub_block=b", "heads=12"]),
    ((4, 1, "c"), ["sub_block='c'"]),
])
def test_shapes_that_cannot_be_built_are_named(tiny_cfg, args, words):
    cfg = tiny_cfg("vit", 13, layers=12, hidden=48, heads=12)
    why = check_shape(cfg, *args)
    assert why is not None and all(w in why for w in words), why
    assert check_shape(cfg, 4, 4, "b") is None and check_shape(cfg, 8, 1, "a") is None


TRAFFIC_CASES = [
    ("tp", {}), ("sp", {}), ("single", {}),
    ("astra", {"vq": "lossless"}), ("astra", {"vq": "lossless", "dct": False}),
    ("sp", {"exchange_dtype": "fp16"}), ("sp", {"exchange_dtype": "int8"}),
    ("tp", {"exchange_dtype": "fp16"}), ("tp", {"exchange_dtype": "int8"}),
    ("bp_ag", {"retained": 2}), ("bp_sp", {"retained": 1}), ("bp_sp", {"retained": 2, "final_reshard": False}),
    ("ring_attn", {}), ("galaxy", {"tiles": 3}), ("galaxy", {"tiles": 1}),
]


@pytest.mark.parametrize("kind", ["vit", "gpt2", "llama"])
@pytest.mark.parametrize("world", [1, 3, 4])
@pytest.mark.parametrize("method,opts", TRAFFIC_CASES)
def test_every_method_predicts_its_recorded_traffic(tiny_cfg, kind, world, method, opts):
    """``Method.traffic`` (what network.compute=fitted charges without running anything) equals the collectives the
    plan really issues, rank by rank, op by op, byte for byte."""
    from harness.spec.build import make_spec

    cfg = tiny_cfg(kind, 13, layers=4, hidden=48, heads=12)
    spec = make_spec(cfg, {"name": method, **opts}, devices=world, tokens=13, batch=2)
    model = build_model(cfg, seed=1)
    x = make_inputs(cfg, 13, batch=2, seed=1)
    res = run_bp(model, x, method, spec.devices, {**opts, "seed": 0})
    for rank, (_, _, records) in enumerate(res):
        assert METHODS[method].traffic(spec, rank) == [(r.op, r.tag, r.payload_bytes) for r in records]


@pytest.mark.parametrize("groups,k", [(1, 64), (4, 16)])
def test_astra_predicts_its_packed_index_traffic(tiny_cfg, groups, k):
    from harness.spec.build import make_spec

    cfg = tiny_cfg("vit", 13, layers=2, hidden=48, heads=12)
    books = torch.randn(2, groups, k, 48 // groups)
    model = build_model(cfg, seed=1)
    x = make_inputs(cfg, 13, batch=2, seed=1)
    spec = make_spec(cfg, {"name": "astra", "groups": groups, "codebook_size": k}, devices=3, tokens=13, batch=2)
    res = run_bp(model, x, "astra", 3, {"groups": groups, "codebook_size": k, "codebooks": books})
    for rank, (_, _, records) in enumerate(res):
        assert METHODS["astra"].traffic(spec, rank) == [(r.op, r.tag, r.payload_bytes) for r in records]
