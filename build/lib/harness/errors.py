"""The ground floor: the errors a user sees, the one stderr logger, and the one atomic-write helper.

Every user-facing failure is one line: ``ConfigError`` for bad input (exit 2, raised before anything runs or is
written), ``RunFailed`` for a run that went wrong (exit 1). Nothing here imports the rest of the harness.
"""

from __future__ import annotations

import os
import sys
import tempfile
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


def check_writable(folder: str | os.PathLike, name: str, shown=None) -> None:
    """``folder`` is, or can be made as, a directory we can write in: made (and removed again if it was new), and a
    file created in it; else one line naming the setting."""
    folder = Path(folder)
    made = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".astra-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name}={shown or folder}: cannot write in {folder} ({exc.strerror or exc}): pass a path "
                          "you can write to") from None
    finally:
        for p in made:  # deepest first: leave nothing behind for a point that may still be refused
            try:
                p.rmdir()
            except OSError:
                pass
