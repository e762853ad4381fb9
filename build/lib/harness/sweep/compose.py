"""Composing a sweep's jobs once per group choice instead of once per job.

Hydra composes every job of a ``-m`` sweep from scratch (its defaults tree, every YAML file, its own large ``hydra``
node) — twice, because the basic sweeper first composes each job to check it, then the launcher composes it
again to run it: about 0.4 s a compose, so a 1000-point analytic grid spent minutes composing configs for points
the backend computes in milliseconds. Yet a sweep's jobs differ mostly in plain values (``devices=4``,
``network.bandwidth_mbps=10``), and only a few in group choices (``method=astra``).

``install`` replaces Hydra's ``ConfigLoaderImpl.load_sweep_config`` for this process with one that composes a
job's *group choices* (and the sweep's Hydra overrides) once, keeps that config, and makes each job from a copy of
it with the job's value overrides applied the way Hydra applies them after composing (``_apply_overrides_to_config``),
its ``hydra.overrides.task`` and ``hydra.job.override_dirname`` set as Hydra sets them. A job whose overrides cannot
be split that way (a package override, a deletion) is composed by Hydra as before. ``tests/test_compose.py`` checks
the result equals Hydra's own composition job by job.
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf

_ORIGINAL = None


def install() -> None:
    """Use the cached composition for every sweep in this process (idempotent)."""
    global _ORIGINAL
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    if _ORIGINAL is None:
        _ORIGINAL = ConfigLoaderImpl.load_sweep_config
        ConfigLoaderImpl.load_sweep_config = load_sweep_config


def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
    """Hydra's ``load_sweep_config`` with the composition of each distinct set of group choices kept."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parsed = OverridesParser.create().parse_overrides(list(sweep_overrides))
    groups, values = [], []
    for ov in parsed:
        if ov.package is not None or ov.type == OverrideType.DEL or ov.is_hydra_override():
            return _ORIGINAL(self, master_config, sweep_overrides)
        is_group = self.repository.group_exists(ov.key_or_group.lstrip("+"))
        (groups if is_group else values).append(ov)
    cache = self.__dict__.setdefault("_astra_composed", {})
    key = (id(master_config), tuple(ov.input_line for ov in groups))
    if key not in cache:
        cache[key] = (master_config, _ORIGINAL(self, master_config, [ov.input_line for ov in groups]))
    cfg = copy.deepcopy(cache[key][1])
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    cfg.hydra.overrides.task = [ov.input_line for ov in parsed]
    job = cfg.hydra.job.config.override_dirname
    cfg.hydra.job.override_dirname = get_overrides_dirname(overrides=parsed, kv_sep=job.kv_sep,
                                                           item_sep=job.item_sep, exclude_keys=job.exclude_keys)
    OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
    return cfg
