"""``astra-plot``: tables and speedup plots from the results store.

    astra-plot results/results.parquet --out results/plots

Prints a markdown table (one row per point, latest run of each) and writes PNG and PDF figures per scene (model,
tokens, network; ``scene_figures`` builds them without saving): ``speedup_vs_bandwidth`` (log-log, one panel per
device count; only for shaped networks), ``speedup_vs_devices`` (one panel per bandwidth), both with 95 % interval
bars and the 1x line; ``latency_breakdown`` (compute and communication as shares of each point's latency, linear,
the absolute times printed) and ``bytes_per_method`` (payload per device, binary units). Colours, markers and tick
labels come from ``harness.style``: one colour per method in every figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.style import (
    ONE_X,
    bytes_axis,
    human_bytes,
    log_axis,
    method_color,
    plain,
    plain_log_axis,
    speedup_axis,
    variant_styles,
)
from harness.store.provenance import describe, stamp
from harness.store.results import _read, load
from harness.store.stream import is_side_table, side_path

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
        ax.scatter(bad[x], bad["speedup"], marker="x", s=90, color="black", zorder=5,
                   label="fidelity check failed (see table)")


def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=130)
    return paths


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
    if "device_compute" in df.columns and (df["device_compute"] == "replay").any():
        parts.append("replayed devices")
    # the regime: how fast the single device is decides what a link's rate means for the methods
    base = (df["timing_key"] == df["baseline_key"]) if {"timing_key", "baseline_key"} <= set(df.columns) \
        else (df["devices"] == 1)  # the single-device baselines are their own baselines
    single = df[base & (df["status"] == "ok")]
    ms = pd.to_numeric(single.get("latency_ms"), errors="coerce").dropna() if len(single) else pd.Series([], dtype=float)
    if len(ms):
        lo, hi = (f"{v:.0f}" if v >= 100 else f"{v:.3g}" for v in (ms.min(), ms.max()))
        parts.append(f"single {lo} ms" if lo == hi else f"single {lo}–{hi} ms")
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
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[1, 2.2],
                                          layout="constrained")
        steps = side[(side["kind"] == "trace") & side["run_id"].isin(part["run_id"])]
        if not steps.empty:
            first = steps[steps["run_id"] == steps["run_id"].iloc[0]].sort_values("time_s")
            end = float(part["stream_s"].max())
            top.step([*first["time_s"], end], [*first["mbps"], first["mbps"].iloc[-1]], where="post", color="k")
        top.set_ylabel("link Mbit/s")
        top.set_title(f"request stream, {scene_title(part, str(trace if trace != 'fixed' else 'fixed links'))}",
                      fontsize=9)
        styles = _styles(part)
        for _, r in part.sort_values("label").iterrows():
            req = side[(side["kind"] == "request") & (side["run_id"] == r["run_id"])].sort_values("time_s")
            bottom.plot(req["time_s"], req["latency_ms"] / 1e3, ms=3, color=method_color(r["method"]),
                        gid=r["method"], label=f"{r['label']}: {int(r['requests'])} served in {r['stream_s']:g} s",
                        **styles[r["label"]])
        bottom.set_yscale("log")
        log_axis(bottom.yaxis)
        bottom.set_xlabel("request start, emulated s")
        bottom.set_ylabel("request latency, s")
        bottom.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the data, not on it
        written += _save(fig, out, "stream" if len(groups) == 1 else f"stream_{n + 1}")
        plt.close(fig)
    return written


def _styles(df: pd.DataFrame) -> dict[str, dict]:
    """Marker and line style of every label: variants of a method differ in them, never in colour."""
    out: dict[str, dict] = {}
    for _, g in df.groupby("method"):
        out.update(variant_styles(g["label"].unique()))
    return out


def speedup_bars(g: pd.DataFrame):
    """Error bars of the speedups: the rows' 95 % intervals (``results.with_speedup``); None without any."""
    if "speedup_ci_low" not in g.columns or g["speedup_ci_low"].isna().all():
        return None
    low = pd.to_numeric(g["speedup_ci_low"], errors="coerce")
    high = pd.to_numeric(g["speedup_ci_high"], errors="coerce")
    return [(g["speedup"] - low).clip(lower=0).to_numpy(), (high - g["speedup"]).clip(lower=0).to_numpy()]


def shared_legend(fig, axes, handles=()):
    """One legend for all panels, below them (every label once, in the order first drawn; ``handles`` last)."""
    entries: dict = {}
    for h in [h for ax in axes for h in ax.get_legend_handles_labels()[0]] + list(handles):
        entries.setdefault(h.get_label(), h)
    ncols = max(1, min(len(entries), int(fig.get_figwidth() // 2)))  # about 2 inches a column: no wider than the figure
    return fig.legend(entries.values(), entries.keys(), loc="outside lower center", fontsize="small", ncols=ncols)


def speedup_figure(df: pd.DataFrame, x: str, panel: str, title: str, plt, one_x: str | None = None):
    """The speedup against ``x``, one panel per value of ``panel`` (NaN: the unshaped network), one line per label:
    the method's colour, the variant's marker, 95 % interval bars where the rows have them, the 1x line."""
    keys = df[panel].fillna(-1)
    panels = sorted(keys.unique())
    styles = _styles(df)
    fig = plt.figure(figsize=(3.6 * len(panels) + 1.4, 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True, sharex=True)[0]
    drew_bars = False
    for ax, p in zip(axes, panels):
        part = df[keys == p]
        for (method, lab), g in part.groupby(["method", "label"]):
            g = g.sort_values(x)
            color = method_color(method)
            ax.plot(g[x], g["speedup"], color=color, ms=5, label=lab, gid=method, **styles[lab])
            bars = speedup_bars(g)
            if bars is not None:
                drew_bars = True
                ax.errorbar(g[x], g["speedup"], yerr=bars, fmt="none", ecolor=color, elinewidth=1, capsize=2.5)
        mark_unfaithful(ax, part, x)
        ax.axhline(1.0, **{**ONE_X, **({"label": one_x} if one_x else {})})
        ax.set_yscale("log")
        speedup_axis(ax.yaxis)
        if x == "bandwidth_mbps":
            ax.set_xscale("log")
            plain_log_axis(ax.xaxis, df[x])
            ax.set_xlabel("bandwidth (Mbit/s)")
        else:
            ax.set_xticks(sorted(df[x].unique()))
            ax.set_xlabel(x)
        ax.grid(True, which="major", alpha=0.3)
        if panel == "devices":
            ax.set_title(f"{int(p)} devices", fontsize="medium")
        else:
            ax.set_title("unshaped network" if p < 0 else f"{plain(p)} Mbit/s", fontsize="medium")
    axes[0].set_ylabel("speedup over single device" + ("\n(bars: 95 % CI, from both latencies' CIs)"
                                                       if drew_bars else ""))
    shared_legend(fig, axes)
    fig.suptitle(title, fontsize="medium")
    return fig


def over_best_figure(shaped: pd.DataFrame, title: str, plt):
    """The proposed method's speedup over the fastest other method (single device included) at each bandwidth,
    one panel per device count; None without points of it on a shaped network."""
    from harness.parallel import METHODS
    from harness.report.compare import over_best_baseline

    best = over_best_baseline(shaped)
    if best.empty:
        return None
    name = next(n for n, cls in METHODS.items() if cls.is_proposed)
    best = best.assign(method=name, speedup=best["over_best"])
    fig = speedup_figure(best, "bandwidth_mbps", "devices", title, plt, one_x="1× = as fast as the fastest other")
    fig.axes[0].set_ylabel(f"{METHODS[name].title} over the fastest other method\n(1× = as fast; single device "
                           "included)")
    return fig


def _ms(v: float) -> str:
    return f"{v / 1e3:.3g} s" if v >= 1000 else f"{v:.3g} ms"


def breakdown_figure(done: pd.DataFrame, title: str, plt):
    """Each point's latency split into compute and communication as shares of its end-to-end latency (linear),
    the absolute latencies printed on the right; compute solid, communication hatched, in the method's colour."""
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    rows = done.assign(_bw=done["bandwidth_mbps"].fillna(np.inf)).sort_values(["_bw", "devices", "method", "label"])
    compute = pd.to_numeric(rows["compute_ms"], errors="coerce").to_numpy(dtype=float)
    comm = pd.to_numeric(rows["comm_ms"], errors="coerce").fillna(0).to_numpy(dtype=float)
    total = compute + comm
    colors = [method_color(m) for m in rows["method"]]
    light = [to_rgba(c, 0.3) for c in colors]
    names = [f"{r.label}, N={r.devices}" + (f", {plain(r.bandwidth_mbps)} Mbit/s"
                                            if pd.notna(r.bandwidth_mbps) and _communicates(r.method) else "")
             for r in rows.itertuples()]
    fig = plt.figure(figsize=(8.5, 1.4 + 0.3 * len(rows)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))
    solid = ax.barh(y, 100 * compute / total, color=colors, height=0.7)
    for bar, method in zip(solid, rows["method"]):
        bar.set_gid(method)
    ax.barh(y, 100 * comm / total, left=100 * compute / total, color=light, edgecolor=colors, hatch="////",
            linewidth=0, height=0.7)
    ax.set_yticks(y, labels=names, fontsize="small")
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of end-to-end latency (%, linear)")
    right = ax.secondary_yaxis("right")
    right.set_yticks(y, labels=[f"{_ms(t)} = {_ms(c)} + {_ms(m)}" for t, c, m in zip(total, compute, comm)],
                     fontsize="small")
    right.tick_params(length=0)
    right.set_ylabel("latency = compute + communication")
    grey = "#7F7F7F"
    fig.legend(handles=[Patch(color=grey, label="compute"),
                        Patch(facecolor=to_rgba(grey, 0.3), edgecolor=grey, hatch="////", lw=0,
                              label="communication")],
               loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(title, fontsize="medium")
    return fig


def bytes_figure(sent: pd.DataFrame, title: str, plt):
    """Bytes one device hands to the network per inference, one bar per method variant and device count."""
    per = sent.groupby(["devices", "method", "label"], as_index=False)["payload_bytes"].max()
    fig = plt.figure(figsize=(7, 1.2 + 0.3 * len(per)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(per))
    bars = ax.barh(y, per["payload_bytes"], color=[method_color(m) for m in per["method"]], height=0.7)
    for bar, method in zip(bars, per["method"]):
        bar.set_gid(method)
    ax.bar_label(bars, labels=[human_bytes(b) for b in per["payload_bytes"]], padding=3, fontsize="small")
    ax.set_yticks(y, labels=[f"{r.label}, N={r.devices}" for r in per.itertuples()], fontsize="small")
    ax.set_ylim(len(per) - 0.5, -0.5)
    ax.set_xscale("log")
    ax.set_xlim(per["payload_bytes"].min() / 4, per["payload_bytes"].max() * 12)  # room for the printed sizes
    bytes_axis(ax.xaxis)
    ax.set_xlabel("payload per device per inference (log)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title, fontsize="medium")
    return fig


def _communicates(method: str) -> bool:
    from harness.parallel import METHODS

    return METHODS[method].communicates if method in METHODS else True


def scene_figures(df: pd.DataFrame, title: str, plt, note=None) -> dict:
    """The figures of one scene (model, tokens, network), by file stem; a figure without data is left out."""
    note = note or (lambda msg: None)
    done = df[df["status"] == "ok"]
    ok = done[done["speedup"].notna()]
    figs = {}
    if {"timing_key", "baseline_key"} <= set(ok.columns) and ok["baseline_key"].notna().all():
        multi = ok[ok["timing_key"] != ok["baseline_key"]]  # every point but the single-device baselines
    else:  # rows from before baseline keys existed
        multi = ok[ok["devices"] > 1]
    if ok.empty and not done.empty:
        note(f"{title}: no single-device baseline among these rows, so no speedup plots (run method=single at the "
             "same model, tokens, network and device); drawing the latency breakdown and bytes only")
    shaped = multi[multi["bandwidth_mbps"].notna()]
    if not shaped.empty:
        figs["speedup_vs_bandwidth"] = speedup_figure(shaped, "bandwidth_mbps", "devices", title, plt)
    if multi.loc[multi["devices"] > 1, "devices"].nunique() > 1:  # one device count is not a curve
        figs["speedup_vs_devices"] = speedup_figure(multi, "devices", "bandwidth_mbps", title, plt)
    best = over_best_figure(shaped, title, plt)
    if best is not None:
        figs["over_best_baseline"] = best
    if not done.empty:
        figs["latency_breakdown"] = breakdown_figure(done, title, plt)
    sent = done[pd.to_numeric(done["payload_bytes"], errors="coerce") > 0]
    if not sent.empty:  # bytes one device hands to the network per inference: ASTRA's headline quantity
        figs["bytes_per_method"] = bytes_figure(sent, title, plt)
    return figs


def plot_scene(df: pd.DataFrame, out: Path, suffix: str, title: str, plt, note=None) -> list[Path]:
    written: list[Path] = []
    for stem, fig in scene_figures(df, title, plt, note).items():
        stamp(fig, df)
        written += _save(fig, out, stem + suffix)
        plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> None:
    from harness.report.compare import over_best_baseline

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
    best = over_best_baseline(pts)
    if not best.empty:
        print("\nOver the best baseline (the fastest other method at the same point; single device included):\n")
        print(best.to_markdown(index=False, floatfmt=".3g"))
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
