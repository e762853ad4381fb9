"""The typed run spec: built once from the composed Hydra config, validated in one place, serialised to every rank.

    cfg (Hydra) --build_spec--> RunSpec --Method.prepare--> RunSpec (codebooks, weights) --Backend.run--> reports

Everything a point depends on is a field here; ``point_key`` hashes the fields that change what is measured, so
two points with the same key are the same experiment. ``to_json``/``from_json`` carry the spec to the ranks.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

from omegaconf import OmegaConf

from harness.errors import ConfigError, check_writable
from harness.models import ModelConfig
from harness.network import BACKENDS
from harness.options import did_you_mean, parse_options
from harness.parallel import METHODS, partition
from harness.paths import CONF_DIR
from harness.spec.schema import (
    GROUP_SCHEMAS,
    MODEL_FIELDS,
    Knobs,
    RunSpec,
    not_an_option,
    option_keys,
    owners,
    registry,
)

# ``${astra_sweep_id:}``: an id drawn once per sweep (resolvers cache their value in the config, and Hydra copies
# that cache into every job's config, a launcher's remote jobs included): it makes the sweep's directory, and so
# the names of its jobs' parts in a dataset store, unique even for sweeps started in the same second.
OmegaConf.register_new_resolver("astra_sweep_id", lambda: uuid.uuid4().hex[:8], use_cache=True, replace=True)


# ---------------------------------------------------------------------------------------------------- the builders
def model_config(values: dict, tokens: int, check_positions: bool = True) -> ModelConfig:
    """A checked ModelConfig from the ``model`` group's values, built for ``tokens`` content tokens."""
    values = dict(values)
    for key in ("tokens", "extra"):
        if key in values:
            raise ConfigError(f"model.{key} is not a model option: the token count is the top-level tokens=")
    mc = parse_options(ModelConfig, values, "model.", f"model={values.get('name')}")
    mc.tokens = tokens
    if mc.kind not in ("vit", "gpt2", "llama"):
        raise ConfigError(f"model.kind={mc.kind} is unknown: use vit, gpt2 or llama")
    for key in ("layers", "hidden", "heads", "mlp_ratio", "patch_size", "channels", "num_classes", "vocab_size",
                "max_positions"):
        if getattr(mc, key) < 1:
            raise ConfigError(f"model.{key}={getattr(mc, key)} must be >= 1")
    if not mc.ln_eps > 0:
        raise ConfigError(f"model.ln_eps={mc.ln_eps} must be > 0")
    from harness.models.ptq import BITS, group_for, misfit_width

    if mc.weight_bits not in BITS:
        raise ConfigError(f"model.weight_bits={mc.weight_bits} is not supported: use 32 (no quantization), 8 or 4")
    if mc.weight_group is not None and mc.weight_group < 0:
        raise ConfigError(f"model.weight_group={mc.weight_group} must be >= 0 (0: one scale per row)")
    group = group_for(mc.weight_bits, mc.weight_group)
    bad = misfit_width(mc, group) if mc.weight_bits < 32 else None
    if bad:
        what = f"model.weight_group={group}" + ("" if mc.weight_group is not None else
                                                f" (the {mc.weight_bits}-bit default)")
        raise ConfigError(f"{what} does not divide the layers' input width {bad}: set model.weight_group to "
                          "a divisor of model.hidden, or 0 for one scale per row")
    if mc.hidden % mc.heads:
        raise ConfigError(f"model.hidden={mc.hidden} is not divisible by model.heads={mc.heads}: change one of them")
    if mc.kv_heads is not None and (mc.kv_heads < 1 or mc.heads % mc.kv_heads):
        raise ConfigError(f"model.kv_heads={mc.kv_heads} must divide model.heads={mc.heads} (grouped-query "
                          "attention: each key/value head serves heads/kv_heads query heads)")
    if mc.kind == "llama" and mc.head_dim % 2:
        raise ConfigError(f"{mc.name}'s head width {mc.head_dim} is odd: rotary positions rotate pairs of channels")
    if mc.mlp_hidden is not None and mc.mlp_hidden < 1:
        raise ConfigError(f"model.mlp_hidden={mc.mlp_hidden} must be >= 1")
    if check_positions and mc.decoder and tokens > mc.max_positions:
        raise ConfigError(f"tokens={tokens} exceeds {mc.name}'s {mc.max_positions} positions (model.max_positions): "
                          f"lower tokens or raise model.max_positions")
    if mc.weights and not Path(mc.weights).is_dir():
        raise ConfigError(f"model.weights={mc.weights} is not a directory: pass a directory with an HF config.json "
                          "and weights")
    if mc.weights:
        mc.weights = str(Path(mc.weights).resolve())  # the ranks run elsewhere (cwd = the repository)
    return mc


def group_options(group: str, values: dict, in_sweep: bool):
    """The typed options of the chosen method/backend. Inside a -m sweep, a knob of *another* choice of the group
    (``method.groups`` while sweeping sp and astra) is dropped; in a single run it is refused."""
    reg = registry(group)
    name = values.get("name")
    if name not in reg:
        raise ConfigError(f"unknown {group} '{name}'{did_you_mean(str(name), reg)}: choose one of "
                          f"{', '.join(sorted(reg))}")
    own = option_keys(group, name)
    kept = {}
    for k, v in values.items():
        if k not in own and owners(group, k):
            if in_sweep:
                continue
            raise not_an_option(group, [name], k)
        kept[k] = v
    return parse_options(reg[name].Options, kept, f"{group}.", f"{group}={name}")


def token_shares(split, cores: list[float], tokens: int, devices: int, cls) -> list[int] | None:
    """Content tokens per rank for ``split`` (None: the even partition). ``proportional``: shares in proportion to
    the devices' virtual cores (largest remainders, at least one token each); a list: as given."""
    if split is None or split == "even" or devices == 1:
        return None
    if not getattr(cls, "splits_tokens", False):
        raise ConfigError(f"split={split} gives devices uneven token shares, which only sp and astra do: remove "
                          f"split (or split=even) for method={cls.name}")
    if split == "proportional":
        weights = cores[:devices]
        raw = [tokens * w / sum(weights) for w in weights]  # largest remainders, then at least one token each
        shares = [int(r) for r in raw]
        for i in sorted(range(devices), key=lambda i: (-(raw[i] - int(raw[i])), i))[:tokens - sum(shares)]:
            shares[i] += 1
        for i in range(devices):
            if shares[i] == 0:
                shares[i] = 1
                shares[max(range(devices), key=lambda j: shares[j])] -= 1
    elif isinstance(split, (list, tuple)):
        try:
            shares = [int(x) for x in split]
        except (TypeError, ValueError):
            raise ConfigError(f"split={list(split)} must list whole token counts, one per device") from None
        if any(int(x) != float(x) for x in split):
            raise ConfigError(f"split={list(split)} must list whole token counts, one per device")
        if len(shares) != devices:
            raise ConfigError(f"split lists {len(shares)} shares for {devices} devices: give one per device")
        if min(shares) < 1:
            raise ConfigError(f"split={shares} gives a device no tokens: every share must be at least 1")
        if sum(shares) != tokens:
            raise ConfigError(f"split={shares} sums to {sum(shares)}, not tokens={tokens}: make the shares add up")
    else:
        raise ConfigError(f"split={split} is not a split: use even, proportional or a list of token counts")
    even = [e - s for s, e in partition(tokens, devices)]
    return None if shares == even else shares


def build_spec(cfg, in_sweep: bool = False, check_method: bool = True) -> RunSpec:
    """The RunSpec of a composed config (a DictConfig or a plain dict). Raises ConfigError with one line.
    ``check_method=False`` skips the method's own check (to describe a point the method refused)."""
    from omegaconf import DictConfig, OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg))
    c.pop("hydra", None)
    groups = {"model", "method", "network", *GROUP_SCHEMAS}
    knobs = {k: v for k, v in c.items() if k not in groups}
    top = parse_options(Knobs, knobs, "", "astra-bench")
    for g in groups:
        if not isinstance(c.get(g), dict):
            how = f"set {g}.<key>=<value>" if g in ("fault", "results", "tracking") else f"choose one with {g}=<name>"
            raise ConfigError(f"{g} is a group of settings, not {c.get(g)!r}: {how}")
    mc = model_config(c["model"], top.tokens)
    method = group_options("method", c["method"], in_sweep)
    network = group_options("network", c["network"], in_sweep)
    sub = {k: parse_options(schema, c[k], f"{k}.", k) for k, schema in GROUP_SCHEMAS.items()}
    cls = METHODS[method.name]
    devices = cls.devices(top.devices)
    if top.devices > top.tokens:
        raise ConfigError(f"devices={top.devices} must be between 1 and tokens={top.tokens}: lower devices or "
                          "raise tokens")
    for key in ("crash_rank", "hang_rank"):
        r = getattr(sub["fault"], key)
        if r is not None and r >= devices:
            raise ConfigError(f"fault.{key}={r} is not a rank of this {devices}-device point: use 0..{devices - 1}")
    if Path(top.cache_dir).exists() and not Path(top.cache_dir).is_dir():
        raise ConfigError(f"cache_dir={top.cache_dir} is a file: pass a directory")
    check_writable(top.cache_dir, "cache_dir")
    from harness.emulation import dilation

    dev = sub["device"]
    if dev.compute == "replay":
        spec = replay_spec(top, mc, method, network, devices, c, sub, cls)
        if check_method:
            cls.check(spec)
        return spec
    if dev.profile != "measure":
        raise ConfigError(f"device.profile={dev.profile} is the profile a replay uses: add device.compute=replay, "
                          "or remove it")
    if dev.accelerator != "cpu":
        raise ConfigError(f"device.accelerator={dev.accelerator} is for recording profiles (astra-profile); "
                          "astra-bench's ranks compute on the CPU (device.compute=replay replays a GPU's profile)")
    # k from the configured device count: the single-device baseline of an N-device point gets the same device
    k = dilation.factor(dev, top.devices, BACKENDS[network.name].enforces_cores)
    virt = dilation.cores_of(dev, top.devices)
    quota = virt[0] / k if k is not None else dilation.reference_quota(dev, top.devices)
    quotas = [v / k for v in virt[:devices]] if k is not None and len(set(virt)) > 1 else []
    shares = token_shares(top.split, virt, top.tokens, devices, cls)
    poll = resolve_idle_poll(dev.idle_poll, BACKENDS[network.name].enforces_cores)
    tick_us = resolve_tick(dev.tick_us, BACKENDS[network.name].enforces_cores)
    spread = resolve_spread(dev, BACKENDS[network.name].enforces_cores, k,
                            [v / k for v in virt[:devices]] if k is not None else [quota] * devices)
    spec = RunSpec(model=mc, method=method, network=network, devices=devices, config=c, dilation=k,
                   quota_cores=quota, quotas=quotas, shares=shares, idle_poll=poll, tick_us=tick_us,
                   cores_of_ranks=spread, **{k: v for k, v in dataclasses.asdict(top).items() if k != "devices"},
                   **sub)
    if check_method:
        cls.check(spec)
    return spec


def replay_spec(top, mc, method, network, devices, c, sub, cls) -> RunSpec:
    """The RunSpec of a replayed point: no dilation (links at their true rates), devices not held to CPU quotas
    (they sleep through their compute), no solo samples (the verdict checks the wake-ups instead)."""
    from harness.emulation import dilation

    dev = sub["device"]
    if dev.dilation != "auto" and float(dev.dilation) != 1.0:
        raise ConfigError(f"device.dilation={dev.dilation:g}: a replay does not dilate time (its devices do not "
                          "compute here): remove it")
    if dev.profile == "reference" and dev.reference_ms is None:
        raise ConfigError("device.profile=reference scales the profile to device.reference_ms: set "
                          "device.reference_ms=<the single device's latency in ms>")
    if dev.reference_ms is not None and dev.profile != "reference":
        raise ConfigError(f"device.reference_ms={dev.reference_ms:g} under a replay scales its profile: add "
                          "device.profile=reference")
    if dev.accelerator != "cpu":
        raise ConfigError(f"device.accelerator={dev.accelerator} records profiles (astra-profile); a replay reads "
                          "one: pass its file as device.profile")
    if len(set(dilation.cores_of(dev, top.devices))) > 1:
        raise ConfigError("device.cores lists different speeds: a replay gives each device its profile's compute; "
                          "record the devices' own profiles instead")
    for key, why in (("verify", "replayed ranks compute nothing to compare"),
                     ("interleave", "the single-device baseline is replayed as a point of its own")):
        if getattr(top, key):
            raise ConfigError(f"{key}=true with device.compute=replay: {why}; remove it or use device.compute=real")
    if dev.profile not in ("measure", "reference") and not Path(dev.profile).exists():
        raise ConfigError(f"device.profile={dev.profile} does not exist: record profiles with astra-profile "
                          "(device.profile=<folder>), or use device.profile=measure")
    knobs = {k: v for k, v in dataclasses.asdict(top).items() if k != "devices"}
    knobs["solo_repeats"] = 0
    shares = token_shares(top.split, dilation.cores_of(dev, top.devices), top.tokens, devices, cls)
    poll = resolve_idle_poll(dev.idle_poll, BACKENDS[network.name].enforces_cores)
    return RunSpec(model=mc, method=method, network=network, devices=devices, config=c, dilation=1.0,
                   quota_cores=float(dilation.machine_cores()), quotas=[], shares=shares, idle_poll=poll, tick_us=0,
                   cores_of_ranks=None, **knobs, **sub)


def resolve_spread(dev, enforced: bool, k: float | None, quotas: list[float]) -> list[int] | None:
    """``device.spread`` on this machine: each rank's core, or None (devices float over the cores)."""
    from harness.emulation import dilation

    if dev.spread is False or (dev.spread == "auto" and (not enforced or dev.pin_cores is not None
                                                         or dev.reference_ms is not None)):
        return None
    if not enforced:
        raise ConfigError("device.spread=true pins Mininet's devices to cores: remove it, or use network=mininet")
    if dev.pin_cores is not None:
        raise ConfigError(f"device.spread=true gives each device a core, device.pin_cores={dev.pin_cores} puts them "
                          "all on the same ones: remove one of them")
    if dev.reference_ms is not None:
        raise ConfigError("device.spread=true needs each device's quota before the run, device.reference_ms "
                          "measures it during the run: remove one of them")
    where = dilation.placement(quotas, dilation.machine_cores())
    if where is None and dev.spread is True:
        raise ConfigError(f"device.spread=true: {len(quotas)} devices of {max(quotas):.3g} real cores (k={k:.3g}) "
                          f"cannot each be given a core of this machine's {dilation.machine_cores()} without "
                          "overfilling one: use device.spread=auto or false")
    return where


def resolve_idle_poll(value, enforced: bool) -> bool:
    """``device.idle_poll`` on this machine: True only on a backend that holds devices to CPU quotas."""
    from harness.emulation import idle

    if value == "auto":
        return enforced and idle.available()
    if value and not enforced:
        raise ConfigError("device.idle_poll=true holds the CPUs polling for Mininet's throttled devices: remove it, "
                          "or use network=mininet")
    if value and not idle.available():
        raise ConfigError(f"device.idle_poll=true needs a writable {idle.QOS} (root, and a kernel with PM QoS): run "
                          "as root, or set device.idle_poll=false")
    return bool(value)


def resolve_tick(value, enforced: bool) -> int:
    """``device.tick_us`` on this machine: the ticker's interval in µs, 0 when off (and always off on a backend
    that does not hold devices to CPU quotas)."""
    from harness.emulation import tick

    if value == "auto":
        return tick.DEFAULT_US if enforced and tick.available() else 0
    if value == 0:
        return 0
    if value != int(value) or not tick.MIN_US <= value <= tick.MAX_US:
        raise ConfigError(f"device.tick_us={value:g} is not valid: use 0 (off), auto, or whole µs from {tick.MIN_US} "
                          f"to {tick.MAX_US}")
    if not enforced:
        raise ConfigError("device.tick_us ticks for Mininet's CPU quotas: set device.tick_us=0, or use "
                          "network=mininet")
    if not tick.available():
        raise ConfigError(f"device.tick_us={int(value)} needs cyclictest with a real-time priority (package rt-tests, "
                          "run as root): install rt-tests (scripts/setup.sh does), or set device.tick_us=0")
    return int(value)


def compose(overrides: list[str] | None = None, config_name: str = "config", hydra_node: bool = False,
            dirs=()):
    """The composed Hydra config for ``overrides`` (e.g. ``["model=vit_tiny", "method=sp"]``), outside any app and
    without touching a running one (``hydra_node``: keep the ``hydra`` node, e.g. an experiment's sweep). ``dirs``:
    the user's own config folders, searched before conf/ as Hydra's ``--config-dir`` adds them."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.types import RunMode
    from omegaconf import open_dict

    search = create_config_search_path(str(CONF_DIR))
    for d in dirs:
        search.prepend(provider="command-line", path=f"file://{d}", anchor=SearchPathQuery(provider="schema"))
    loader = ConfigLoaderImpl(config_search_path=search)
    cfg = loader.load_configuration(config_name, list(overrides or []), run_mode=RunMode.MULTIRUN)
    if not hydra_node:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def model_from_conf(name: str, tokens: int, overrides: dict | None = None, check_positions: bool = True) -> ModelConfig:
    """The ModelConfig of ``conf/model/<name>.yaml`` (composed by Hydra) with field ``overrides``."""
    from omegaconf import OmegaConf

    names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    if name not in names:
        raise ConfigError(f"model '{name}' is unknown{did_you_mean(name, names)}: choose one of {', '.join(names)}")
    values = OmegaConf.to_container(compose([f"model={name}"]).model, resolve=True)
    values.update(overrides or {})
    return model_config(values, tokens, check_positions)


def make_spec(model: ModelConfig, method: dict, **knobs) -> RunSpec:
    """A RunSpec built in code (astra-train's runtime check, benchmarks): the defaults of ``conf/config.yaml`` with
    this model, these method options (``{"name": "astra", ...}``, the rest from the method's config) and top-level
    ``knobs`` (devices=, tokens=, ...), validated like any other."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose([f"method={method['name']}", "network=loopback"]), resolve=True)
    cfg["method"].update(method)
    cfg.update(knobs)
    cfg["tokens"] = knobs.get("tokens", model.tokens)
    cfg["model"] = {k: v for k, v in model.to_dict().items() if k in MODEL_FIELDS}
    if model.decoder:  # a trained GPT2's position table holds max(max_positions, tokens) positions
        cfg["model"]["max_positions"] = max(model.max_positions, model.tokens)
    return build_spec(cfg)
