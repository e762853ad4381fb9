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

from harness.paths import results_file
from harness.report import paper_report as report

store = os.environ.get("ASTRA_STORE") or str(results_file("results.parquet"))  # or set ASTRA_STORE
ours = report.our_points(store)
fig7 = report.speedup_table("fig7", ours)
src = next((s for s in report.SOURCES if s in fig7.columns), None)
print(report.to_markdown(fig7[fig7[src].notna()] if src else fig7.head(0)))

# %% [markdown]
# Speedup against device count, one panel per bandwidth, paper dashed.

# %%
report.draw_panels(fig7, "devices", "bandwidth_mbps", src, plt)
plt.show()

# %%
report.summary("fig7", fig7)
