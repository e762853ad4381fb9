"""The one model config of both families (ViT and GPT2): plain data, no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ModelConfig:
    """One config for both families. ``kind`` is ``"vit"`` or ``"gpt2"``."""

    name: str = "custom"
    kind: str = "vit"
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    mlp_ratio: int = 4
    ln_eps: float = 1e-6
    # ViT
    patch_size: int = 16
    channels: int = 3
    num_classes: int = 1000
    # GPT2
    vocab_size: int = 50257
    max_positions: int = 1024
    # Number of content tokens the position table is built for (ViT: patches; GPT2: at least this many positions).
    tokens: int = 196
    weights: str | None = None
    # post-training weight quantization of the block linears (harness/ptq.py): 32 (none), 8 or 4 bits; the group
    # size (input columns per scale) defaults to one scale per row at 8 bits and 64 columns at 4 bits
    weight_bits: int = 32
    weight_group: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def prefix_tokens(self) -> int:
        """Tokens prepended to the content tokens (the ViT class token)."""
        return 1 if self.kind == "vit" else 0

    @property
    def causal(self) -> bool:
        return self.kind == "gpt2"

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size * self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)
