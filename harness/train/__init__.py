"""``astra-train``: the ASTRA accuracy pipeline (Hydra app, ``conf/train.yaml``).

    astra-train task=digits                               # base -> calibrate -> finetune -> evaluate -> report
    astra-train task=digits suite=paper                   # the paper's ablation tables at small scale
    astra-train task=pydoc suite=groups "stages=[evaluate,report]"
    astra-train task=digits stages=evaluate checkpoint=results/train/digits/runs/<variant> astra.groups=16

Stages (``stages=all`` or a list such as ``stages=[calibrate,finetune]``): ``base`` trains (or fine-tunes HF
weights into) the full-precision model, ``calibrate`` fits per-block grouped k-means codebooks on its attention
inputs, ``finetune`` trains model and codebooks jointly in the masked ASTRA simulation (EMA codebooks, commitment
β, NAVQ noise λ, split mask for N devices, DCT), ``evaluate`` measures the full model and every checkpoint
(simulation, plus the real multi-process runtime on loopback on a test batch) into the accuracy store, ``report``
prints the tables.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.config import run_hydra_app
from harness.train import options  # noqa: F401 - registers the astra block's defaults with Hydra


def parse_stages(value) -> list[str]:
    from harness.train.common import STAGES, TrainError

    items = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else str(value).split(",")
    items = [str(s).strip() for s in items if str(s).strip()]
    if items == ["all"]:
        return list(STAGES)
    bad = [s for s in items if s not in STAGES]
    if bad or not items:
        raise TrainError(f"stages={value} has unknown stage(s) {bad}: use all or a list of {', '.join(STAGES)}, "
                         'e.g. "stages=[evaluate,report]"')
    return [s for s in STAGES if s in items]


def run(cfg: DictConfig) -> None:
    import torch

    from harness.errors import atomic_write
    from harness.parallel.manifest import check_checkpoint, read_manifest
    from harness.train.calibrate import stage_calibrate
    from harness.train.checkpoint import load_base
    from harness.train.common import TrainError, log
    from harness.train.evaluate import check_quantization, index_losses, stage_evaluate
    from harness.train.report import build_tables
    from harness.train.tasks import load_task
    from harness.train.training import stage_base, stage_finetune
    from harness.train.variants import check_numbers, check_paths, check_variants, expand_suite, results_path_check

    t0 = time.perf_counter()
    stages = parse_stages(cfg.stages)
    if cfg.checkpoint and set(stages) - {"evaluate", "report"}:
        raise TrainError("checkpoint=... evaluates an existing checkpoint: use stages=evaluate (or evaluate,report)")
    results_path_check(cfg.results_path)
    check_paths(cfg)
    check_numbers(cfg)
    torch.set_num_threads(int(cfg.threads))
    task = load_task(cfg)
    if "evaluate" in stages:
        check_quantization(cfg, task.mc)
        index_losses(cfg)
    if cfg.checkpoint:
        m = read_manifest(Path(cfg.checkpoint))
        check_checkpoint(m, task.mc, int(cfg.astra.groups), int(cfg.astra.codebook_size), task.tokens,
                         str(cfg.checkpoint), f"use the task and model it was trained with ({m.get('task')})")
        variants = []
    else:
        try:
            variants = expand_suite(cfg, task.vit)
        except (TypeError, ValueError) as exc:
            raise TrainError(f"suite={cfg.suite.get('name', '?')} has a value that is not a number ({exc}): fix "
                             "the suite's lists") from None
        check_variants(task, variants, cfg)
    log(f"task {task.name}: model {task.mc.name} ({task.mc.layers} blocks, hidden {task.mc.hidden}), "
        f"{task.tokens} tokens; {len(variants)} ASTRA variant(s); stages {','.join(stages)}")
    if "base" in stages:
        stage_base(cfg, task)
    if "calibrate" in stages:
        stage_calibrate(cfg, task, variants)
    if "finetune" in stages:
        stage_finetune(cfg, task, variants)
    if "evaluate" in stages:
        stage_evaluate(cfg, task, variants)
    if "report" in stages:
        from harness.store.results import _read

        path = Path(cfg.results_path)
        if not path.exists():
            raise TrainError(f"no accuracy store at {path}: run the evaluate stage first")
        if "evaluate" not in stages:
            load_base(cfg, task)  # the model config for bits/token
        text = build_tables(_read(path), cfg, task.name, task.vit, task.mc.hidden, task.mc.layers, task.mc.kind)
        atomic_write(Path(cfg.out_dir) / "tables.md", text)
        print(text)
    log(f"done in {time.perf_counter() - t0:.0f} s")


def job(cfg: DictConfig) -> None:
    from harness.errors import ConfigError, RunFailed
    from harness.train.data import DataError

    try:
        run(cfg)
    except RunFailed as exc:
        print(f"astra-train: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except (ConfigError, DataError) as exc:
        print(f"astra-train: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def main() -> None:
    run_hydra_app("astra-train", "train", job, __doc__)


if __name__ == "__main__":
    main()
