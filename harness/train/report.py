"""The ``report`` stage: the paper's accuracy tables at small scale, from the accuracy store, as markdown.

Each table holds every setting at the main run's values except the one it varies, uses the latest row per
checkpoint, and puts the paper's number for the same setting beside ours (CIFAR-100 for the ViT tables, GPT2-Small on
Wikipedia for perplexity; the paper's accuracy tables).
"""

from __future__ import annotations

import math

import pandas as pd
from omegaconf import DictConfig

from harness.models.ptq import group_for
from harness.train.common import ASTRA_ROWS, FULL_ROWS

# Paper values (arXiv 2505.19342): accuracy on CIFAR-100 (ViT-Base, 4 devices) and GPT2-S perplexity on Wikipedia.
PAPER_VIT_G = {None: 92.53, 1: 88.95, 16: 90.77, 32: 91.64}
PAPER_GPT2_G = {None: 15.79, 1: 21.46, 16: 18.84, 32: 17.39}
PAPER_DEVICES = {1: 92.53, 2: 91.86, 4: 91.64, 6: 91.35, 8: 91.14}  # G=32
PAPER_LAMBDA = {0.0: (99.98, 89.91), 0.1: (99.97, 90.02), 0.3: (99.98, 90.13), 1.0: (99.98, 90.77)}  # G=16
PAPER_DCT = {1: (81.82, 88.95), 16: (88.93, 90.77), 32: (90.79, 91.64)}  # beta=5e-4, single -> distributed
# Table 5 (ImageNet, ViT-Base, 4 devices): top-1 at FP32 / 8-bit / 4-bit weights
PAPER_PTQ = {None: (80.32, 80.27, 80.19), 1: (77.39, 77.32, 76.82), 16: (78.80, 78.76, 78.43),
             32: (80.28, 80.26, 79.78)}
# Table 11 (Llama-3-8B, Wikipedia): perplexity, and with 5 % packet loss without retransmission
PAPER_LOSS = {None: (5.8118, None), 1: (7.7336, 7.7294), 16: (7.5879, 7.5900), 32: (7.4360, 7.4431)}
# Table 9 (ImageNet, ViT-Base, 4 devices, G=32, random token splits): FPAR quintile bins and mean accuracy
PAPER_FPAR = [((0.2501, 0.2932), 78.89), ((0.2932, 0.3196), 78.96), ((0.3196, 0.3516), 79.39),
              ((0.3516, 0.4020), 79.62), ((0.4020, 0.7461), 79.87)]
PAPER_BETA = {0.0: {1: 88.85, 16: 90.46, 32: 91.42}, 0.25: {1: 88.75, 16: 89.7, 32: 89.97},
              "best": {1: 88.95, 16: 90.77, 32: 91.64}}

# per model kind: the paper's metric against G, how its column is headed, and the table it comes from
PAPER_GROUPS = {"vit": (PAPER_VIT_G, "paper (CIFAR-100)", "1"),
                "gpt2": (PAPER_GPT2_G, "paper (GPT2-S, Wikipedia)", "3"),
                "llama": ({g: v[0] for g, v in PAPER_LOSS.items()}, "paper (Llama-3-8B, Wikipedia)", "6")}

KEYS = ["groups", "codebook_size", "devices", "noise_lambda", "commitment_beta", "dct", "split", "noise_cov",
        "ema_decay"]


def _fmt(x, nd=2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if abs(x) >= 0.1 or x == 0 else f"{x:.2g}"
    return str(x)


def latest(df: pd.DataFrame, task: str, seed: int | None = None) -> pd.DataFrame:
    """The latest row per checkpoint, metric and split of ``task`` (and ``seed``)."""
    df = df[df["task"] == task]
    if seed is not None:
        df = df[df["seed"] == seed]
    astra = df["method"] == ASTRA_ROWS
    df = df.copy()
    for col, default in (("noise_cov", "full"), ("ema_decay", 0.99)):  # rows written before these columns existed
        if col not in df.columns:
            df[col] = None
        df.loc[astra & df[col].isna(), col] = default
    if "checkpoint_status" in df.columns:  # a stopped (partial) fine-tuning run is not a result
        df = df[df["checkpoint_status"].isna() | (df["checkpoint_status"] == "complete")]
    return df.sort_values("timestamp", kind="stable").groupby(["variant", "metric", "eval_split"],
                                                              dropna=False).tail(1)


class Lookup:
    def __init__(self, df: pd.DataFrame, main: dict, vit: bool):
        self.df, self.main, self.vit = df, main, vit

    def rows(self, **kw) -> pd.DataFrame:
        df = self.df[self.df["method"] == ASTRA_ROWS]
        want = {**self.main, **kw}
        if not self.vit:
            want.pop("dct", None)
        for k, v in want.items():
            col = df[k]
            df = df[(col - v).abs() < 1e-12] if isinstance(v, float) else df[col == v]
        return df

    def value(self, metric: str, eval_split: str = "test", **kw):
        df = self.rows(**kw)
        hit = df[(df["metric"] == metric) & (df["eval_split"] == eval_split)]
        return None if hit.empty else float(hit["value"].iloc[-1])

    def walls(self, **kw) -> tuple:
        df = self.rows(**kw)
        if df.empty:
            return None, None
        return float(df["train_wall_s"].iloc[-1]), float(df["eval_wall_s"].iloc[-1])

    def full(self, metric: str, split: str = "test"):
        hit = self.df[(self.df["method"] == FULL_ROWS) & (self.df["metric"] == metric) & (self.df["eval_split"] == split)]
        return None if hit.empty else float(hit["value"].iloc[-1])


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def seed_table(df: pd.DataFrame, main: dict, vit: bool, groups: list[int], dct_off: list[int], metric: str,
               seeds: list[int]) -> str:
    """Mean ± std over seeds of the G table (and single-CLS rows), when the store holds more than one seed."""
    rows = []
    settings = [("full", None, None)] + [(f"G={g}", g, True) for g in groups] + \
        [(f"G={g}, single CLS", g, False) for g in dct_off]
    for label, g, dct in settings:
        vals = []
        for s in seeds:
            look = Lookup(latest(df, df["task"].iloc[0], s), main, vit)
            v = look.full(metric) if g is None else look.value(metric, groups=g, **({"dct": dct} if vit else {}))
            if v is not None:
                vals.append(v)
        if vals:
            sd = pd.Series(vals).std() if len(vals) > 1 else float("nan")
            rows.append([label, len(vals), float(pd.Series(vals).mean()), sd, ", ".join(f"{v:.2f}" for v in vals)])
    return _table(["setting", "seeds", "mean", "std", "per seed"], rows)


def build_tables(df: pd.DataFrame, cfg: DictConfig, task_name: str, vit: bool, hidden: int, layers: int,
                 kind: str = "gpt2") -> str:
    all_rows = df[df["task"] == task_name]
    df = latest(df, task_name, int(cfg.seed))
    if df.empty:
        return f"no accuracy rows for task {task_name} yet: run the evaluate stage"
    main = {k: cfg.astra[k] for k in KEYS}
    main = {k: (float(v) if isinstance(v, float) else v) for k, v in main.items()}
    main["groups"], main["codebook_size"], main["devices"] = int(main["groups"]), int(main["codebook_size"]), \
        int(main["devices"])
    look = Lookup(df, main, vit)
    metric = "top1" if vit else "ppl"
    name = "top-1 %" if vit else "perplexity"
    s = cfg.suite
    k = main["codebook_size"]
    bits_full = layers * hidden * 32
    title = (f"# astra-train tables: task {task_name} (K={k}, N={main['devices']}, λ={main['noise_lambda']:g}, "
             f"β={main['commitment_beta']:g}" + (f", DCT={'on' if main['dct'] else 'off'}" if vit else "")
             + " unless varied)\n")
    parts = [title]

    full = look.full(metric)
    paper_g, paper_name, paper_table = PAPER_GROUPS["vit" if vit else kind]
    groups = sorted({main["groups"], *[int(g) for g in s.groups]})
    rows = [["full", bits_full, "–", full, "–", "–", "–", "–", paper_g[None], None, None]]
    for g in groups:
        v = look.value(metric, groups=g)
        if v is None:
            continue
        bits = layers * g * int(math.log2(k))
        tw, ew = look.walls(groups=g)
        rows.append([g, bits, bits_full / bits, v, v - full if full is not None else None,
                     look.value(f"{metric}_fp", groups=g), look.value("quant_rel_mse", groups=g), look.value("runtime_agreement", groups=g),
                     paper_g.get(g), tw, ew])
    parts.append(f"## {name} vs groups G (paper Table {paper_table})\n")
    parts.append(_table(["G", "bits/token", "CR", name, "Δ vs full", "same weights, full precision",
                         "rel. quant. MSE", "runtime agreement",
                         paper_name, "fine-tune s", "eval s"], rows))

    ptq = sorted({int(m.split("_w")[-1]) for m in df["metric"].unique() if m.startswith(f"{metric}_w")}, reverse=True)
    if ptq:
        rows = []
        for g in [None, *groups]:
            fp = full if g is None else look.value(metric, groups=g)
            if fp is None:
                continue
            ours = [look.full(f"{metric}_w{b}") if g is None else look.value(f"{metric}_w{b}", groups=g) for b in ptq]
            paper = PAPER_PTQ.get(g) if vit else None
            rows.append(["full" if g is None else f"ASTRA G={g}", fp, *ours,
                         *[None if o is None else o - fp for o in ours],
                         " / ".join(f"{x:.2f}" for x in paper) if paper else None])
        parts.append(f"\n## {name} after post-training weight quantization (paper Table 5)\n")
        group = cfg.evaluate.get("weight_group")
        scales = "; ".join(f"{b}-bit: " + (f"per {g} input columns" if (g := group_for(b, group)) else
                                           "a scale per output channel") for b in ptq)
        parts.append(f"Block linears rounded to symmetric integers ({scales}); ASTRA's codebooks unchanged. "
                     "Compute stays fp32, so no latency column: see docs/accuracy.md (\"Weight quantization\").\n")
        parts.append(_table(["model", "fp32", *[f"{b}-bit" for b in ptq], *[f"Δ {b}-bit" for b in ptq],
                             "paper fp32 / 8 / 4 (ImageNet)" if vit else "paper"], rows))

    loss = sorted({float(m.split("_loss")[-1]) for m in df["metric"].unique() if m.startswith(f"{metric}_loss")})
    if loss:
        rows = []
        for g in groups:
            clean = look.value(metric, groups=g)
            if clean is None:
                continue
            ours = [look.value(f"{metric}_loss{p:g}", groups=g) for p in loss]
            other = "next_token_acc" if not vit else None
            paper = PAPER_LOSS.get(g) if not vit else None
            rows.append([f"ASTRA G={g}", clean, *ours, *[None if o is None else o - clean for o in ours],
                         *([look.value(f"{other}_loss{p:g}", groups=g) for p in loss] if other else []),
                         " / ".join("–" if x is None else f"{x:.4f}" for x in paper) if paper else None])
        fill = str(cfg.evaluate.get("index_loss_fill", "mask"))
        parts.append(f"\n## {name} with lost indices (paper Table 11)\n")
        parts.append("A fraction p of the remote tokens' indices never arrives and is not retransmitted (drawn per "
                     "block, sender and receiver); "
                     + ("a lost token's key is left out of attention (`index_loss_fill=mask`)." if fill == "mask"
                        else "a lost token is attended as a zero vector (`index_loss_fill=zero`).")
                     + " The paper's column is Llama-3-8B at 5 % packet loss.\n")
        parts.append(_table(["model", "p = 0", *[f"p = {p:g} %" for p in loss], *[f"Δ {p:g} %" for p in loss],
                             *([f"next-byte top-1 % at {p:g} %" for p in loss] if not vit else []),
                             "paper ppl / with 5 % loss (Llama-3-8B)" if not vit else "paper"], rows))

    quint = "test_random_split"
    fpar_groups = [g for g in groups if look.value(f"{metric}_fparq1", quint, groups=g) is not None]
    if fpar_groups:
        rows = []
        for q in range(1, 6):
            lo = look.value(f"fpar_q{q}_lo", quint, groups=fpar_groups[-1])
            hi = look.value(f"fpar_q{q}_hi", quint, groups=fpar_groups[-1])
            mean = look.value(f"fpar_q{q}_mean", quint, groups=fpar_groups[-1])
            paper = PAPER_FPAR[q - 1] if vit else None
            rows.append([q, None if lo is None else f"[{lo:.4f}, {hi:.4f}]", mean,
                         *[look.value(f"{metric}_fparq{q}", quint, groups=g) for g in fpar_groups],
                         f"[{paper[0][0]}, {paper[0][1]}]: {paper[1]}" if paper else None])
        parts.append(f"\n## {name} per FPAR quintile on random uneven splits (paper Table 9)\n")
        parts.append(f"Every test sample gets its own random token-to-device map over {main['devices']} devices "
                     "(random share sizes, random positions); FPAR = Σ n_k² / T². Bins of "
                     f"G={fpar_groups[-1]}'s samples shown (every G draws the same maps).\n")
        parts.append(_table(["quintile", "FPAR bin", "mean FPAR", *[f"G={g}" for g in fpar_groups],
                             "paper (ImageNet, G=32): bin: top-1" if vit else "paper"], rows))

    if len(s.devices):
        gd = int(s.get("devices_groups", main["groups"]))
        ns = sorted({main["devices"], *[int(n) for n in s.devices]})
        rows = [[1, full, "–", PAPER_DEVICES.get(1) if vit else None, None]]
        for n in ns:
            v = look.value(metric, groups=gd, devices=n)
            if v is not None:
                rows.append([n, v, v - full if full is not None else None, PAPER_DEVICES.get(n) if vit else None,
                             look.walls(groups=gd, devices=n)[0]])
        parts.append(f"\n## {name} vs devices N at G={gd} (paper Table 2)\n")
        parts.append(_table(["devices", name, "Δ vs full", "paper (CIFAR-100)", "fine-tune s"], rows))

    if len(s.noise_lambda):
        gl = int(s.get("lambda_groups", main["groups"]))
        lams = sorted({main["noise_lambda"], *[float(x) for x in s.noise_lambda]})
        rows = []
        for lam in lams:
            te = look.value(metric, groups=gl, noise_lambda=lam)
            tr = look.value(metric, "train", groups=gl, noise_lambda=lam)
            if te is None:
                continue
            p = PAPER_LAMBDA.get(lam, (None, None)) if vit else (None, None)
            rows.append([f"{lam:g}", tr, te, (tr - te) if (tr is not None and vit) else None, p[0], p[1],
                         look.walls(groups=gl, noise_lambda=lam)[0]])
        parts.append(f"\n## NAVQ noise λ at G={gl} (paper Table 12)\n")
        parts.append(_table(["λ", f"train {name}", f"test {name}", "gap", "paper train", "paper val",
                             "fine-tune s"], rows))

    if vit and len(s.dct_off_groups):
        rows = []
        for g in sorted(int(x) for x in s.dct_off_groups):
            single = look.value(metric, groups=g, dct=False)
            dist = look.value(metric, groups=g, dct=True)
            if single is None or dist is None:
                continue
            p = PAPER_DCT.get(g, (None, None))
            rows.append([g, single, dist, dist - single, p[0], p[1], (p[1] - p[0]) if p[0] else None])
        parts.append("\n## single vs distributed class token (paper Table 13, β=5e-4 row)\n")
        parts.append(_table(["G", "single CLS", "distributed (DCT)", "gain", "paper single", "paper DCT",
                             "paper gain"], rows))
    seeds = sorted(int(x) for x in all_rows["seed"].dropna().unique())
    if len(seeds) > 1:
        parts.append(f"\n## over seeds {', '.join(map(str, seeds))} (every stage re-run per seed: base model, "
                     "k-means, fine-tuning)\n")
        parts.append(seed_table(all_rows, main, vit, groups, [int(x) for x in s.dct_off_groups] if vit else [],
                                metric, seeds))

    if len(s.beta):
        bgs = sorted({int(x) for x in (s.beta_groups or [main["groups"]])})
        betas = sorted({main["commitment_beta"], *[float(x) for x in s.beta]})
        rows = []
        for b in betas:
            vals = [look.value(metric, groups=g, commitment_beta=b) for g in bgs]
            pap = [PAPER_BETA.get(b, PAPER_BETA["best"] if b == main["commitment_beta"] else {}).get(g) if vit
                   else None for g in bgs]
            rows.append([f"{b:g}", *vals, *pap])
        parts.append("\n## commitment weight β (paper Table 14; the paper's 'best' row is β∈{1,2,5}e-4)\n")
        parts.append(_table(["β", *[f"G={g}" for g in bgs], *[f"paper G={g}" for g in bgs]], rows))

    ks = [int(x) for x in s.get("codebook_size", [])]
    if ks:
        gk = int(s.get("codebook_groups", main["groups"]))
        rows = []
        for kk in sorted({k, *ks}):
            v = look.value(metric, groups=gk, codebook_size=kk)
            if v is not None:
                rows.append([kk, layers * gk * int(math.log2(kk)), v, look.value("quant_rel_mse", groups=gk,
                                                                                   codebook_size=kk),
                             look.walls(groups=gk, codebook_size=kk)[0]])
        parts.append(f"\n## codebook size K at G={gk} (not published in the paper; the rebuttal's table is TBD)\n")
        parts.append(_table(["K", "bits/token", name, "rel. quant. MSE", "fine-tune s"], rows))

    rs = [int(g) for g in s.get("random_split_groups", [])]
    if rs:
        rows = []
        for g in rs:
            contiguous_trained = look.value(metric, groups=g)
            r_cont = look.value(metric, groups=g, split="random")
            r_rand = look.value(metric, "test_random_split", groups=g, split="random")
            fp = look.value("fpar_mean", "test_random_split", groups=g, split="random")
            rows.append([g, contiguous_trained, r_cont, r_rand, fp])
        parts.append("\n## random token-to-device splits in training (paper App. D)\n")
        parts.append(_table(["G", "trained contiguous, eval contiguous", "trained random, eval contiguous",
                             "trained random, eval random splits", "mean FPAR of random splits"], rows))
    return "\n".join(parts) + "\n"
