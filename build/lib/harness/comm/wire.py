"""Wire formats for quantized exchanges (``method.exchange_dtype`` of sp and tp): what a row of activations
becomes on the wire, and back.

- ``fp32``: as computed (4 bytes per value).
- ``fp16``: IEEE half precision (2 bytes per value).
- ``int8``: symmetric per-row (per-token) scale: q = round(x / s), s = max|x| / 127, sent as D int8 values plus
  the fp32 scale (D + 4 bytes per row).

Encoded rows are one flat uint8 tensor, so a quantized exchange is one message with an exact byte count.
"""

from __future__ import annotations

import torch

WIRE_DTYPES = ("fp32", "fp16", "int8")


def row_bytes(dim: int, dtype: str) -> int:
    """Bytes one row of ``dim`` values takes on the wire."""
    return {"fp32": 4 * dim, "fp16": 2 * dim, "int8": dim + 4}[dtype]


def encode_rows(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """(rows, dim) float32 -> flat uint8 of rows * row_bytes(dim, dtype)."""
    x = x.contiguous()
    if dtype == "fp32":
        return x.view(torch.uint8).reshape(-1)
    if dtype == "fp16":
        return x.half().view(torch.uint8).reshape(-1)
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127.0
    q = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)
    return torch.cat([q.view(torch.uint8).reshape(-1), scale.float().contiguous().view(torch.uint8).reshape(-1)])


def decode_rows(buf: torch.Tensor, rows: int, dim: int, dtype: str) -> torch.Tensor:
    """Inverse of ``encode_rows`` (of its first rows * row_bytes bytes): (rows, dim) float32."""
    need = rows * row_bytes(dim, dtype)
    buf = buf.reshape(-1)[:need].contiguous()
    if dtype == "fp32":
        return buf.view(torch.float32).reshape(rows, dim).clone()
    if dtype == "fp16":
        return buf.view(torch.float16).reshape(rows, dim).float()
    q = buf[: rows * dim].view(torch.int8).reshape(rows, dim).float()
    scale = buf[rows * dim:].clone().view(torch.float32).reshape(rows, 1)  # clone: a 4-aligned storage
    return q * scale


def row_ranges(rows: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous, as even as possible [start, end) row ranges (first ranges one longer)."""
    base, extra = divmod(rows, parts)
    out, start = [], 0
    for r in range(parts):
        size = base + (1 if r < extra else 0)
        out.append((start, start + size))
        start += size
    return out
