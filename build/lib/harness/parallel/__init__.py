"""Parallel methods, one file each; ``METHODS`` maps ``method=<name>`` to its class.

Every module in this package is imported here, and each registers its class with ``@register``: adding a method is
one file here plus ``conf/method/<name>.yaml``.
"""

import importlib
import pkgutil

from harness.parallel.base import METHODS, Method, MethodOptions, Output, partition, register

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["METHODS", "Method", "MethodOptions", "Output", "partition", "register"]
