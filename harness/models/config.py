"""The one model config of both families (ViT and GPT2): plain data, no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ModelConfig:
    """One config for every family. ``kind`` is ``"vit"``, ``"gpt2"`` or ``"llama"`` (the Llama family: RMSNorm,
    rotary positions, grouped-query attention, SwiGLU, no biases — Llama 2/3, Qwen2-style without q/k/v biases,
    Mistral without sliding windows)."""

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
    # Llama: key/value heads (grouped-query attention; None = heads), the MLP's inner width (None = mlp_ratio x
    # hidden), the rotary base, the Llama 3 frequency rescaling (HF's rope_scaling with rope_type "llama3", or
    # None), and whether the LM head is the token embedding
    kv_heads: int | None = None
    mlp_hidden: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_embeddings: bool = True
    qkv_bias: bool = False  # Llama family: biases on q/k/v (Qwen2), never on the output or the MLP
    # post-training weight quantization of the block linears (harness/ptq.py): 32 (none), 8 or 4 bits; the group
    # size (input columns per scale) defaults to one scale per row at 8 bits and 64 columns at 4 bits
    weight_bits: int = 32
    weight_group: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def inner(self) -> int:
        """The MLP's inner width (SwiGLU: of each of its gate and up projections)."""
        return self.mlp_hidden or self.mlp_ratio * self.hidden

    @property
    def decoder(self) -> bool:
        """Token ids in, next-token logits out (GPT2 and Llama)."""
        return self.kind in ("gpt2", "llama")

    @property
    def prefix_tokens(self) -> int:
        """Tokens prepended to the content tokens (the ViT class token)."""
        return 1 if self.kind == "vit" else 0

    @property
    def causal(self) -> bool:
        return self.decoder

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size * self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)
