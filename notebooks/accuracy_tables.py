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
# # Accuracy tables: Table 1 (groups) and Table 2 (devices) at small scale, beside the paper's
#
# Loads an `astra-train` accuracy store (`ASTRA_ACCURACY`, default `results/accuracy.parquet`). Our tasks are
# small local ones (digits ViT, Python-docs GPT2), so absolute numbers differ from the paper's CIFAR-100 /
# ImageNet ones; what carries over is the *cost* of ASTRA against the full-precision model and how it moves with
# G and N. Make the rows with `astra-train task=digits suite=paper` (or `bash scripts/train_tables.sh`).

# %%
import os

import matplotlib.pyplot as plt
import pandas as pd

from harness.paths import results_file
from harness.train.report import PAPER_DEVICES, PAPER_VIT_G

path = os.environ.get("ASTRA_ACCURACY") or str(results_file("accuracy.parquet"))  # or set ASTRA_ACCURACY
acc = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
acc = acc.sort_values("timestamp").drop_duplicates(["task", "variant", "metric", "eval_split"], keep="last")
top1 = acc[(acc["metric"] == "top1") & (acc["eval_split"] == "test")]
print(f"{len(acc)} rows, tasks {sorted(acc['task'].unique())}")

# %% [markdown]
# ## Table 1: accuracy against G (bits per token = L·G·log2 K)

# %%
full = top1[top1["method"] == "full"]["value"]
full_acc = float(full.iloc[-1]) if len(full) else float("nan")
rows = [{"G": "full", "bits/token": None, "ours top-1": full_acc, "ours drop": 0.0, "paper CIFAR-100":
         PAPER_VIT_G[None], "paper drop": 0.0}]
astra = top1[(top1["method"] == "astra") & (top1["split"] == "contiguous")]
for g, part in astra.groupby("groups"):
    v = float(part["value"].iloc[-1])
    p = PAPER_VIT_G.get(int(g))
    rows.append({"G": int(g), "bits/token": int(part["bits_per_token"].iloc[-1]), "ours top-1": v,
                 "ours drop": full_acc - v, "paper CIFAR-100": p,
                 "paper drop": None if p is None else PAPER_VIT_G[None] - p})
table1 = pd.DataFrame(rows)
table1

# %% [markdown]
# ## Table 2: accuracy against the device count

# %%
dev = astra.groupby("devices")["value"].last()
table2 = pd.DataFrame({"ours top-1": dev, "paper (G=32)": [PAPER_DEVICES.get(int(n)) for n in dev.index]})
table2

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
t = table1[table1["G"] != "full"]
ax.bar([str(g) for g in t["G"]], t["ours drop"], width=0.4, label="ours (drop vs full)", align="edge")
ax.bar([str(g) for g in t["G"]], t["paper drop"].fillna(0), width=-0.4, label="paper (drop vs full)", align="edge")
ax.set(xlabel="G", ylabel="top-1 drop (points)", title="ASTRA's accuracy cost against G")
ax.legend()
plt.show()
