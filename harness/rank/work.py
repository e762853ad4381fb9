"""Work counts: the multiply-adds each rank of a point computes, counted on the ranks' own code.

Each rank builds its real plan (the model, its shards, its codebooks' shapes) and runs one inference on fake tensors
(``torch._subclasses.FakeTensorMode``: shapes only, nothing computed) under ``torch.utils.flop_counter``, which adds
up the multiply-adds of every matrix product — the linear layers, attention's two products (scaled dot-product
attention on the CPU is counted here: torch does not count it), ASTRA's codeword distances and its projections of
decoded remote tokens, the block-parallel methods' restructured layers. Element-wise work (norms, GELU, softmax,
argmin, look-ups, bit packing) is not counted. Counting a point takes the time to build its ranks' plans (seconds),
not to run them, at any token count.

``network.compute=predicted`` turns the counts into compute times with one constant (``harness.network.paper``);
the analytic backend runs this module in a process of its own (``python -m harness.rank.work``) and caches the
counts (``harness.network.paper.rank_macs``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Scaled dot-product attention's two products: Q·Kᵀ and softmax·V (2 flops per multiply-add)."""
    b, h, n, d = query_shape
    m, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * n * m * d + 2 * b * h * n * m * dv


def count_ranks(spec) -> list[float]:
    """Multiply-adds of one inference, per rank (no cache)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from harness.comm.collectives import SimulatedComm
    from harness.models import make_inputs
    from harness.rank.worker import fresh_model
    from harness.spec.schema import FaultOptions

    spec = spec.replace(verify=False, fault=FaultOptions(), solo_repeats=0, budget_s=None, interleave=False)
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    out = []
    with tempfile.TemporaryDirectory(prefix="astra-work-") as tmp:
        spec = spec.method_class.prepare_shapes(spec, Path(tmp))
        for r in range(spec.devices):
            model = fresh_model(spec)
            inputs = make_inputs(spec.model, spec.tokens, spec.batch, seed=spec.seed)
            plan = spec.method_class.plan(model, SimulatedComm(r, spec.devices), spec)
            with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True), \
                    FlopCounterMode(display=False, custom_mapping=mapping) as counter:
                plan.forward(inputs)
            out.append(counter.get_total_flops() / 2)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.rank.work --spec S --out O``: count every rank of a spec, write {"macs": [...]} to O."""
    import argparse

    from harness.errors import atomic_write
    from harness.spec.schema import RunSpec

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    counts = count_ranks(RunSpec.from_json(Path(args.spec).read_text()))
    atomic_write(args.out, json.dumps({"macs": counts}))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
