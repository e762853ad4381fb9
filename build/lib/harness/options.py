"""Typed option groups: a dataclass per group of knobs (a method's, a backend's, the device's ...) whose fields carry
their default, help text and allowed range. ``parse_options`` turns the composed config's plain values into an
instance, refusing with one line what does not fit: an unknown key (with a "did you mean"), a value of the wrong
type, a value out of range. The same metadata feeds ``--help``.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from harness.errors import ConfigError

_MISSING = dataclasses.MISSING


def opt(default: Any = _MISSING, help: str = "", *, lo: float | None = None, hi: float | None = None,
        above: float | None = None, choices: Iterable | None = None, kind: str | None = None) -> Any:
    """A dataclass field with its rules: ``lo``/``hi`` inclusive bounds, ``above`` an exclusive lower bound,
    ``choices`` the allowed values, ``kind`` a special parser ("bandwidth": a number or a list of numbers; "list": a value or a list, checked by the knob's own parser;
    "auto_bool": auto, true or false; "auto_number": auto or a number in the range)."""
    meta = {"help": help, "lo": lo, "hi": hi, "above": above, "choices": tuple(choices) if choices else None,
            "kind": kind}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``' (did you mean x?)'`` for the closest candidate, or ''. A candidate one edit (a typo: a letter added,
    dropped, changed or two swapped) from the whole word comes first (``modle`` -> ``model``); else the best match
    by the whole key, its last part, or that part's words, ties going to the closer whole key."""
    candidates = list(candidates)
    near = [c for c in candidates if one_edit(word, c)]
    if near:
        return f" (did you mean {sorted(near)[0]}?)"

    def score(cand: str) -> tuple[float, float]:
        tail = cand.rsplit(".", 1)[-1]
        wtail = word.rsplit(".", 1)[-1]
        forms = [(word, cand), (wtail, tail), *((wtail, part) for part in tail.split("_") if len(part) > 3)]
        return (max(difflib.SequenceMatcher(None, a, b).ratio() for a, b in forms),
                difflib.SequenceMatcher(None, word, cand).ratio())

    best = max(candidates, key=score, default=None)
    return f" (did you mean {best}?)" if best is not None and score(best)[0] >= 0.75 else ""


def one_edit(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with one letter added, dropped, changed, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if len(a) == len(b):
        return a[i + 1:] == b[i + 1:] or (a[i + 2:] == b[i + 2:] and a[i:i + 2] == b[i:i + 2][::-1])
    return a[i:] == b[i + 1:] if len(b) > len(a) else a[i + 1:] == b[i:]


def _describe_range(meta: dict) -> str:
    if meta["choices"]:
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    def num(v) -> str:
        return str(int(v)) if float(v).is_integer() else f"{v:g}"

    parts = []
    if meta["above"] is not None:
        parts.append(f"> {num(meta['above'])}")
    if meta["lo"] is not None:
        parts.append(f">= {num(meta['lo'])}")
    if meta["hi"] is not None:
        parts.append(f"<= {num(meta['hi'])}")
    return " and ".join(parts)


def _base_type(tp) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of an annotation like ``int | None``."""
    args = typing.get_args(tp)
    if args:
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else object), type(None) in args
    return tp, False


def convert(value: Any, tp, key: str, meta: dict) -> Any:
    """``value`` as the field's type, or a one-line ConfigError naming the key, the value and what is allowed."""
    base, nullable = _base_type(tp)
    rng = _describe_range(meta)
    want = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(base, "a value")
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{key} is missing: give {want}{' ' + rng if rng else ''}")
    if meta.get("kind") == "auto_bool":
        s = str(value).lower()
        if s not in ("auto", "true", "false"):
            raise ConfigError(f"{key}={value} is not valid: use auto, true or false")
        return s if s == "auto" else s == "true"
    if meta.get("kind") in ("bandwidth", "list"):
        return value  # parsed per device count (parse_bandwidths, or the knob's own parser)
    if meta.get("kind") == "auto_number":
        if str(value).lower() == "auto":
            return "auto"
        meta = {**meta, "kind": None}
        try:
            return convert(value, float, key, meta)
        except ConfigError:
            raise ConfigError(f"{key}={value} is not valid: use auto or a number {rng}") from None
    bad = ConfigError(f"{key}={value} is not {want}: use {want}{' ' + rng if rng else ''}")
    if base is bool:
        if isinstance(value, bool):
            out = value
        elif str(value).lower() in ("true", "false"):
            out = str(value).lower() == "true"
        else:
            raise bad
    elif base is int:
        if isinstance(value, bool):
            raise bad
        try:
            out = int(value) if isinstance(value, int) else int(str(value), 10)
        except ValueError:
            raise bad from None
    elif base is float:
        if isinstance(value, bool):
            raise bad
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if out != out or out in (float("inf"), float("-inf")):
            raise bad
    elif base is str:
        if isinstance(value, (dict, list)):
            raise bad
        out = str(value)
    else:
        out = value
    if meta["choices"] and out not in meta["choices"]:
        raise ConfigError(f"{key}={value} is unknown: use {rng}")
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        if (meta["lo"] is not None and out < meta["lo"]) or (meta["hi"] is not None and out > meta["hi"]) or \
                (meta["above"] is not None and out <= meta["above"]):
            raise ConfigError(f"{key}={value} is out of range: use a value {rng}")
    return out


def fields_of(cls) -> list[tuple[str, Any, dict, Any]]:
    """(name, type, metadata, default) of every field of an options dataclass."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else None)
        out.append((f.name, hints[f.name], dict(f.metadata or {"help": "", "lo": None, "hi": None, "above": None,
                                                               "choices": None, "kind": None}), default))
    return out


def parse_options(cls, values: Mapping, prefix: str, owner: str = "") -> Any:
    """An instance of the options dataclass ``cls`` from ``values``; unknown keys and bad values are refused.
    ``prefix`` names the group in messages (``method.``), ``owner`` what the options belong to (``method=tp``)."""
    known = {name: (tp, meta) for name, tp, meta, _ in fields_of(cls)}
    for k in values:
        if k not in known:
            where = f" of {owner}" if owner else ""
            raise ConfigError(f"{prefix}{k} is not an option{where}{did_you_mean(k, known)}: its options are "
                              f"{', '.join(known)}")
    kwargs = {k: convert(v, known[k][0], f"{prefix}{k}", known[k][1]) for k, v in values.items()}
    return cls(**kwargs)


def parse_bandwidths(value, n: int, max_mbps: float | None = None, why: str = "") -> list[float]:
    """``network.bandwidth_mbps`` as one Mbit/s value per device: a number (every device) or a list of n."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) not in (1, n):
        raise ConfigError(f"network.bandwidth_mbps lists {len(values)} values for {n} devices: give one or {n}")
    limit = f"(0, {max_mbps:g}] Mbit/s" if max_mbps else "> 0 Mbit/s"
    out = []
    for v in values:
        try:
            if isinstance(v, bool):
                raise ValueError
            f = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"network.bandwidth_mbps={v} is not a number: use a value {limit}") from None
        if not (0 < f < float("inf") and (max_mbps is None or f <= max_mbps)):
            raise ConfigError(f"network.bandwidth_mbps={v} is outside {limit}{why}: choose a value in that range")
        out.append(f)
    return out * n if len(out) == 1 else out


def bandwidth_columns(bw: list[float] | None, devices: int) -> dict:
    """Row columns for a point's bandwidth: the bottleneck (min) as ``bandwidth_mbps`` (a number, or None for one
    device or an unshaped network) and the per-device list as JSON when devices differ."""
    if devices <= 1 or not bw:
        return {"bandwidth_mbps": None, "bandwidth_per_device": None}
    import json

    return {"bandwidth_mbps": min(bw), "bandwidth_per_device": json.dumps(bw) if len(set(bw)) > 1 else None}


def as_dict(obj) -> dict:
    return dataclasses.asdict(obj)
