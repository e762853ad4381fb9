"""Wire formats of the quantized exchanges, and sp/tp exchanging fp16 / int8 against the exact model."""

import copy

import pytest
import torch
from threadcomm import run_ranks

from harness.comm.wire import WIRE_DTYPES, decode_rows, encode_rows, row_bytes
from harness.models import build_model, make_inputs
from harness.parallel import METHODS


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_round_trip_size_and_error(dtype):
    x = torch.randn(7, 33) * torch.logspace(-3, 3, 7)[:, None]  # rows of very different scales
    buf = encode_rows(x, dtype)
    assert buf.dtype == torch.uint8 and buf.numel() == 7 * row_bytes(33, dtype)
    y = decode_rows(buf, 7, 33, dtype)
    err = (y - x).abs()
    if dtype == "fp32":
        assert torch.equal(y, x)
    elif dtype == "fp16":
        assert (err <= 1e-3 * x.abs() + 1e-7).all()
    else:  # per-row scale: error at most half a step of that row's own scale
        step = x.abs().amax(1, keepdim=True) / 127
        assert (err <= step / 2 + 1e-6 * step).all() and err.max() > 0


def run(model, x, method, world, opts):
    def fn(comm):
        plan = METHODS[method](copy.deepcopy(model), comm, opts)
        comm.reset()
        return plan.forward(x, all_positions=True), plan, list(comm.records)

    return run_ranks(world, fn)


@pytest.mark.parametrize("method", ["sp", "tp"])
@pytest.mark.parametrize("kind", ["vit", "gpt2"])
def test_quantized_exchange_is_close_but_not_exact(tiny_cfg, method, kind):
    cfg = tiny_cfg(kind, 13, heads=4, hidden=48)
    model = build_model(cfg, seed=3)
    x = make_inputs(cfg, 13, batch=2, seed=3)
    ref = model(x, all_positions=True) if kind == "gpt2" else model(x)
    errs, sent = {}, {}
    for dtype in WIRE_DTYPES:
        res = run(model, x, method, 3, {"exchange_dtype": dtype})
        outs = [(o, p) for o, p, _ in res if o.logits is not None]
        errs[dtype] = max((o.logits - p.reference_slice(ref, o)).abs().max().item() for o, p in outs)
        sent[dtype] = sum(r.payload_bytes for r in res[0][2])
        if method == "tp":  # every rank ends with identical values
            assert all(torch.equal(o.logits, outs[0][0].logits) for o, _ in outs)
    assert errs["fp32"] <= 1e-4
    assert 0 < errs["fp16"] < errs["int8"] < 0.5 * ref.abs().max().item()
    assert sent["fp16"] * 2 == sent["fp32"] and sent["int8"] < sent["fp16"]
