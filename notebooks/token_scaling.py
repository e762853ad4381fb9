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

from harness.network import paper
from harness.paths import results_file
from harness.report import paper_report as report

store = os.environ.get("ASTRA_STORE") or str(results_file("results.parquet"))  # or set ASTRA_STORE
ours = report.our_points(store)
fig8 = report.speedup_table("fig8", ours)
src = next((s for s in report.SOURCES if s in fig8.columns), None)
print(report.to_markdown(fig8[fig8[src].notna()] if src else fig8.head(0)))

# %%
prof = paper.load("compute_profile")
print(prof[prof["method"] == "single"][["tokens", "compute_ms", "source"]].to_string(index=False))

# %%
report.draw_panels(fig8, "tokens", "bandwidth_mbps", src, plt, logx=True)
plt.show()

# %%
report.summary("fig8", fig8)
