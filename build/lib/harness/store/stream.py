"""Request streams (``stream_s``): how many requests a point serves in a fixed time, and the per-request side table.

Every rank reports when each request started (real seconds after the stream began, ``request_start_s``) and how
long it took (``latency_s``); request i ends when its slowest rank ends. A request is *served* when it ends within
the stream's duration. The side table (``<results stem>.requests.parquet`` beside the store) holds one row per
request (``kind=request``: start, latency, the bottleneck rate in force when it started) and, for a trace, one per
trace step (``kind=trace``), keyed by the point's ``run_id``/``point_key``, in emulated time (real ÷ k).
"""

from __future__ import annotations

from pathlib import Path

SIDE_SUFFIX = ".requests"
SIDE_COLUMNS = ["run_id", "point_key", "model", "method", "devices", "tokens", "groups", "trace", "kind", "request",
                "time_s", "latency_ms", "mbps", "served", "mbps_per_host"]

SIDE_KEYS = ("run_id", "point_key", "kind")  # the columns that make a file a side table


def side_path(results_path: str | Path) -> Path:
    """``results/x.parquet`` -> ``results/x.requests.parquet`` (the same format as the store)."""
    p = Path(results_path)
    return p.with_name(p.stem + SIDE_SUFFIX + p.suffix)


def is_side_table(path: Path) -> bool:
    """Whether ``path`` is a side table (``side_path`` of some store), not a store of rows."""
    return path.stem.endswith(SIDE_SUFFIX)


def requests(reports: list[dict]) -> list[tuple[float, float]]:
    """(start, latency) of every request in real seconds: rank 0's start, the span to the slowest rank's end."""
    out = []
    for i, start in enumerate(reports[0]["request_start_s"]):
        end = max(r["request_start_s"][i] + r["latency_s"][i] for r in reports)
        out.append((start, end - start))
    return out


def served(reports: list[dict], real_s: float) -> int:
    """Requests that ended within the stream's ``real_s`` seconds."""
    return sum(1 for s, lat in requests(reports) if s + lat <= real_s)


def columns(reports: list[dict], spec) -> dict:
    """The row's stream columns: ``requests`` served in ``stream_s`` and the stream's length."""
    if not reports or "request_start_s" not in reports[0]:
        return {}
    return {"requests": served(reports, reports[0]["stream_real_s"]), "stream_s": spec.stream_s}


def side_rows(row: dict, reports: list[dict], spec, trace=None) -> list[dict]:
    """The side table's rows of one stream point (emulated time: real ÷ k)."""
    if not reports or "request_start_s" not in reports[0]:
        return []
    k = row.get("dilation") or 1.0
    base = {key: row.get(key) for key in ("run_id", "point_key", "model", "method", "devices", "tokens", "groups")}
    base["trace"] = trace.name if trace is not None else None
    out = []
    for i, (start, lat) in enumerate(requests(reports)):
        t = start / k
        rates = trace.at(t) if trace is not None else None
        out.append({**base, "kind": "request", "request": i, "time_s": t, "latency_ms": 1e3 * lat / k,
                    "mbps": min(rates) if rates else row.get("bandwidth_mbps"),
                    "served": start + lat <= reports[0]["stream_real_s"], "mbps_per_host": list(rates) if rates else None})
    if trace is not None:
        out += [{**base, **r, "request": None, "latency_ms": None, "served": None} for r in trace.rows(spec.stream_s)]
    return out
