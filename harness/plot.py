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

from .results import load

POINT_KEYS = ["model", "tokens", "network", "bandwidth_mbps", "method", "groups", "codebook_size", "devices"]
TABLE_COLUMNS = ["model", "tokens", "network", "bandwidth_mbps", "label", "devices", "latency_ms", "compute_ms",
                 "comm_ms", "cpu_ms", "runqueue_wait_ms", "payload_bytes", "wire_bytes", "max_abs_err", "speedup",
                 "repeats", "dilation", "compute_inflation", "fidelity", "status"]
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


def plot_all(df: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    scenes = list(df.groupby(["model", "tokens", "network"], dropna=False))
    for (model, tokens, network), part in scenes:
        suffix = "" if len(scenes) == 1 else f"_{model}_{tokens}_{network}"
        written += plot_scene(part, out, suffix, f"{model}, {tokens} tokens, {network}", plt)
    return written


def plot_scene(df: pd.DataFrame, out: Path, suffix: str, title: str, plt) -> list[Path]:
    ok = df[(df["status"] == "ok") & df["speedup"].notna()]
    written: list[Path] = []
    if {"point_key", "baseline_key"} <= set(ok.columns) and ok["baseline_key"].notna().all():
        multi = ok[ok["point_key"] != ok["baseline_key"]]  # every point but the single-device baselines
    else:  # rows from before baseline keys existed
        multi = ok[ok["devices"] > 1]

    shaped = multi[multi["bandwidth_mbps"].notna()]
    if not shaped.empty:
        devs = sorted(shaped["devices"].unique())
        fig, axes = plt.subplots(1, len(devs), figsize=(5 * len(devs), 4), squeeze=False, sharey=True)
        for ax, n in zip(axes[0], devs):
            for lab, g in shaped[shaped["devices"] == n].groupby("label"):
                g = g.sort_values("bandwidth_mbps")
                ax.plot(g["bandwidth_mbps"], g["speedup"], marker="o", label=lab)
            mark_unfaithful(ax, shaped[shaped["devices"] == n], "bandwidth_mbps")
            ax.axhline(1.0, color="red", lw=1, ls="--")
            ax.set_xscale("log")
            ax.set_title(f"{n} devices")
            ax.set_xlabel("bandwidth (Mbps)")
        axes[0][0].set_ylabel("speedup over single device")
        axes[0][-1].legend()
        fig.suptitle(title)
        written += _save(fig, out, "speedup_vs_bandwidth" + suffix)
        plt.close(fig)

    if not multi.empty:
        fig, ax = plt.subplots(figsize=(6, 4))
        for (lab, bw), g in multi.groupby(["label", multi["bandwidth_mbps"].fillna(-1)]):
            g = g.sort_values("devices")
            name = lab if bw < 0 else f"{lab} @ {bw:g} Mbps"
            ax.plot(g["devices"], g["speedup"], marker="o", label=name)
        mark_unfaithful(ax, multi, "devices")
        ax.axhline(1.0, color="red", lw=1, ls="--")
        ax.set_xlabel("devices")
        ax.set_ylabel("speedup over single device")
        ax.legend(fontsize="small")
        ax.set_title(title)
        written += _save(fig, out, "speedup_vs_devices" + suffix)
        plt.close(fig)

    if not ok.empty:
        names = [
            f"{r.label} N={r.devices}" + (f" {r.bandwidth_mbps:g}M" if pd.notna(r.bandwidth_mbps) else "")
            for r in ok.itertuples()
        ]
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(ok)), 4))
        ax.bar(names, ok["compute_ms"], label="compute")
        ax.bar(names, ok["comm_ms"], bottom=ok["compute_ms"], label="communication")
        ax.set_ylabel("latency (ms)")
        ax.tick_params(axis="x", rotation=60)
        ax.legend()
        ax.set_title(title)
        written += _save(fig, out, "latency_breakdown" + suffix)
        plt.close(fig)
    return written


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
    src = Path(args.results)
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent)
    for p in plot_all(pts, out):
        print(f"wrote {p}", file=sys.stderr)


if __name__ == "__main__":
    main()
