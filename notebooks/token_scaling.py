# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Token scaling: Figure 8 (256 to 4096 tokens, 4 devices), ours beside the paper's
#
# `ASTRA_STORE` names the results store; make its points with `astra-bench -m experiment=paper_fig8`. The paper
# prints no single-device latency for other sequence lengths than 1024; `results/paper/compute_profile.csv` fits
# it from the curves (`harness.paper`).

# %%
import os

import matplotlib.pyplot as plt

from harness import paper, report

store = os.environ.get("ASTRA_STORE", "results/results.parquet")
ours = report.our_points(store)
fig8 = report.speedup_table("fig8", ours)
src = next((s for s in report.SOURCES if s in fig8.columns), None)
print(report.to_markdown(fig8[fig8[src].notna()] if src else fig8.head(0)))

# %%
prof = paper.load("compute_profile")
print(prof[prof["method"] == "single"][["tokens", "compute_ms", "source"]].to_string(index=False))

# %%
bws = sorted(fig8.loc[fig8[src].notna(), "bandwidth_mbps"].unique()) if src else []
fig, axes = plt.subplots(1, max(1, len(bws)), figsize=(4.5 * max(1, len(bws)), 4), squeeze=False, sharey=True)
for ax, bw in zip(axes[0], bws):
    part = fig8[fig8["bandwidth_mbps"] == bw]
    for i, (lab, g) in enumerate(part.groupby("label", sort=False)):
        g = g.sort_values("tokens")
        ax.plot(g["tokens"], g["paper"], ls="--", marker="x", color=f"C{i}", alpha=0.6)
        have = g[g[src].notna()]
        if not have.empty:
            ax.plot(have["tokens"], have[src], marker="o", color=f"C{i}", label=lab)
    ax.axhline(1, color="red", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="tokens", title=f"{bw:g} Mbps")
    report._ticks(ax, part["tokens"])
axes[0][0].set_ylabel("speedup (log)")
axes[0][-1].legend(fontsize="small")
plt.show()

# %%
report.summary("fig8", fig8)
