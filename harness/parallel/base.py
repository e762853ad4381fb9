"""What every parallel method shares: the token partition, the method interface and the registry.

A method is a *plan* applied to an untouched model (built identically on every rank from the same seed). It may
replace modules inside the blocks; the model file never learns about ranks. Besides the plan, a method class
describes itself to the controller through class methods — its options (a dataclass, the schema of
``conf/method/<name>.yaml``), its device count, its checks, what it prepares before ranks start, and the row
columns it fills — so nothing outside ``harness/parallel/`` needs to know a method by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.comm.collectives import Comm
from harness.comm.wire import row_ranges
from harness.models import Transformer
from harness.options import opt

METHODS: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make a method available as ``method=<cls.name>`` (with ``conf/method/<name>.yaml``)."""
    METHODS[cls.name] = cls
    return cls


def partition(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) slices of ``n`` tokens over ``world`` ranks, as even as possible (first ranks +1)."""
    return row_ranges(n, world)


@dataclass
class Output:
    """What one rank produces for one inference.

    ``logits`` is None on ranks that hold no output (e.g. GPT2 ranks without the last token). ``positions`` names
    the global output positions the rows of ``logits`` correspond to (GPT2: token positions; ViT: None, logits are
    the class prediction).
    """

    logits: torch.Tensor | None
    positions: torch.Tensor | None = None


@dataclass
class MethodOptions:
    """Options every method has. A method with knobs subclasses this (see ``parallel/astra.py``)."""

    name: str = opt("single", "the method (a file in harness/parallel/, a config in conf/method/)")


class Method:
    """Base class. ``forward(inputs, all_positions)`` runs one inference on this rank.

    ``inputs`` is the whole batch (identical on every rank, as if each device already held its own share — the
    input scatter is not part of the measured inference). For GPT2, ``all_positions=False`` computes only the
    next-token logits (prefill latency); ``True`` computes logits at every local position (verification).
    """

    name = "base"
    title = "base"  # how reports and figures name the method (the paper's name where it has one)
    Options: type = MethodOptions
    communicates = True  # False: runs on one device, so bandwidth, topology and devices= do not matter
    is_baseline = False  # the single-device run speedups are measured against
    is_proposed = False  # the method this project studies: reports set it against the fastest of the others
    overlaps = False  # starts collectives and waits for them later, computing meanwhile (``comm_hidden_ms``)
    uniform_blocks = True  # every block runs the same code: a profile of two blocks stands for any depth

    def __init__(self, model: Transformer, comm: Comm, opts: dict | None = None):
        self.model = model
        self.cfg = model.cfg
        self.comm = comm
        self.opts = dict(opts or {})

    # -- the controller's side (class methods: no model, no ranks) ----------------------------------------------
    @classmethod
    def devices(cls, requested: int) -> int:
        """How many ranks this method runs on when ``devices=requested``."""
        return requested

    @classmethod
    def check(cls, spec) -> None:
        """Refuse (ConfigError, one line) a spec this method cannot run, before anything starts."""

    @classmethod
    def prepare(cls, spec, log):
        """What must exist before ranks start (files the ranks read); returns the spec to run. ``log(msg)`` reports
        long steps."""
        return spec

    @classmethod
    def prepare_shapes(cls, spec, workdir: Path):
        """Like ``prepare``, for counting work (``harness.rank.work``): only the shapes of what the ranks read
        matter, so files are made of the right shapes without fitting anything. Default: ``prepare``."""
        return cls.prepare(spec, lambda msg: None)

    @classmethod
    def columns(cls, spec) -> dict:
        """Row columns this method fills besides the common ones (e.g. ASTRA's groups, codebook_size, vq)."""
        return {}

    @classmethod
    def identity(cls, spec) -> dict:
        """The options that change what a point measures."""
        return dataclasses.asdict(spec.method)

    @classmethod
    def traffic(cls, spec, rank: int) -> list[tuple[str, str, int]]:
        """The collectives rank ``rank`` issues in one inference of ``spec``, as (op, tag, payload bytes), exactly as
        its ``Comm`` records them — derived from shapes, without running anything (``network.compute=fitted``
        charges these; tests hold every method's prediction to its recorded traffic)."""
        raise NotImplementedError(f"method {cls.name} does not predict its traffic")

    @classmethod
    def paper_bits(cls, knobs: dict, devices: int, tokens: int, layers: int, hidden: int) -> float:
        """Bits one device sends per inference as the paper's simulator charges this method (its latency model: one
        send of the device's own share per exchange, fp32); ``knobs`` holds the method's options the paper varies
        (e.g. groups, retained). The paper's accounting, independent of ``traffic`` — reports compare the two."""
        raise NotImplementedError(f"the paper does not evaluate method {cls.name}")

    @classmethod
    def reference_model(cls, model: Transformer, spec):
        """The model whose plain single-device forward this method's output must equal (``verify``): the model
        itself, or, for a method that changes the architecture (block parallelism), the changed model built from
        it. Called before ``plan``, on the untouched model."""
        return model

    @classmethod
    def plan(cls, model: Transformer, comm: Comm, spec) -> "Method":
        """This rank's plan for ``spec`` (in the worker)."""
        opts = dataclasses.asdict(spec.method)
        if spec.shares:
            opts["shares"] = list(spec.shares)
        return cls(model, comm, opts)

    # -- the rank's side ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, all_positions: bool = False) -> Output:
        raise NotImplementedError

    def reference_slice(self, ref: torch.Tensor, out: Output) -> torch.Tensor:
        """The part of the single-device output ``ref`` that ``out`` must equal."""
        if out.positions is None:
            return ref
        return ref[:, out.positions]


def sequence_length(spec) -> int:
    """Tokens the blocks see: the content tokens plus ViT's class token."""
    return spec.tokens + (1 if spec.model.kind == "vit" else 0)


def traffic_of(spec, records: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Payloads as a ``Comm`` of ``spec``'s world records them (nothing is sent on one device)."""
    if spec.devices > 1:
        return records
    return [(op, tag, 0) for op, tag, _ in records]


def single_device_output(model: Transformer, inputs: torch.Tensor, all_positions: bool) -> Output:
    """The whole model on one device (used by ``single`` and ``tp``, whose ranks all see the full sequence)."""
    if model.cfg.decoder:
        t = inputs.shape[1]
        logits = model(inputs, all_positions=all_positions)
        pos = torch.arange(t) if all_positions else torch.tensor([t - 1])
        return Output(logits, pos)
    return Output(model(inputs))
