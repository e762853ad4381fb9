"""``astra-plot``: tables and speedup plots from the results store.

    astra-plot results/results.parquet --out results/plots

Prints a markdown table (one row per point, latest run of each) and writes PNG and PDF figures:
``speedup_vs_bandwidth`` (log-x, one panel per device count, a line at 1x; only for shaped networks),
``speedup_vs_devices`` and ``latency_breakdown`` (stacked compute / communication per point).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .provenance import describe
from .results import _read, load
from .stream import is_side_table, side_path

POINT_KEYS = ["model", "tokens", "network", "bandwidth_mbps", "method", "groups", "codebook_size", "devices"]
TABLE_COLUMNS = ["model", "tokens", "network", "bandwidth_mbps", "label", "devices", "latency_ms", "compute_ms",
                 "comm_ms", "cpu_ms", "runqueue_wait_ms", "payload_bytes", "wire_bytes", "max_abs_err", "speedup",
                 "repeats", "requests", "dilation", "compute_inflation", "fidelity", "status"]
# Settings that never tell two points apart in a label: where results go, run-keeping, and the plots' own axes.
NOT_LABELS = ("results.", "cache_dir", "timeout_s", "fault.", "network.port", "network.reuse", "method.name",
              "network.name", "model.name", "tokens", "devices", "network.bandwidth_mbps",
              "device.dilation")  # k follows from the device count
SHORT = {"method.groups": "G", "method.codebook_size": "K"}


def _flat(node, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _settings(config) -> dict:
    import json

    try:
        flat = _flat(json.loads(config)) if isinstance(config, str) else {}
    except ValueError:
        flat = {}
    return {k: v for k, v in flat.items() if not k.startswith(NOT_LABELS)}


def add_labels(df: pd.DataFrame) -> pd.DataFrame:
    """``label`` per row: the method plus every setting in which rows of that method differ (so two different
    points never share a label); a method with a ``groups`` column (ASTRA) always shows G. Settings are the
    point's identity (``settings``: what the point measured), or its raw config for rows written before."""
    df = df.copy()
    empty = pd.Series([None] * len(df), index=df.index, dtype=object)
    config = df["config"] if "config" in df.columns else empty
    raw = df["settings"].where(df["settings"].notna(), config) if "settings" in df.columns else config
    settings = raw.map(_settings)
    labels = pd.Series("", index=df.index, dtype=object)
    for method, idx in df.groupby("method").groups.items():
        keys = sorted({k for i in idx for k in settings[i]})
        varying = [k for k in keys if len({repr(settings[i].get(k)) for i in idx}) > 1]
        for i in idx:
            parts = []
            if "groups" in df.columns and pd.notna(df.at[i, "groups"]) and "method.groups" not in varying:
                parts.append(f"G={int(df.at[i, 'groups'])}")
            for k in varying:
                name = SHORT.get(k, k.removeprefix("method.") if k.startswith("method.") else k)
                parts.append(f"{name}={settings[i].get(k)}")
            labels[i] = " ".join([str(method), *parts])
    df["label"] = labels
    return df


def latest_points(df: pd.DataFrame) -> pd.DataFrame:
    """The latest row of every distinct point (re-runs supersede older rows). A point is its ``point_key`` — every
    setting that changes what is measured; rows from before point keys existed fall back to the main columns."""
    df = df.copy()
    keys = [k for k in POINT_KEYS if k in df.columns]
    ident = df["point_key"].astype(object) if "point_key" in df.columns else pd.Series(None, index=df.index)
    fallback = df[keys].apply(lambda r: "|".join(map(str, r)), axis=1)
    df["_point"] = ident.where(ident.notna(), fallback)
    out = df.sort_values("timestamp", kind="stable").groupby("_point", sort=False).tail(1)
    return add_labels(out.drop(columns="_point")).sort_values([*keys, "label"])


def markdown_table(df: pd.DataFrame) -> str:
    cols = [c for c in TABLE_COLUMNS if c in df.columns]
    return df[cols].to_markdown(index=False, floatfmt=".4g")


def unfaithful(df: pd.DataFrame) -> pd.Series:
    """Rows whose fidelity check failed (``fidelity`` set and not ``ok``)."""
    if "fidelity" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["fidelity"].notna() & (df["fidelity"] != "ok")


def mark_unfaithful(ax, df: pd.DataFrame, x: str) -> None:
    """Cross out points whose fidelity check failed (their numbers depend on the host machine)."""
    bad = df[unfaithful(df)]
    if not bad.empty:
        ax.scatter(bad[x], bad["speedup"], marker="x", s=90, color="red", zorder=5,
                   label="fidelity check failed (see table)")


def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=130)
    return paths


def plain_log_ticks(axis, values) -> None:
    """Log axis ticked at the data's own values, printed as plain numbers (10, 100, not 10^1)."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    vals = sorted({float(v) for v in values if pd.notna(v) and v > 0})
    if vals:
        axis.set_major_locator(FixedLocator(vals))
    axis.set_minor_locator(NullLocator())
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    axis.set_major_formatter(fmt)


def scene_title(df: pd.DataFrame, head: str) -> str:
    """The scene plus what a reader needs to compare it: the codebook size(s) and the device budget."""
    parts = [head]
    if "codebook_size" in df.columns and df["codebook_size"].notna().any():
        parts.append("K=" + "/".join(str(int(k)) for k in sorted(df["codebook_size"].dropna().unique())))
    if "device" in df.columns and df["device"].notna().any():
        dev = "/".join(sorted(str(d) for d in df["device"].dropna().unique()))
        cores = df["cpu_per_device"].dropna().unique() if "cpu_per_device" in df.columns else []
        unit = "core" if list(cores) == [1.0] else "cores"
        parts.append(f"device {dev}" + (f" ({'/'.join(f'{c:g}' for c in sorted(cores))} {unit})" if len(cores) else ""))
    if "dilation" in df.columns:
        k = pd.to_numeric(df["dilation"], errors="coerce").dropna()
        if (k > 1).any():
            parts.append("dilated k=" + "/".join(f"{v:.3g}" for v in sorted(k.unique())))
    return ", ".join(parts)


def plot_all(df: pd.DataFrame, out: Path, note=None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    df = df[~is_stream(df)]
    scenes = list(df.groupby(["model", "tokens", "network"], dropna=False))
    for (model, tokens, network), part in scenes:
        suffix = "" if len(scenes) == 1 else f"_{model}_{tokens}_{network}"
        written += plot_scene(part, out, suffix, scene_title(part, f"{model}, {tokens} tokens, {network}"), plt,
                              note)
    return written


def is_stream(df: pd.DataFrame) -> pd.Series:
    """Rows of request-stream points (``stream_s``): plotted over time, not against a fixed bandwidth."""
    return df["stream_s"].notna() if "stream_s" in df.columns else pd.Series(False, index=df.index)


def plot_streams(rows: pd.DataFrame, side: pd.DataFrame, out: Path) -> list[Path]:
    """For every trace of the request-stream points: the link rate over time (top) and each method's request
    latencies at their start times (bottom), the legend giving the requests served (paper Fig. 11)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = rows[is_stream(rows) & (rows["status"] == "ok")]
    side = side[side["run_id"].isin(rows["run_id"])]
    written: list[Path] = []
    # one figure per stream setting; the single baseline (its link idle, so no trace of its own) joins its scene
    groups = list(rows.groupby(["model", "tokens", "stream_s"], dropna=False))
    for n, (_, part) in enumerate(groups):
        named = part["trace"].dropna() if "trace" in part.columns else pd.Series(dtype=object)
        trace = Path(str(named.iloc[0])).name if not named.empty else "fixed"
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[1, 2.2])
        steps = side[(side["kind"] == "trace") & side["run_id"].isin(part["run_id"])]
        if not steps.empty:
            first = steps[steps["run_id"] == steps["run_id"].iloc[0]].sort_values("time_s")
            end = float(part["stream_s"].max())
            top.step([*first["time_s"], end], [*first["mbps"], first["mbps"].iloc[-1]], where="post", color="k")
        top.set_ylabel("link Mbit/s")
        top.set_title(f"request stream, {scene_title(part, str(trace if trace != 'fixed' else 'fixed links'))}",
                      fontsize=9)
        for _, r in part.sort_values("label").iterrows():
            req = side[(side["kind"] == "request") & (side["run_id"] == r["run_id"])].sort_values("time_s")
            bottom.plot(req["time_s"], req["latency_ms"] / 1e3, marker="o", ms=3,
                        label=f"{r['label']}: {int(r['requests'])} served in {r['stream_s']:g} s")
        bottom.set_yscale("log")
        from matplotlib.ticker import FuncFormatter

        bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        bottom.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
        bottom.set_xlabel("request start, emulated s")
        bottom.set_ylabel("request latency, s")
        bottom.legend(fontsize=8)
        written += _save(fig, out, "stream" if len(groups) == 1 else f"stream_{n + 1}")
        plt.close(fig)
    return written


def speedup_spread(g: pd.DataFrame):
    """Down-error of each speedup: its value at the 90th-percentile latency (repeats > 1), else none."""
    if "latency_p90_ms" not in g.columns or not (pd.to_numeric(g.get("repeats"), errors="coerce") > 1).any():
        return None
    low = g["single_latency_ms"] / pd.to_numeric(g["latency_p90_ms"], errors="coerce")
    down = (g["speedup"] - low).clip(lower=0).fillna(0)
    return [down.to_numpy(), [0] * len(g)]


def plot_scene(df: pd.DataFrame, out: Path, suffix: str, title: str, plt, note=None) -> list[Path]:
    note = note or (lambda msg: None)
    done = df[df["status"] == "ok"]
    ok = done[done["speedup"].notna()]
    written: list[Path] = []
    if {"point_key", "baseline_key"} <= set(ok.columns) and ok["baseline_key"].notna().all():
        multi = ok[ok["point_key"] != ok["baseline_key"]]  # every point but the single-device baselines
    else:  # rows from before baseline keys existed
        multi = ok[ok["devices"] > 1]
    if ok.empty and not done.empty:
        note(f"{title}: no single-device baseline among these rows, so no speedup plots (run method=single at the "
             "same model, tokens, network and device); drawing the latency breakdown and bytes only")

    shaped = multi[multi["bandwidth_mbps"].notna()]
    if not shaped.empty:
        devs = sorted(shaped["devices"].unique())
        fig, axes = plt.subplots(1, len(devs), figsize=(5 * len(devs), 4), squeeze=False, sharey=True)
        for ax, n in zip(axes[0], devs):
            for lab, g in shaped[shaped["devices"] == n].groupby("label"):
                g = g.sort_values("bandwidth_mbps")
                ax.errorbar(g["bandwidth_mbps"], g["speedup"], yerr=speedup_spread(g), marker="o", capsize=3,
                            label=lab)
            mark_unfaithful(ax, shaped[shaped["devices"] == n], "bandwidth_mbps")
            ax.axhline(1.0, color="red", lw=1, ls="--")
            ax.set_xscale("log")
            ax.set_yscale("log")
            plain_log_ticks(ax.xaxis, shaped["bandwidth_mbps"])
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{n} devices")
            ax.set_xlabel("bandwidth (Mbps)")
        axes[0][0].set_ylabel("speedup over single device (log; bars: p90 latency)")
        axes[0][-1].legend(fontsize="small")
        fig.suptitle(title, fontsize="medium")
        written += _save(fig, out, "speedup_vs_bandwidth" + suffix)
        plt.close(fig)

    if multi.loc[multi["devices"] > 1, "devices"].nunique() > 1:  # one device count is not a curve
        fig, ax = plt.subplots(figsize=(6, 4))
        for (lab, bw), g in multi.groupby(["label", multi["bandwidth_mbps"].fillna(-1)]):
            g = g.sort_values("devices")
            name = lab if bw < 0 else f"{lab} @ {bw:g} Mbps"
            ax.errorbar(g["devices"], g["speedup"], yerr=speedup_spread(g), marker="o", capsize=3, label=name)
        mark_unfaithful(ax, multi, "devices")
        ax.axhline(1.0, color="red", lw=1, ls="--")
        ax.set_yscale("log")
        ax.set_xticks(sorted(multi["devices"].unique()))
        ax.set_xlabel("devices")
        ax.set_ylabel("speedup over single device (log)")
        ax.legend(fontsize="small")
        ax.set_title(title, fontsize="medium")
        written += _save(fig, out, "speedup_vs_devices" + suffix)
        plt.close(fig)

    if not done.empty:
        names = [
            f"{r.label} N={r.devices}" + (f" {r.bandwidth_mbps:g}M" if pd.notna(r.bandwidth_mbps) else "")
            for r in done.itertuples()
        ]
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(done)), 4))
        ax.bar(names, done["compute_ms"], label="compute")
        ax.bar(names, done["comm_ms"], bottom=done["compute_ms"], label="communication")
        ax.set_yscale("log")  # a comm-bound baseline 100x slower must not flatten the others
        ax.set_ylabel("latency (ms, log)")
        ax.tick_params(axis="x", rotation=60)
        ax.legend()
        ax.set_title(title, fontsize="medium")
        written += _save(fig, out, "latency_breakdown" + suffix)
        plt.close(fig)

    sent = done[pd.to_numeric(done["payload_bytes"], errors="coerce") > 0]
    if not sent.empty:  # bytes one device hands to the network per inference: ASTRA's headline quantity
        per = sent.groupby(["label", "devices"], as_index=False)["payload_bytes"].max()
        names = [f"{r.label} N={r.devices}" for r in per.itertuples()]
        fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(per)), 4))
        bars = ax.bar(names, per["payload_bytes"], color="C2")
        ax.bar_label(bars, labels=[_human_bytes(b) for b in per["payload_bytes"]], fontsize="x-small")
        ax.set_yscale("log")
        ax.set_ylabel("payload per device per inference (bytes, log)")
        ax.tick_params(axis="x", rotation=60)
        ax.set_title(title, fontsize="medium")
        written += _save(fig, out, "bytes_per_method" + suffix)
        plt.close(fig)
    return written


def _human_bytes(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:.3g} {unit}"
        b /= 1024
    return f"{b:.3g} GB"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="astra-plot", description="tables and speedup plots from astra-bench results")
    ap.add_argument("results", help="a results file (.parquet/.csv) or a directory of them")
    ap.add_argument("--out", default=None, help="where to write the figures (default: beside the results)")
    args = ap.parse_args(argv)
    try:
        df = load(args.results)
    except (FileNotFoundError, ValueError) as exc:
        print(f"astra-plot: error: {exc}", file=sys.stderr)
        sys.exit(2)
    pts = latest_points(df)
    print(markdown_table(pts))
    for line in describe(pts):
        print(f"astra-plot: {line}", file=sys.stderr)
    src = Path(args.results)
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent)
    written = plot_all(pts, out, note=lambda msg: print(f"astra-plot: {msg}", file=sys.stderr))
    sides = [side_path(src)] if not src.is_dir() else sorted(p for p in src.rglob("*") if is_side_table(p))
    sides = [p for p in sides if p.is_file()]
    if sides and is_stream(pts).any():
        written += plot_streams(pts, pd.concat([_read(p) for p in sides], ignore_index=True), out)
    for p in written:
        print(f"wrote {p}", file=sys.stderr)


if __name__ == "__main__":
    main()
