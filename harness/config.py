"""From a composed Hydra config to a validated run spec (the JSON every rank receives).

Every check here turns bad input into one ``ConfigError`` line that names the problem and the fix, raised before
anything is started or written.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import vq
from .models import ModelConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "method", "network", "topology", "device", "experiment")
MODEL_FIELDS = set(ModelConfig.__dataclass_fields__)


class ConfigError(ValueError):
    """Bad input: the message is one line saying what is wrong and what to do."""


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_group_overrides(argv: list[str]) -> None:
    """Reject ``model=nope`` style overrides before Hydra prints a multi-line error."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS:
            continue
        for choice in value.split(","):
            if choice and choice not in available(key):
                raise ConfigError(f"unknown {key} '{choice}': choose one of {', '.join(available(key))}")


def run_hydra_app(prog: str, config_name: str, job, check) -> None:
    """Entry point of a Hydra console script: ``check(argv)`` first (a ValueError is one ``<prog>: error:`` line and
    exit 2, before Hydra's multi-line messages), SIGTERM as SystemExit so teardown runs, then ``job`` under Hydra."""
    import sys

    try:
        check(sys.argv[1:])
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    from .network.loopback import install_signal_handlers

    install_signal_handlers()
    import hydra

    hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base=None)(job)()


def model_config(cfg: DictConfig) -> ModelConfig:
    m = OmegaConf.to_container(cfg.model, resolve=True)
    unknown = set(m) - MODEL_FIELDS
    if unknown:
        raise ConfigError(f"unknown model option(s) {sorted(unknown)}: valid ones are {sorted(MODEL_FIELDS)}")
    m["tokens"] = int(cfg.tokens)
    mc = ModelConfig(**m)
    if mc.kind not in ("vit", "gpt2"):
        raise ConfigError(f"model.kind={mc.kind!r} is unknown: use vit or gpt2")
    for key in ("layers", "hidden", "heads"):
        if getattr(mc, key) < 1:
            raise ConfigError(f"model.{key}={getattr(mc, key)} must be >= 1")
    if mc.hidden % mc.heads:
        raise ConfigError(f"model.hidden={mc.hidden} is not divisible by model.heads={mc.heads}: change one of them")
    if mc.weights and not Path(mc.weights).is_dir():
        raise ConfigError(
            f"model.weights={mc.weights} is not a directory: pass a directory with an HF config.json and weights"
        )
    return mc


def validate(cfg: DictConfig) -> None:
    method = cfg.method.name
    devices, tokens = int(cfg.devices), int(cfg.tokens)
    if tokens < 1:
        raise ConfigError(f"tokens={tokens} must be >= 1")
    if devices < 1 or devices > tokens:
        raise ConfigError(f"devices={devices} must be between 1 and tokens={tokens}: lower devices or raise tokens")
    if cfg.get("collectives", "p2p") not in ("p2p", "gloo"):
        raise ConfigError(f"collectives={cfg.collectives} is unknown: use p2p (direct exchange) or gloo")
    if int(cfg.repeats) < 1 or int(cfg.warmup) < 0:
        raise ConfigError(f"repeats={cfg.repeats} must be >= 1 and warmup={cfg.warmup} >= 0")
    if int(cfg.device.threads) < 1 or float(cfg.device.cores) <= 0:
        raise ConfigError(f"device.threads={cfg.device.threads} must be >= 1 and device.cores={cfg.device.cores} > 0")
    mc = model_config(cfg)
    if method == "tp" and mc.heads % devices:
        raise ConfigError(
            f"tp splits heads over devices but heads={mc.heads} is not divisible by devices={devices}: "
            f"use devices dividing {mc.heads}"
        )
    if method == "astra":
        try:
            vq.check_groups(mc.hidden, int(cfg.method.groups))
            vq.bits_per_index(int(cfg.method.codebook_size))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if cfg.method.vq not in ("kmeans", "lossless", "checkpoint"):
            raise ConfigError(f"method.vq={cfg.method.vq} is unknown: use kmeans, lossless or checkpoint")
        if cfg.method.vq == "checkpoint" and not cfg.method.checkpoint:
            raise ConfigError("method.vq=checkpoint needs method.checkpoint=<dir or codebooks .safetensors file>")


def cpu_budget(cfg: DictConfig, enforced_cores: bool) -> dict:
    """``cpu_per_device`` and ``oversubscribed`` for the row. With ``enforced_cores`` (Mininet CPU quotas) the
    budget is ``device.cores`` and oversubscription is refused unless ``device.allow_oversubscribe``; otherwise the
    budget is the thread count and oversubscription only warned about."""
    import os

    n = effective_devices(cfg)
    per = float(cfg.device.cores) if enforced_cores else float(cfg.device.threads)
    cores = os.cpu_count() or 1
    over = n * per > cores + 1e-9
    if over and enforced_cores and not bool(cfg.device.allow_oversubscribe):
        raise ConfigError(
            f"devices={n} x device.cores={per:g} need {n * per:g} cores but this machine has {cores}: use fewer "
            "devices, a smaller device (e.g. device=cpu_half), or device.allow_oversubscribe=true (the row is then "
            "marked oversubscribed=true)"
        )
    return {"cpu_per_device": per, "oversubscribed": over}


def parse_bandwidths(value, n: int, max_mbps: float | None = None, why: str = "") -> list[float]:
    """``network.bandwidth_mbps`` as one Mbit/s value per device: a number (every device) or a list of n."""
    values = list(value) if hasattr(value, "__len__") and not isinstance(value, str) else [value]
    if len(values) not in (1, n):
        raise ConfigError(f"network.bandwidth_mbps lists {len(values)} values for {n} devices: give one or {n}")
    limit = f"(0, {max_mbps:g}] Mbit/s" if max_mbps else "> 0 Mbit/s"
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"network.bandwidth_mbps={v} is not a number: use a value {limit}") from None
        if not (0 < f and (max_mbps is None or f <= max_mbps)):
            raise ConfigError(f"network.bandwidth_mbps={v} is outside {limit}{why}: choose a value in that range")
        out.append(f)
    return out * n if len(out) == 1 else out


def bandwidth_columns(bw: list[float], devices: int) -> dict:
    """Row columns for a point's bandwidth: the bottleneck (min) as ``bandwidth_mbps`` (always a number, or None
    for one device) and the per-device list as JSON when devices differ."""
    if devices <= 1:
        return {"bandwidth_mbps": None, "bandwidth_per_device": None}
    import json

    return {"bandwidth_mbps": min(bw), "bandwidth_per_device": json.dumps(bw) if len(set(bw)) > 1 else None}


def effective_devices(cfg: DictConfig) -> int:
    """``single`` always runs on one device, whatever ``devices`` says."""
    return 1 if cfg.method.name == "single" else int(cfg.devices)


def point_key(cfg: DictConfig) -> str:
    """A hash naming the experiment point: the resolved config without run-keeping keys (results store, cache,
    timeouts, fault injection). ``single`` ignores devices, the bandwidth and the method knobs, so one single run
    serves every point of a bandwidth or device sweep."""
    import hashlib
    import json

    c = OmegaConf.to_container(cfg, resolve=True)
    for k in ("results", "cache_dir", "timeout_s", "fault", "hydra"):
        c.pop(k, None)
    c["devices"] = effective_devices(cfg)
    if cfg.method.name != "astra":  # ASTRA's knobs are inherited by every method config but used by ASTRA only
        c["method"] = {"name": cfg.method.name}
    if cfg.method.name == "single":
        c["network"] = {k: v for k, v in c["network"].items() if k in ("name",)}
        c.pop("topology", None)
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:16]


def run_spec(cfg: DictConfig, codebooks: str | None = None) -> dict:
    """The JSON-able spec every rank receives."""
    method = OmegaConf.to_container(cfg.method, resolve=True)
    return {
        "model": model_config(cfg).to_dict(),
        "method": method,
        "devices": effective_devices(cfg),
        "tokens": int(cfg.tokens),
        "batch": int(cfg.batch),
        "seed": int(cfg.seed),
        "repeats": int(cfg.repeats),
        "warmup": int(cfg.warmup),
        "verify": bool(cfg.verify),
        "threads": int(cfg.device.threads),
        "timeout_s": float(cfg.timeout_s),
        "collectives": str(cfg.get("collectives", "p2p")),
        "codebooks": codebooks,
        "fault": OmegaConf.to_container(cfg.fault, resolve=True),
    }
