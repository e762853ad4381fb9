"""The ground floor: the errors a user sees, the one stderr logger, and the one atomic-write helper.

Every user-facing failure is one line: ``ConfigError`` for bad input (exit 2, raised before anything runs or is
written), ``RunFailed`` for a run that went wrong (exit 1). Nothing here imports the rest of the harness.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path


class ConfigError(ValueError):
    """Bad input: the message is one line saying what is wrong and what to do (exit 2)."""


class RunFailed(RuntimeError):
    """A rank crashed, was killed, hung past the timeout, or wrote no report; a stage failed. One line (exit 1)."""


def log(prog: str, msg: str) -> None:
    """One ``[prog] msg`` line on stderr (the controllers' only chatter; stdout carries results)."""
    print(f"[{prog}] {msg}", file=sys.stderr, flush=True)


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[Path], None]) -> Path:
    """Write ``path`` all at once: to a temporary name beside it, then ``os.replace``. ``data`` is the content, or a
    function that writes a given path (e.g. ``lambda p: df.to_parquet(p)``). A failure leaves the old file as it was
    and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
