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
# # Latency figures: Figure 1, Figure 3 and Table 4 of the paper, beside ours
#
# Loads a results store (`ASTRA_STORE`, default `results/results.parquet`) with pandas and puts our ViT-Base
# points beside the paper's values (`results/paper/*.csv`), per source: `paper-predicted` (the paper's simulator
# with compute predicted from each rank's multiply-adds: 1 parameter fitted to the paper's single device — the
# reproduction to quote), `paper-fitted` (the compute that fits each curve: 54 parameters fitted to 259 cells — a
# consistency check of what our methods send, not a prediction), `analytic` (compute measured here) and `mininet`
# (the emulated network). Every table and figure below says how many parameters its source fitted. Make the points
# with
#
#     astra-bench -m experiment=paper_fig1        # seconds: network.compute=predicted,fitted
#     astra-bench -m experiment=paper_fig1 network.compute=measured   # hours on 2 cores: ViT-Base profiled here

# %%
import os

import matplotlib.pyplot as plt
import pandas as pd

from harness.paths import results_file
from harness.report import paper_report as report

store = os.environ.get("ASTRA_STORE") or str(results_file("results.parquet"))  # or set ASTRA_STORE
ours = report.our_points(store)
print(f"{len(ours)} ViT-Base points of ours in {store}, by source:")
print(ours.groupby("source").size().to_string())

# %% [markdown]
# ## Figure 1: speedup over one device (4 devices, 1024 tokens)

# %%
fig1 = report.speedup_table("fig1", ours)
print(report.to_markdown(fig1))

# %%
src = next((s for s in report.SOURCES if s in fig1.columns), None)
fig = report.draw_panels(fig1, "bandwidth_mbps", "devices", src, plt, logx=True)
fig.suptitle(f"Figure 1: paper dashed, ours ({src}: {report.fitted_label(src)}) solid" if src else "Figure 1")
plt.show()

# %% [markdown]
# ## Figure 3: where the time goes (ms)

# %%
fig3 = report.breakdown_table(ours)
print(report.to_markdown(fig3))

# %% [markdown]
# ## Table 4: ASTRA (G = 1) over each baseline

# %%
t4 = report.ratio_table(ours)
print(report.to_markdown(t4))

# %%
summary = pd.DataFrame(report.summary("fig1", fig1) + report.summary("fig3", fig3) + report.summary("table4", t4))
summary  # the "fitted" column: how many parameters each source fitted, to what

# %% [markdown]
# The fitted check scored on cells it was not fitted to (each curve fitted on every other bandwidth):

# %%
report.cross_validation_summary()
