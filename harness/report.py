"""``astra-report``: our rows beside the paper's numbers, figure by figure, with the gap.

For every table of ``results/paper/`` (Fig. 1, 3, 7, 8 and Table 4) it finds our matching points in a results store
(ViT-Base, same method, G, Nb, devices, tokens and bandwidth) and writes one markdown table per figure — the
paper's value, ours from each source that has the point, and the gap — plus the figure drawn the paper's way.
Sources are kept apart, because they answer different questions:

- ``paper-compute``: network=analytic with network.compute=paper — the paper's simulator with its own compute
  times and our methods' traffic; a gap here is a difference in what is sent.
- ``paper-compute-ring``: the same with ``collective_model=ring`` — what real collectives move ((N-1) shards per
  all-gather): the bridge between the paper's accounting and the emulated network.
- ``analytic`` / ``analytic-ring``: network=analytic with compute measured on this machine.
- ``mininet``: the emulated network (real TCP, shaped links, dilated devices).

A cell is *within* when |ours / paper − 1| ≤ 5 % or |ours − paper| ≤ 0.01 (the paper's plot readings are ±0.01
in speedup).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import paper
from .plot import latest_points
from .results import load

TOLERANCE = 0.05
READING = 0.01  # plot readings of the paper are ±0.01 in speedup
SOURCES = ("paper-compute", "paper-compute-ring", "analytic", "analytic-ring", "mininet")
FIGURES = {  # name -> (csv, title)
    "fig1": ("fig1_speedup", "Figure 1: speedup over one device, 4 devices, 1024 tokens"),
    "fig7": ("fig7_speedup", "Figure 7: speedup at 2, 6 and 8 devices, 1024 tokens"),
    "fig8": ("fig8_speedup", "Figure 8: speedup at 256-4096 tokens, 4 devices"),
    "fig3": ("fig3_breakdown", "Figure 3: latency breakdown (ms), 4 devices, 1024 tokens"),
    "table4": ("table4_ratio", "Table 4: ASTRA (G=1) speedup over each baseline, 4 devices, 1024 tokens"),
}
def label(method: str, groups, retained) -> str:
    """The paper's name for a curve: the method's title and the knob the paper varies for it (G, Nb)."""
    from .parallel import METHODS

    name = METHODS[method].title if method in METHODS else method
    if pd.notna(groups):
        return f"{name} G={int(groups)}"
    if pd.notna(retained):
        return f"{name} Nb={int(retained)}"
    return name


def source_of(row) -> str | None:
    import json

    net = row.get("network")
    if net == "analytic":
        base = "paper-compute" if row.get("compute_source") == "paper" else "analytic"
        try:
            model = json.loads(row.get("settings") or "{}").get("network", {}).get("collective_model", "paper")
        except (TypeError, ValueError):
            model = "paper"
        return base if model == "paper" else f"{base}-{model}"
    if net == "mininet":
        return "mininet"
    return None  # loopback: no bandwidth, nothing the paper shows


def our_points(store) -> pd.DataFrame:
    """Our latest ok ViT-Base points, one row per (source, method, G, Nb, devices, tokens, bandwidth)."""
    df = latest_points(load(store))
    df = df[(df["status"] == "ok") & (df["model"] == "vit_base")].copy()
    for col in ("compute_source", "retained", "groups", "codebook_size"):
        if col not in df.columns:
            df[col] = None
    df["source"] = [source_of(r) for r in df.to_dict("records")]
    df = df[df["source"].notna()]
    k = pd.to_numeric(df["codebook_size"], errors="coerce")
    df = df[k.isna() | (k == 1024)]  # the paper's K everywhere
    df["groups"] = pd.to_numeric(df["groups"], errors="coerce").astype("Int64")  # set only by methods with G
    df["retained"] = pd.to_numeric(df["retained"], errors="coerce").astype("Int64")  # only by block parallelism
    df["bandwidth_mbps"] = pd.to_numeric(df["bandwidth_mbps"], errors="coerce")
    return df.sort_values("timestamp").drop_duplicates(
        ["source", "method", "groups", "retained", "devices", "tokens", "bandwidth_mbps"], keep="last")


def _key(df: pd.DataFrame) -> pd.Series:
    def norm(v):
        return "" if pd.isna(v) else str(int(float(v))) if float(v).is_integer() else str(float(v))

    cols = ["method", "groups", "retained", "devices", "tokens", "bandwidth_mbps"]
    if df.empty:
        return pd.Series([], index=df.index, dtype=object)
    return df[cols].apply(lambda r: "|".join([r["method"], *(norm(r[c]) for c in cols[1:])]), axis=1)


def _gap(ours: pd.Series, theirs: pd.Series) -> pd.Series:
    """ours / paper - 1 (undefined where the paper reads 0.00)."""
    return ours / theirs.where(theirs != 0) - 1


def within(ours: pd.Series, theirs: pd.Series) -> pd.Series:
    return (_gap(ours, theirs).abs() <= TOLERANCE) | ((ours - theirs).abs() <= READING + 1e-9)


def speedup_table(name: str, ours: pd.DataFrame) -> pd.DataFrame:
    ref = paper.load(FIGURES[name][0])
    ref = ref[ref["speedup"].notna()].copy()
    ref["key"] = _key(ref)
    ours = ours.assign(key=_key(ours))
    out = ref.rename(columns={"speedup": "paper"})
    for src in SOURCES:
        part = ours[ours["source"] == src].set_index("key")["speedup"]
        if part.empty:
            continue
        out[src] = out["key"].map(part).astype(float)
        out[f"{src} gap"] = _gap(out[src], out["paper"])
    out.insert(0, "label", [label(m, g, r) for m, g, r in zip(out["method"], out["groups"], out["retained"])])
    return out.drop(columns=["key", "method", "groups", "retained"])


def breakdown_table(ours: pd.DataFrame) -> pd.DataFrame:
    ref = paper.load(FIGURES["fig3"][0])
    ref["key"] = _key(ref)
    ours = ours.assign(key=_key(ours))
    out = ref.rename(columns={"compute_ms": "paper compute", "comm_ms": "paper comm"})
    for src in SOURCES:
        part = ours[ours["source"] == src].set_index("key")
        if part.empty:
            continue
        out[f"{src} compute"] = out["key"].map(part["compute_ms"]).astype(float)
        out[f"{src} comm"] = out["key"].map(part["comm_ms"]).astype(float)
        out[f"{src} gap"] = _gap(out[f"{src} compute"] + out[f"{src} comm"], out["paper compute"] + out["paper comm"])
    out.insert(0, "label", [label(m, g, r) for m, g, r in zip(out["method"], out["groups"], out["retained"])])
    return out.drop(columns=["key", "method", "groups", "retained"])


def ratio_table(ours: pd.DataFrame) -> pd.DataFrame:
    ref = paper.load(FIGURES["table4"][0])
    out = ref.rename(columns={"ratio": "paper"}).copy()
    for src in SOURCES:
        part = ours[(ours["source"] == src) & (ours["devices"] == 4) & (ours["tokens"] == 1024)]
        if part.empty:
            continue
        vals = []
        for r in out.itertuples():  # the method's latency over the baseline's, both at r's bandwidth
            at = part["bandwidth_mbps"] == r.bandwidth_mbps
            mine = part.loc[at & (part["method"] == r.method) & (part["groups"] == r.groups), "latency_ms"]
            sel = at & (part["method"] == r.baseline)
            if pd.notna(r.baseline_retained):
                sel &= part["retained"] == r.baseline_retained
            base = part.loc[sel, "latency_ms"]
            vals.append(float(base.iloc[0]) / float(mine.iloc[0]) if len(base) and len(mine) else np.nan)
        out[src] = vals
        out[f"{src} gap"] = _gap(out[src], out["paper"])
    out.insert(0, "label", [f"{label(m, g, None)} over {label(b, None, r)}"
                            for m, g, b, r in zip(out["method"], out["groups"], out["baseline"], out["baseline_retained"])])
    return out.drop(columns=["method", "groups", "baseline", "baseline_retained"])


def summary(name: str, table: pd.DataFrame) -> list[dict]:
    out = []
    for src in SOURCES:
        if f"{src} gap" not in table.columns:
            continue
        gap = table[f"{src} gap"]
        have = table[f"{src} compute"].notna() if name == "fig3" else table[src].notna()
        if name == "fig3":
            ok = gap.abs() <= TOLERANCE
        else:
            theirs = table["paper"]
            ok = within(table[src], theirs)
        out.append({"figure": name, "source": src, "cells": int(len(table)), "matched": int(have.sum()),
                    "within": int((ok & have).sum()),
                    "max_gap_pct": round(100 * float(gap.abs().max()), 2) if gap.notna().any() else None,
                    "median_gap_pct": round(100 * float(gap.abs().median()), 2) if gap.notna().any() else None})
    return out


def to_markdown(table: pd.DataFrame) -> str:
    t = table.copy()
    for c in t.columns:
        if c.endswith("gap"):
            t[c] = t[c].map(lambda v: "" if pd.isna(v) else f"{100 * v:+.1f}%")
    return t.to_markdown(index=False, floatfmt=".4g")


def draw_panels(table: pd.DataFrame, x: str, panel: str, src: str | None, plt, logx: bool = False):
    """One panel per value of ``panel``, the speedup against ``x`` per curve: the paper dashed, ours (``src``)
    solid, the 1x line, log y (and log x with plain tick labels when ``logx``). Returns the figure."""
    from .style import plain_log_axis

    panels = sorted(table[panel].unique())
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.6 * max(1, len(panels)), 4.2), squeeze=False,
                             sharey=True)
    colors: dict[str, str] = {}
    for ax, p in zip(axes[0], panels):
        part = table[table[panel] == p]
        for lab, g in part.groupby("label", sort=False):
            g = g.sort_values(x)
            c = colors.setdefault(lab, f"C{len(colors) % 10}")
            ax.plot(g[x], g["paper"], ls="--", marker="x", color=c, alpha=0.7)
            if src:
                mine = g[g[src].notna()]
                ax.plot(mine[x], mine[src], ls="-", marker="o", ms=4, color=c, label=lab)
            else:
                ax.plot([], [], color=c, label=lab)
        ax.axhline(1.0, color="red", lw=1)
        ax.set_yscale("log")
        if logx:
            ax.set_xscale("log")
            plain_log_axis(ax.xaxis, part[x])
        ax.set_title(f"{p:g} Mbps" if panel == "bandwidth_mbps" else f"{p} {panel}")
        ax.set_xlabel("bandwidth (Mbps)" if x == "bandwidth_mbps" else x)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("speedup over one device (log)")
    axes[0][-1].legend(fontsize="small", loc="lower right")
    return fig


def draw_speedups(name: str, table: pd.DataFrame, out: Path, plt) -> Path:
    """The paper's way: log-scale speedup vs bandwidth per method, one panel per device count (Fig. 1, 7) or token
    count (Fig. 8)."""
    src = next((s for s in SOURCES if s in table.columns and table[s].notna().any()), None)
    fig = draw_panels(table, "bandwidth_mbps", "tokens" if name == "fig8" else "devices", src, plt, logx=True)
    ours = f"ours ({src}) solid" if src else "no matching points of ours"
    fig.suptitle(f"{FIGURES[name][1]} — paper dashed, {ours}; ViT-Base, K=1024", fontsize="medium")
    path = out / f"{name}.png"
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return path


def draw_breakdown(table: pd.DataFrame, out: Path, plt) -> Path:
    """Compute + communication bars, paper beside ours, one panel per method (each on its own scale, so a method
    that is 100x slower does not flatten the others)."""
    src = next((s for s in SOURCES if f"{s} compute" in table.columns), None)
    rows = table[table["devices"] > 1]
    labels = list(dict.fromkeys(rows["label"]))
    fig, axes = plt.subplots(1, len(labels), figsize=(3.6 * len(labels), 3.8), squeeze=False)
    for ax, lab in zip(axes[0], labels):
        g = rows[rows["label"] == lab].sort_values("bandwidth_mbps")
        x = np.arange(len(g))
        w = 0.38
        ax.bar(x - w / 2, g["paper compute"], w, color="C0", alpha=0.5, label="paper compute")
        ax.bar(x - w / 2, g["paper comm"], w, bottom=g["paper compute"], color="C1", alpha=0.5, label="paper comm")
        if src:
            ax.bar(x + w / 2, g[f"{src} compute"], w, color="C0", label=f"{src} compute")
            ax.bar(x + w / 2, g[f"{src} comm"], w, bottom=g[f"{src} compute"], color="C1", label=f"{src} comm")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{b:g}" for b in g["bandwidth_mbps"]])
        ax.set_xlabel("Mbps")
        ax.set_title(lab)
    axes[0][0].set_ylabel("latency (ms)")
    axes[0][-1].legend(fontsize="x-small")
    fig.suptitle(FIGURES["fig3"][1] + " — left bars paper, right bars ours", fontsize="medium")
    path = out / "fig3.png"
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return path


def build(store, out: Path) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, list[Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = our_points(store)
    tables = {n: speedup_table(n, ours) for n in ("fig1", "fig7", "fig8")}
    tables["fig3"] = breakdown_table(ours)
    tables["table4"] = ratio_table(ours)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    sums = []
    index = ["# Our numbers beside the paper's\n", f"Store: `{store}`. Within = |gap| ≤ 5 % or |Δ| ≤ 0.01 "
             "(the paper's plot readings). Sources: paper-compute = analytic backend fed the paper's compute "
             "(a gap is a difference in traffic); analytic = compute measured here; mininet = emulated network.\n"]
    for name, table in tables.items():
        sums += summary(name, table)
        md = out / f"{name}.md"
        md.write_text(f"# {FIGURES[name][1]}\n\n{to_markdown(table)}\n")
        written.append(md)
        if name == "fig3":
            written.append(draw_breakdown(table, out, plt))
        elif name != "table4":
            written.append(draw_speedups(name, table, out, plt))
    summ = pd.DataFrame(sums, columns=["figure", "source", "cells", "matched", "within", "max_gap_pct",
                                       "median_gap_pct"])
    index.append("## Summary\n\n" + (summ.to_markdown(index=False) if not summ.empty else "no matching points") + "\n")
    for name in tables:
        index.append(f"\n## {FIGURES[name][1]}\n\n{(out / f'{name}.md').read_text().split(chr(10), 2)[2]}")
    (out / "README.md").write_text("\n".join(index))
    written.append(out / "README.md")
    return tables, summ, written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="astra-report", description="our results beside the paper's, with the gaps")
    ap.add_argument("results", nargs="?", default="results/results.parquet",
                    help="a results file or directory (default: results/results.parquet)")
    ap.add_argument("--out", default="results/report", help="where the tables and figures go (default results/report)")
    args = ap.parse_args(argv)
    try:
        _, summ, written = build(args.results, Path(args.out))
    except (FileNotFoundError, ValueError) as exc:
        print(f"astra-report: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if summ.empty:
        print("astra-report: no ViT-Base points of ours match the paper's (run e.g. astra-bench -m "
              "experiment=paper_fig1); wrote the paper's tables alone", file=sys.stderr)
    else:
        print(summ.to_markdown(index=False))
    for p in written:
        print(f"wrote {p}", file=sys.stderr)


if __name__ == "__main__":
    main()
