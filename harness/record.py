"""``astra-profile``: record compute profiles on this machine, for ``device.compute=replay`` anywhere.

    astra-profile model=vit_base tokens=1024 method=astra devices=4 device.profile=profiles/
    astra-profile -m model=vit_base tokens=1024 method=single,tp,sp,astra devices=2,4,8 device.profile=profiles/
    astra-profile ... device.accelerator=cuda          # the model on the GPU, timed after torch.cuda.synchronize

Each job records one point's profile: every rank alone at this device's speed (its collectives answered locally),
one warm-up and three recorded inferences, each compute segment's median (``harness.rank.profile``). The file goes
into the folder ``device.profile`` names; copy the folder to the emulating machine and run
``astra-bench device.compute=replay device.profile=<folder> ...`` there: each point finds its own file. The settings
are astra-bench's (``astra-bench --help``); those of the network do not change a profile.
"""

from __future__ import annotations

import hashlib
import json
import sys

from omegaconf import DictConfig, open_dict

from harness.errors import ConfigError
from harness.errors import log as _log

PROG = "astra-profile"


def log(msg: str) -> None:
    _log(PROG, msg)


def job(cfg: DictConfig) -> dict | None:
    from harness.rank.profile import record_profile, recorded_layers
    from harness.spec.build import build_spec
    from harness.store.results import in_sweep

    try:
        folder, accelerator = str(cfg.device.profile), str(cfg.device.accelerator)
        if folder in ("measure", "reference"):
            raise ConfigError(f"device.profile={folder}: name the folder the profiles go into, e.g. "
                              "device.profile=profiles/")
        if accelerator == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("device.accelerator=cuda: torch sees no CUDA device here; record on the CPU "
                                  "(device.accelerator=cpu) or on a machine with a GPU and a CUDA build of torch")
        with open_dict(cfg):
            cfg.device.profile, cfg.device.accelerator, cfg.device.compute = "measure", "cpu", "real"
            cfg.network = {"name": "loopback", "port": None}  # a profile does not depend on the network
        spec = build_spec(cfg, in_sweep=in_sweep(), check_method=True)
        if recorded_layers(spec) == spec.model.layers:  # a recording on fewer blocks prepares its own files
            spec = spec.method_class.prepare(spec, log)
        profile = record_profile(spec, accelerator=accelerator)
        point = hashlib.sha256(json.dumps(profile.point, sort_keys=True).encode()).hexdigest()[:8]
        name = f"{spec.model.name}-{spec.method.name}-N{spec.devices}-T{spec.tokens}-{point}"
        path = profile.save(f"{folder}/{name}.json")  # recording a point again replaces its file
        ms = ", ".join(f"{1e3 * r.compute_s:.1f}" for r in profile.ranks)
        log(f"{name}: compute per rank {ms} ms on {profile.device['accelerator']}; wrote {path}")
        print(path, flush=True)
        return {"status": "ok", "profile": str(path)}  # a sweep counts its jobs by their status
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        if not in_sweep():
            sys.exit(2)
        return None


def main() -> None:
    from harness.config import run_hydra_app

    run_hydra_app(PROG, "config", job, __doc__)


if __name__ == "__main__":
    main()
