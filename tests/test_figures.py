"""What a reader relies on in the figures of astra-plot and astra-report: one colour per method, the same in every
figure; legends inside the figure and off the data; plain tick labels; 95 % intervals of the median latency,
propagated to the speedup; latency shares on a linear axis; byte sizes in binary units."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from harness.emulation import dilation
from harness.report import paper_report as report
from harness.report import plot, style  # noqa: E402
from harness.store.results import median_ci, summarize, with_speedup  # noqa: E402

STEMS = {"speedup_vs_bandwidth", "speedup_vs_devices", "over_best_baseline", "latency_breakdown", "bytes_per_method"}
SPEEDUP_TICK = re.compile(r"^\d+(\.\d+)?×$")
NUMBER_TICK = re.compile(r"^\d+(\.\d+)?$")
BYTES_TICK = re.compile(r"^\d+(\.\d+)? (B|KiB|MiB|GiB)$")


def store(ci: bool = True) -> pd.DataFrame:
    """A small store as load() returns it: single, tp, sp and astra (G=1, G=16) on 2 and 4 devices at 10, 100 and
    1000 Mbit/s, latencies shaped like ViT-Base's (compute / N plus payload / bandwidth)."""
    rows = []

    def add(method, n, bw, compute, payload, groups=None):
        key = f"{method}-{groups}-{n}-{bw}"
        comm = 0.0 if bw is None else payload * 8 / (bw * 1e6) * 1e3 * (n - 1)
        lat = compute + comm
        rows.append({"model": "vit_base", "tokens": 1024, "network": "analytic", "bandwidth_mbps": bw,
                     "method": method, "groups": groups, "codebook_size": 1024 if groups else None, "devices": n,
                     "repeats": 3 if ci else 1, "latency_ms": lat, "compute_ms": compute, "comm_ms": comm,
                     "latency_ci_low_ms": 0.95 * lat if ci else None, "latency_ci_high_ms": 1.08 * lat if ci else None,
                     "payload_bytes": payload, "status": "ok", "timestamp": "2026-01-01T00:00:00+00:00",
                     "point_key": key, "timing_key": "base" if method == "single" else key, "baseline_key": "base",
                     "settings": None, "config": None})

    add("single", 1, None, 2400.0, 0)
    for n in (2, 4):
        for bw in (10.0, 100.0, 1000.0):
            add("tp", n, bw, 3000 / n, 75_571_200 // 4)
            add("sp", n, bw, 3100 / n, 18_874_368 * 2 // n)
            for g in (1, 16):
                add("astra", n, bw, 3300 / n, 6912 * g * 4 // n, groups=g)
    return with_speedup(pd.DataFrame(rows))


def figures(df: pd.DataFrame) -> dict:
    return plot.scene_figures(plot.latest_points(df), "vit_base, 1024 tokens, analytic", plt)


def data_points(fig) -> list[tuple[str, np.ndarray]]:
    """(method, display coordinates) of every drawn point and bar of a method (artists tagged with its gid)."""
    out = []
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_gid() and len(line.get_xydata()):
                out.append((line.get_gid(), ax.transData.transform(line.get_xydata())))
        for patch in ax.patches:
            if isinstance(patch, Rectangle) and patch.get_gid():
                out.append((patch.get_gid(), patch.get_window_extent().get_points()))
    return out


def colours(fig) -> dict[str, set]:
    """The colours each method is drawn in within ``fig``."""
    out: dict[str, set] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_gid():
                out.setdefault(line.get_gid(), set()).add(matplotlib.colors.to_hex(line.get_color()))
        for patch in ax.patches:
            if patch.get_gid():
                out.setdefault(patch.get_gid(), set()).add(matplotlib.colors.to_hex(patch.get_facecolor(),
                                                                                   keep_alpha=False))
    return out


def legends(fig):
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]


def check_legends(fig, name: str) -> None:
    """Every legend lies inside the figure and covers no data point."""
    fig.canvas.draw()
    inside = fig.bbox.padded(1)
    for leg in legends(fig):
        box = leg.get_window_extent()
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, name
        for method, pts in data_points(fig):
            hit = [p for p in pts if box.contains(*p)]
            assert not hit, f"{name}: the legend covers {method} at {hit}"


def one_x_lines(fig) -> list[Line2D]:
    return [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == style.ONE_X["label"]]


def report_store(tmp_path):
    """Paper-compute points of Fig. 1 and Fig. 3 (no profiling: seconds)."""
    from harness.bench import run_point
    from harness.spec.build import build_spec, compose

    path = tmp_path / "paper.parquet"
    base = ["model=vit_base", "network=analytic", "network.compute=fitted", "network.collective_model=paper",
            "network.mbps_unit=1048576", "repeats=1", "warmup=0", "solo_repeats=0", "tokens=1024",
            f"results.path={path}"]
    run_point(build_spec(compose([*base, "method=single"])), sweep=False)
    for knobs in (["method=astra", "method.groups=1"], ["method=astra", "method.groups=16"], ["method=tp"],
                  ["method=sp"], ["method=bp_ag", "method.retained=1"]):
        for bw in (10, 100):
            run_point(build_spec(compose([*base, *knobs, "devices=4", f"network.bandwidth_mbps={bw}"])), sweep=False)
    return path


def test_median_ci_is_a_reproducible_bootstrap_interval():
    vals = [100.0, 101.0, 99.0, 102.0, 140.0]
    low, high = median_ci(vals)
    assert (low, high) == median_ci(vals)  # seeded: the same row every time
    assert low <= float(np.median(vals)) <= high and low >= 99.0 and high <= 140.0
    assert median_ci([5.0]) == (None, None)
    wide = median_ci([50.0, 100.0, 150.0, 200.0, 250.0])
    assert wide[1] - wide[0] > high - low


def test_summarize_and_dilation_carry_the_interval():
    reports = [{"latency_s": [0.10, 0.12, 0.11, 0.50], "comm_s": [0.01] * 4, "payload_bytes": 8},
               {"latency_s": [0.09, 0.13, 0.10, 0.20], "comm_s": [0.02] * 4, "payload_bytes": 8}]
    row = summarize(reports)  # the slowest rank per repeat: 100, 130, 110, 500 ms
    assert row["latency_ci_low_ms"] <= row["latency_ms"] <= row["latency_ci_high_ms"]
    assert row["latency_ci_low_ms"] >= 100 and row["latency_ci_high_ms"] <= 500
    one = summarize([{"latency_s": [0.1], "comm_s": [0.0], "payload_bytes": 0}])
    assert one["latency_ci_low_ms"] is None and one["latency_ci_high_ms"] is None
    scaled = dilation.scale_row(row, 2.0)
    assert scaled["latency_ci_low_ms"] == pytest.approx(row["latency_ci_low_ms"] / 2)
    assert "latency_ci_low_ms" not in dilation.scale_row(one, 2.0)  # None stays None


def test_speedup_interval_is_propagated_conservatively():
    df = pd.DataFrame([
        {"method": "single", "timing_key": "b", "baseline_key": "b", "latency_ms": 100.0, "latency_ci_low_ms": 90.0,
         "latency_ci_high_ms": 110.0, "status": "ok", "timestamp": "1"},
        {"method": "sp", "timing_key": "s", "baseline_key": "b", "latency_ms": 50.0, "latency_ci_low_ms": 40.0,
         "latency_ci_high_ms": 60.0, "status": "ok", "timestamp": "2"},
        {"method": "tp", "timing_key": "t", "baseline_key": "b", "latency_ms": 50.0, "latency_ci_low_ms": None,
         "latency_ci_high_ms": None, "status": "ok", "timestamp": "2"}])
    out = with_speedup(df).set_index("method")
    assert out.at["sp", "speedup"] == 2.0
    assert out.at["sp", "speedup_ci_low"] == pytest.approx(90 / 60) and out.at["sp", "speedup_ci_high"] == 110 / 40
    assert out.at["tp", "speedup_ci_low"] == pytest.approx(90 / 50)  # the baseline's interval alone
    noci = with_speedup(df.drop(columns=["latency_ci_low_ms", "latency_ci_high_ms"]))  # a store from before
    assert noci["speedup_ci_low"].isna().all() and noci["speedup"].notna().all()


def test_astra_plot_figures(tmp_path):
    figs = figures(store())
    assert set(figs) == STEMS
    seen: dict[str, set] = {}
    for name, fig in figs.items():
        check_legends(fig, name)
        for method, cs in colours(fig).items():
            seen.setdefault(method, set()).update(cs)
    assert set(seen) == {"single", "tp", "sp", "astra"}
    assert all(len(cs) == 1 for cs in seen.values()), seen  # one colour per method, in every figure
    assert len({c for cs in seen.values() for c in cs}) == len(seen)  # and no two methods share one
    assert seen["astra"] == {style.method_color("astra")} == {style.method_color("ASTRA")}

    for name in ("speedup_vs_bandwidth", "speedup_vs_devices"):
        fig = figs[name]
        ones = one_x_lines(fig)
        assert ones and all(matplotlib.colors.to_hex(ln.get_color()) not in
                            {c for cs in seen.values() for c in cs} for ln in ones)
        assert style.ONE_X["label"] in [t.get_text() for leg in legends(fig) for t in leg.get_texts()]
        ax = fig.axes[0]
        assert ax.get_yscale() == "log"
        ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert ticks and all(SPEEDUP_TICK.match(t) for t in ticks), ticks
        assert "1×" in ticks and "95 % CI" in ax.get_ylabel()
        assert any(c.has_yerr for a in fig.axes for c in a.containers if hasattr(c, "has_yerr"))
    bw_ticks = [t.get_text() for t in figs["speedup_vs_bandwidth"].axes[0].get_xticklabels()]
    assert bw_ticks == ["10", "100", "1000"]
    # astra at G=1 and G=16: one colour, two markers
    astra = {ln.get_label(): ln.get_marker() for ln in figs["speedup_vs_bandwidth"].axes[0].get_lines()
             if ln.get_gid() == "astra"}
    assert set(astra) == {"astra G=1", "astra G=16"} and len(set(astra.values())) == 2

    # ASTRA over the fastest other method: ASTRA's colour, its own 1x line
    best = figs["over_best_baseline"]
    assert "fastest other method" in best.axes[0].get_ylabel()
    assert {ln.get_gid() for a in best.axes for ln in a.get_lines() if ln.get_gid()} == {"astra"}
    labels = [t.get_text() for leg in legends(best) for t in leg.get_texts()]
    assert "1× = as fast as the fastest other" in labels and style.ONE_X["label"] not in labels

    ax = figs["latency_breakdown"].axes[0]
    assert ax.get_xscale() == "linear" and ax.get_xlim() == (0, 100)
    tp = next(p for p in ax.patches if p.get_gid() == "tp")
    assert tp.get_width() > 0  # compute of a comm-bound point is a visible share, not under a log floor
    right = [t.get_text() for a in ax.child_axes for t in a.get_yticklabels()]  # the secondary axis on the right
    assert len(right) == len(ax.patches) // 2 and all(re.search(r"\d (ms|s) = ", t) for t in right)

    byte_ticks = [t.get_text() for t in figs["bytes_per_method"].axes[0].get_xticklabels() if t.get_text()]
    assert byte_ticks and all(BYTES_TICK.match(t) for t in byte_ticks), byte_ticks
    printed = [t.get_text() for t in figs["bytes_per_method"].axes[0].texts]
    assert "72.1 MiB" in printed or "18 MiB" in printed, printed
    for fig in figs.values():
        plt.close(fig)


@pytest.mark.slow
def test_old_store_without_intervals_plots_without_bars(tmp_path):
    df = store().drop(columns=["latency_ci_low_ms", "latency_ci_high_ms", "speedup_ci_low", "speedup_ci_high",
                               "single_ci_low_ms", "single_ci_high_ms"])
    path = tmp_path / "old.parquet"
    df.drop(columns=["speedup", "single_latency_ms"]).to_parquet(path)
    figs = figures(plot.load(path))
    assert set(figs) == STEMS
    fig = figs["speedup_vs_bandwidth"]
    assert not any(getattr(c, "has_yerr", False) for a in fig.axes for c in a.containers)
    assert "CI" not in fig.axes[0].get_ylabel()
    for f in figs.values():
        plt.close(f)


def test_astra_plot_writes_its_files(tmp_path):
    written = plot.plot_all(plot.latest_points(store(ci=False)), tmp_path)
    assert {p.name for p in written} == {f"{s}.{e}" for s in STEMS for e in ("png", "pdf")}


def test_human_bytes_binary_units():
    assert style.human_bytes(512) == "512 B"
    assert style.human_bytes(1536) == "1.5 KiB"
    assert style.human_bytes(75_571_200) == "72.1 MiB"
    assert style.plain(0.05) == "0.05" and style.plain(1000.0) == "1000"


def test_method_colours_are_fixed_and_distinct():
    from harness.parallel import METHODS

    cs = {m: style.method_color(m) for m in METHODS}
    assert len(set(cs.values())) == len(cs)
    assert style.method_color("newmethod") == style.method_color("newmethod")  # a name outside the registry
    assert style.method_color("newmethod") not in cs.values()
    assert style.ONE_X["color"] not in cs.values()


def test_report_figures_and_readme(tmp_path):
    path = report_store(tmp_path)
    tables, summ, written = report.build(path, tmp_path / "rep")
    readme = (tmp_path / "rep" / "README.md").read_text()
    assert "](fig1.png)" in readme and "](fig3.png)" in readme
    assert "## Figure 7" not in readme and "## Figure 8" not in readme  # no points of ours there
    assert "[Figure 7](fig7.md)" in readme
    assert "nan" not in readme

    ours = {c for cs in colours(figures(store())["speedup_vs_bandwidth"]).values() for c in cs}
    plot_colours = {m: next(iter(cs)) for m, cs in colours(figures(store())["speedup_vs_bandwidth"]).items()}
    fig1 = report.draw_panels(tables["fig1"], "bandwidth_mbps", "devices", "paper-fitted", plt, logx=True)
    fig3 = report.breakdown_figure(tables["fig3"], plt)
    for name, fig in (("fig1", fig1), ("fig3", fig3)):
        check_legends(fig, name)
        got = colours(fig)
        assert all(len(cs) == 1 for cs in got.values()), got
        for method, cs in got.items():  # the same colour as in astra-plot's figures
            assert cs == {style.method_color(method)}
            if method in plot_colours:
                assert cs == {plot_colours[method]}
    assert {"astra", "tp", "sp", "bp_ag"} <= set(colours(fig1))
    ones = one_x_lines(fig1)
    assert ones and matplotlib.colors.to_hex(ones[0].get_color()) not in ours | {c for cs in colours(fig1).values()
                                                                                  for c in cs}
    ticks = [t.get_text() for t in fig1.axes[0].get_yticklabels() if t.get_text()]
    assert all(SPEEDUP_TICK.match(t) for t in ticks), ticks
    assert [t.get_text() for t in fig1.axes[0].get_xticklabels()] == [
        style.plain(b) for b in sorted(tables["fig1"]["bandwidth_mbps"].unique())]
    plt.close(fig1)
    plt.close(fig3)


def test_a_difference_inside_the_intervals_is_not_resolved():
    from harness.report.compare import change, resolved

    assert resolved(10, 11, 12, 13) is True and resolved(10, 12.5, 12, 13) is False
    assert resolved(10, None, 12, 13) is None and resolved(10, float("nan"), 12, 13) is None
    assert change((50, 49, 51), (40, 39, 41)) == "+25.0 %"
    assert change((41, 40, 42), (40, 39, 41.5)) == "+2.5 % (not resolved)"
    assert change((41, None, None), (40, 39, 41)) == "+2.5 % (no interval)"
    import numpy as np

    assert change(tuple(np.float64(x) for x in (41, 40, 42)), (40, 39, 41.5)) == "+2.5 % (not resolved)"
