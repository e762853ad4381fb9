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
# # Device scaling: Figure 7 (2, 4, 6, 8 devices), ours beside the paper's
#
# `ASTRA_STORE` names the results store; make its points with `astra-bench -m experiment=paper_fig7`.

# %%
import os

import matplotlib.pyplot as plt

from harness import report

store = os.environ.get("ASTRA_STORE", "results/results.parquet")
ours = report.our_points(store)
fig7 = report.speedup_table("fig7", ours)
src = next((s for s in report.SOURCES if s in fig7.columns), None)
print(report.to_markdown(fig7[fig7[src].notna()] if src else fig7.head(0)))

# %% [markdown]
# Speedup against device count at each bandwidth our store has, paper dashed.

# %%
bws = sorted(fig7.loc[fig7[src].notna(), "bandwidth_mbps"].unique()) if src else []
fig, axes = plt.subplots(1, max(1, len(bws)), figsize=(4.5 * max(1, len(bws)), 4), squeeze=False, sharey=True)
for ax, bw in zip(axes[0], bws):
    part = fig7[fig7["bandwidth_mbps"] == bw]
    for i, (lab, g) in enumerate(part.groupby("label", sort=False)):
        g = g.sort_values("devices")
        ax.plot(g["devices"], g["paper"], ls="--", marker="x", color=f"C{i}", alpha=0.6)
        have = g[g[src].notna()]
        if not have.empty:
            ax.plot(have["devices"], have[src], marker="o", color=f"C{i}", label=lab)
    ax.axhline(1, color="red", lw=1)
    ax.set(yscale="log", xlabel="devices", title=f"{bw:g} Mbps")
axes[0][0].set_ylabel("speedup (log)")
axes[0][-1].legend(fontsize="small")
plt.show()

# %%
report.summary("fig7", fig7)
