"""Network backends, one file each; ``BACKENDS`` maps ``network=<name>`` to its class (see ``base.py``)."""

import importlib
import pkgutil

from harness.network.base import BACKENDS, Backend, NetworkOptions, Result, register

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("base", "shaping", "host_state"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["BACKENDS", "Backend", "NetworkOptions", "Result", "register"]
