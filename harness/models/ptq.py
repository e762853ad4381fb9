"""Post-training weight quantization (the paper's Table 5 setting: ASTRA combined with 8- and 4-bit models).

Round-to-nearest, symmetric, weight-only: every ``nn.Linear`` inside the Transformer blocks (attention's qkv and
output projection, the MLP's two layers) gets integer weights times a scale; the embedding, the classifier / LM
head, LayerNorms and biases stay in full precision, as weight-only schemes usually leave them. 8-bit uses one scale
per output channel; 4-bit one scale per group of ``group`` consecutive input columns of a row (64, bitsandbytes'
block size), since one scale per row costs 4-bit weights too much accuracy. The quantized weights are stored back
dequantized (fp32 values on the integer grid), so every method — which slice, shard or re-project those weights —
computes with exactly the same quantized model; what this measures is the accuracy of the quantized model and of
ASTRA on top of it. See docs/accuracy.md ("Weight quantization") for why latency is not reported per precision here.
"""

from __future__ import annotations

import torch
from torch import nn

BITS = (32, 8, 4)
DEFAULT_GROUP = 64


def quantize_weight(w: torch.Tensor, bits: int, group: int = 0) -> torch.Tensor:
    """``w`` (out × in) rounded to ``bits``-bit symmetric integers times a scale per output channel (``group`` 0)
    or per group of ``group`` input columns, returned dequantized. 32 bits returns ``w`` unchanged."""
    if bits not in BITS:
        raise ValueError(f"weight_bits={bits} is not supported: use one of {', '.join(map(str, BITS))}")
    if bits == 32:
        return w
    out_f, in_f = w.shape
    g = in_f if group <= 0 or group >= in_f else group
    if in_f % g:
        raise ValueError(f"a layer with {in_f} inputs cannot be cut into groups of {group}: use a divisor or 0")
    qmax = 2 ** (bits - 1) - 1
    wg = w.detach().reshape(out_f, in_f // g, g)
    scale = wg.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny) / qmax
    q = torch.clamp(torch.round(wg / scale), -qmax - 1, qmax)
    return (q * scale).reshape(out_f, in_f).to(w.dtype)


def group_for(bits: int, group: int | None) -> int:
    """The group size a bit width uses: 8-bit per output channel, 4-bit ``group`` (default 64) columns."""
    if group is not None:
        return int(group)
    return DEFAULT_GROUP if bits == 4 else 0


def misfit_width(mc, group: int) -> int | None:
    """The smallest input width of ``mc``'s block linears that ``group`` columns do not divide (None: all fit)."""
    bad = sorted(w for w in {mc.hidden, mc.inner} if group and group < w and w % group)
    return bad[0] if bad else None


def model_identity(mc) -> dict:
    """``mc``'s fields as they identify a model: without ``extra``, and without the quantization fields when the
    weights are not quantized (so full-precision points and caches keep the keys they had before PTQ existed)."""
    return {k: v for k, v in mc.to_dict().items()
            if k != "extra" and not (k.startswith("weight_") and mc.weight_bits == 32)}


def block_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear layers PTQ quantizes: those inside the Transformer blocks (names containing ``blocks.``)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and "blocks." in f"{n}."]


@torch.no_grad()
def quantize_model(model: nn.Module, bits: int, group: int | None = None) -> int:
    """Quantize ``model``'s block linears in place; returns how many layers were quantized (0 at 32 bits)."""
    if bits == 32:
        return 0
    layers = block_linears(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no linear layers inside Transformer blocks to quantize")
    g = group_for(bits, group)
    for _, lin in layers:
        lin.weight.copy_(quantize_weight(lin.weight, bits, g))
    return len(layers)
