"""A sweep's job configs, composed once per set of group choices (harness.sweep.compose), equal Hydra's own
composition of each job."""

from __future__ import annotations

import itertools

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.types import RunMode
from omegaconf import OmegaConf

from harness.paths import CONF_DIR
from harness.spec import schema  # noqa: F401 - registers the defaults with Hydra
from harness.sweep import compose


def test_cached_composition_equals_hydras():
    compose.install()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))
    master = loader.load_configuration("config", ["experiment=paper_fig1", "hydra.sweep.dir=/tmp/x"],
                                       run_mode=RunMode.MULTIRUN)
    grid = itertools.product(["method=single", "method=astra", "method=sp"],
                             ["++method.groups=1", "++method.groups=16"],
                             ["network.bandwidth_mbps=10", "network.bandwidth_mbps=500"], ["devices=4", "devices=2"],
                             ["model=vit_tiny", "model=vit_base"])
    jobs = [["experiment=paper_fig1", *g] for g in grid]
    jobs += [["method=tp", "fault.crash_rank=1"], ["network=mininet", "device=cpu2"]]
    seen = 0
    for overrides in jobs:
        want = compose._ORIGINAL(loader, master, overrides)
        got = loader.load_sweep_config(master, overrides)
        assert OmegaConf.to_container(got) == OmegaConf.to_container(want), overrides
        assert OmegaConf.is_struct(got) == OmegaConf.is_struct(want)
        seen += 1
    # the groups of 50 jobs composed a handful of times: method x model, and the two odd jobs
    assert len(loader.__dict__["_astra_composed"]) == 3 * 2 + 2
    assert seen == len(jobs)
