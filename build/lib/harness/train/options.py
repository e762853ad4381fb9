"""astra-train's ASTRA settings, defined once (a light module: the command line and --help read it before torch
is imported)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.options import opt


@dataclass
class VariantOptions:
    """The ``astra`` settings of astra-train (the main run; suites vary some of it), typed and ranged; their
    defaults are stored in Hydra's ConfigStore (``astra_train_base``), which ``conf/train.yaml`` extends."""

    groups: int = opt(1, "G: sub-vectors per token, each with its own codebook", lo=1)
    codebook_size: int = opt(256, "K (the paper uses 1024; 256 keeps the small-scale runs inside the time budget)",
                             lo=2, hi=65536)
    devices: int = opt(4, "N: the split the mask M simulates (the paper retrains per device count)", lo=1)
    noise_lambda: float = opt(1.0, "NAVQ noise scale (training only)", lo=0)
    noise_cov: str = opt("full", "full: per block and group, the full covariance of the group's sub-vector; diag: "
                         "its diagonal", choices=("full", "diag"))
    commitment_beta: float = opt(5e-4, "the VQ commitment loss weight", lo=0)
    dct: bool | None = opt(True, "ViT: distributed class tokens (one replica per device, mean-pooled); false: one "
                           "class token")
    split: str = opt("contiguous", "training split: contiguous (as the runtime) or random (random uneven "
                     "token-to-device maps)", choices=("contiguous", "random"))
    ema_decay: float = opt(0.99, "codebook EMA decay (also the decay of the noise statistics)", lo=0)


def register_configs() -> None:
    """Store the ``astra`` defaults in Hydra's ConfigStore (``astra_train_base``, listed first in train.yaml)."""
    from hydra.core.config_store import ConfigStore

    from harness.spec.schema import defaults

    ConfigStore.instance().store(name="astra_train_base", node={"astra": defaults(VariantOptions)},
                                 provider="astra-train")


register_configs()
