"""``single``: the whole model on one device; the baseline every speedup is measured against."""

from __future__ import annotations

import torch

from harness.parallel.base import Method, Output, register, single_device_output


@register
class Single(Method):
    name = "single"
    title = "single"
    communicates = False
    is_baseline = True

    @classmethod
    def devices(cls, requested: int) -> int:
        return 1  # whatever devices= says

    @classmethod
    def traffic(cls, spec, rank: int) -> list[tuple[str, str, int]]:
        return []

    @classmethod
    def paper_bits(cls, knobs, devices, tokens, layers, hidden) -> float:
        return 0.0

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, all_positions: bool = False) -> Output:
        return single_device_output(self.model, inputs, all_positions)
