"""``single``: the whole model on one device; the baseline every speedup is measured against."""

from __future__ import annotations

import torch

from .base import Method, Output, single_device_output


class Single(Method):
    name = "single"

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, all_positions: bool = False) -> Output:
        return single_device_output(self.model, inputs, all_positions)
