"""One look for every figure the project draws (``astra-plot``, ``astra-report``, the notebooks).

Each method has one colour everywhere, fixed by the method registry: the baseline is grey, the other registered
methods take a colour-blind-safe palette (Okabe & Ito) in name order, and a name outside the registry a colour of
its own derived from the name. Variants of a method (G, K, Nb ...) differ by marker and line style, never colour.
The 1× line is black and dotted, a colour no method has. Log axes are labelled in plain numbers (``0.1×``,
``100``, ``32 KiB``), never powers of ten.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

PALETTE = ["#0072b2", "#d55e00", "#009e73", "#e69f00", "#cc79a7", "#56b4e9",  # Okabe-Ito, yellow left out
           "#882255", "#44aa99"]  # then two of Tol's (more methods than Okabe-Ito has colours)
SPARE = ["#117733", "#aa4499", "#999933", "#332288", "#ddcc77", "#661100"]  # Tol's: names outside the registry
BASELINE_COLOR = "#7f7f7f"
ONE_X = {"color": "black", "lw": 1.0, "ls": ":", "label": "1× = single device"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">"]
LINESTYLES = ["-", "--", "-.", ":"]


def method_colors() -> dict[str, str]:
    """Colour of every registered method, by its name and by its title (``astra`` and ``ASTRA``)."""
    from harness.parallel import METHODS

    others = sorted(n for n, cls in METHODS.items() if not cls.is_baseline)
    colors = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(others)}
    colors.update({n: BASELINE_COLOR for n, cls in METHODS.items() if cls.is_baseline})
    colors.update({METHODS[n].title: c for n, c in list(colors.items())})
    return colors


def method_color(name: str) -> str:
    """The colour of the method ``name`` (its registry name or title); a stable colour of its own for others."""
    colors = method_colors()
    return colors.get(name) or SPARE[zlib.crc32(str(name).encode()) % len(SPARE)]


def method_name(name: str) -> str:
    """The registry name of a method named by its title (``BP+AG`` -> ``bp_ag``); other names as they are."""
    from harness.parallel import METHODS

    return next((n for n, cls in METHODS.items() if name in (n, cls.title)), name)


def variant_styles(labels) -> dict[str, dict]:
    """Marker and line style of each of one method's ``labels`` (its variants), in sorted order."""
    return {lab: {"marker": MARKERS[i % len(MARKERS)], "ls": LINESTYLES[i % len(LINESTYLES)]}
            for i, lab in enumerate(sorted(labels, key=_natural))}


def _natural(label: str):
    """Sort key that puts G=2 before G=16."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(label))]


def plain(v: float) -> str:
    """A number as written by hand: 0.05, 2, 1000 (no exponent, no trailing zeros)."""
    return np.format_float_positional(float(v), precision=3, unique=True, fractional=False, trim="-")


def human_bytes(b: float) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 72.1 MiB."""
    for unit in ("B", "KiB", "MiB"):
        if abs(b) < 1024:
            return f"{b:.3g} {unit}"
        b /= 1024
    return f"{b:.3g} GiB"


def log_axis(axis, unit: str = "") -> None:
    """Log axis ticked at 1, 2 and 5 per decade, labelled as plain numbers (0.01, 0.1, 2) followed by ``unit``."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{plain(v)}{unit}"))


def speedup_axis(axis) -> None:
    """Log speedup axis: 0.1×, 0.2×, 0.5×, 1×, 2× ..."""
    log_axis(axis, "×")


def plain_log_axis(axis, values) -> None:
    """Log axis ticked at the data's own values, labelled as plain numbers (10, 100, not 10^1)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    vals = sorted({float(v) for v in values if v is not None and np.isfinite(v) and v > 0})
    if vals:
        axis.set_major_locator(FixedLocator(vals))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: plain(v)))


def bytes_axis(axis) -> None:
    """Log byte axis ticked at powers of 32 (1 B, 32 B, 1 KiB, 32 KiB, 1 MiB ...), labelled in binary units."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    axis.set_major_locator(LogLocator(base=1024, subs=(1, 32)))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
