"""Parallel methods, one file each. ``METHODS`` maps the config name to the plan class."""

from .astra import Astra
from .base import Method, Output, partition
from .single import Single
from .sp import SequenceParallel
from .tp import TensorParallel

METHODS: dict[str, type[Method]] = {
    "single": Single,
    "tp": TensorParallel,
    "sp": SequenceParallel,
    "astra": Astra,
}

__all__ = ["METHODS", "Method", "Output", "partition", "Astra", "Single", "SequenceParallel", "TensorParallel"]
