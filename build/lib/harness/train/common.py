"""What every stage of ``astra-train`` shares: the stage names, its two errors, its log line, configuration keys,
timestamps and the atomic JSON / safetensors writes (through ``harness.errors.atomic_write``)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from harness import errors
from harness.errors import ConfigError, RunFailed, atomic_write
from harness.parallel.astra import Astra

STAGES = ("base", "calibrate", "finetune", "evaluate", "report")


class TrainError(ConfigError):
    """Bad input: one line naming the problem and the fix (exit 2)."""


class TrainFailed(RunFailed):
    """A stage failed while running (non-finite loss, runtime check): one line (exit 1)."""


def log(msg: str) -> None:
    errors.log("astra-train", msg)


def config_key(obj) -> str:
    """A short hash of everything a stage's output depends on (a stage with the same key is reused)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


def write_safetensors(path: Path, tensors: dict, meta: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    metadata = {k: str(v) for k, v in (meta or {}).items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


# The accuracy store's ``method`` column: the full-precision model, or an ASTRA checkpoint (quantized exchange).
FULL_ROWS = "full"
ASTRA_ROWS = Astra.name
