"""The typed run spec: built once from the composed Hydra config, validated in one place, serialised to every rank.

    cfg (Hydra) --build_spec--> RunSpec --Method.prepare--> RunSpec (codebooks, weights) --Backend.run--> reports

Everything a point depends on is a field here; ``point_key`` hashes the fields that change what is measured, so
two points with the same key are the same experiment. ``to_json``/``from_json`` carry the spec to the ranks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .errors import ConfigError
from .models import ModelConfig
from .network import BACKENDS, NetworkOptions
from .options import as_dict, did_you_mean, fields_of, opt, parse_options
from .parallel import METHODS, MethodOptions, partition

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
MODEL_FIELDS = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("tokens", "extra")]

# ``${astra_sweep_id:}``: an id drawn once per sweep (resolvers cache their value in the config, and Hydra copies
# that cache into every job's config, a launcher's remote jobs included): it makes the sweep's directory, and so
# the names of its jobs' parts in a dataset store, unique even for sweeps started in the same second.
OmegaConf.register_new_resolver("astra_sweep_id", lambda: uuid.uuid4().hex[:8], use_cache=True, replace=True)


@dataclass
class Knobs:
    """The top-level keys of ``conf/config.yaml`` (besides the groups)."""

    devices: int = opt(2, "emulated devices (ranks); `single` always uses 1", lo=1)
    tokens: int = opt(64, "content tokens (ViT: patches, plus the class token; GPT2: prompt length)", lo=1)
    batch: int = opt(1, "inputs per inference", lo=1)
    repeats: int = opt(5, "timed inferences; latency_ms is the median of the slowest rank per repeat", lo=1)
    warmup: int = opt(2, "untimed inferences first", lo=0)
    verify: bool = opt(False, "compare every rank's output with the single-device output (max_abs_err)")
    seed: int = opt(0, "weights, inputs and k-means all derive from it", lo=0, hi=2**31 - 1)
    timeout_s: float = opt(300.0, "a rank not finished by then fails the run (collectives time out too)", above=0,
                           hi=7 * 86400)
    collectives: str = opt("auto", "collectives from gloo send/recv: p2p (direct exchange), ring (N-1 steps, one "
                           "flow per link), auto (ring for steps of >= 64 kB, p2p below); gloo: gloo's own",
                           choices=("auto", "p2p", "ring", "gloo"))
    cache_dir: str = opt("results/cache", "where k-means codebooks are cached")
    budget_s: float | None = opt(None, "adaptive repeats: a point's warm-ups and repeats stop once they have used this "
                                 "many (real) seconds, after at least one timed inference; an inference longer than "
                                 "the budget is timed on its own, without warm-up; null: always warmup + repeats. "
                                 "The single-device baseline always runs warmup + repeats: every speedup of a sweep "
                                 "divides its latency",
                                 above=0)
    interleave: bool = opt(False, "multi-device points: after every timed repeat rank 0 also runs the whole model "
                           "alone on the same device (the others idle), so the row's speedup_interleaved pairs each "
                           "repeat with a baseline measured seconds apart, free of the machine's drift")
    stream_s: float | None = opt(None, "run requests back to back for this many (emulated) seconds instead of "
                                 "repeats: the row counts the requests served and keeps each one in a side table "
                                 "(<results>.requests.parquet); with network.trace the links follow the trace",
                                 above=0, hi=86400)
    split: Any = opt("even", "how sp and astra share the tokens over devices: even, proportional (to each device's "
                     "device.cores), or a list of token counts (one per device, summing to tokens)", kind="list")
    solo_repeats: int = opt(1, "after a multi-device point, each rank runs this many inferences alone (collectives "
                            "answered locally, peers idle) for the compute-inflation check; 0 skips it", lo=0, hi=100)
    solo_paired: bool = opt(True, "with solo_repeats > 0: instead of solo runs after the point, one rank (in turn) "
                            "runs its share alone right after every timed repeat, so each solo sample is paired with "
                            "the compute of the repeat it follows and the machine's drift cancels out of the "
                            "compute-inflation check (request streams keep the solo runs after the point)")


@dataclass
class DeviceOptions:
    name: str = opt("cpu1", "the device's name (the row's `device` column)")
    cores: Any = opt(1.0, "virtual cores per device: its speed is that many of this machine's cores; a list gives "
                     "one per device (heterogeneous devices, Mininet; the single baseline runs on the first)",
                     kind="list")
    threads: int = opt(1, "torch threads per device", lo=1)
    dilation: Any = opt("auto", "time dilation k (Mininet): each device gets cores/k real cores, every link is shaped "
                        "at bandwidth/k and times are reported divided by k. auto: the smallest k >= 1 at which the "
                        "devices fit the machine's cores minus reserve_cores", lo=1, kind="auto_number")
    reserve_cores: float = opt(0.25, "Mininet, dilation=auto: cores kept free for the kernel's bridging and shaping "
                               "and for the controller", lo=0)
    reference_ms: float | None = opt(None, "Mininet: emulate a device whose single-device latency for this model and "
                                     "token count is this many ms: k = measured single latency / reference_ms",
                                     above=0)
    allow_oversubscribe: bool = opt(False, "Mininet: run even when devices x cores/k exceed the machine's cores")
    pin_cores: int | None = opt(None, "Mininet: pin every device to this many of the machine's last cores (a "
                                "cpuset) and leave the others to the kernel's bridging and shaping and to the "
                                "controller; dilation=auto then fits the devices into these cores (reserve_cores "
                                "is not used). Devices then share cores by time slices instead of computing side by "
                                "side, so co-running ranks do not slow each other through shared caches and memory "
                                "bandwidth", lo=1)
    cfs_period_us: int = opt(5000, "Mininet: the CFS period of the hosts' CPU quota (a short one bounds how long "
                             "a fractional device may run at full speed)", lo=1000, hi=1000000)
    spread: Any = opt("auto", "Mininet: pin every device to one core (largest quota first onto the core with the "
                      "most room), so a device keeps one core's caches instead of migrating and shares them with "
                      "the fewest others; auto: when the devices can be packed so (not with pin_cores or "
                      "reference_ms); false: devices float over the cores", kind="auto_bool")
    idle_poll: Any = opt("auto", "Mininet: while devices run, hold the machine's CPUs in the polling idle state (a "
                         "zero-latency PM QoS request, harness.idle) so a throttled device's slices do not start on "
                         "a vCPU the hypervisor took back; auto: where /dev/cpu_dma_latency is writable",
                         kind="auto_bool")
    tick_us: Any = opt("auto", "Mininet: a real-time thread per core wakes every this many µs (cyclictest, "
                       "harness.tick), so the devices' CPU quotas and preemption act at this granularity instead of "
                       "the kernel's timer tick (4 ms at HZ=250); 0: off; auto: 500 where cyclictest can run (root, "
                       "rt-tests)",
                       lo=0, hi=100000, kind="auto_number")


@dataclass
class FaultOptions:
    crash_rank: int | None = opt(None, "this rank raises right after start-up (tests the harness)", lo=0)
    hang_rank: int | None = opt(None, "this rank stops responding (the run must end at timeout_s)", lo=0)
    kill_job_once: str | None = opt(None, "a marker file: the job's first attempt (the file absent) creates it and "
                                    "kills its own process (SIGKILL), as a dying worker would; tests launchers' "
                                    "retries")
    kill_job_at: str = opt("start", "when kill_job_once kills: at the job's start, or at its end (after its row "
                           "is recorded)", choices=("start", "end"))


@dataclass
class ResultsOptions:
    path: str = opt("results/results.parquet", "the results store: a .parquet or .csv file, or a folder without a "
                    "suffix (a dataset for many writers: each job writes its own part)")
    record_failures: Any = opt("auto", "record failed points as rows (auto: inside a -m sweep only)",
                               kind="auto_bool")
    skip_existing: Any = opt("auto", "skip points already in the store with status ok (auto: inside a -m sweep)",
                             kind="auto_bool")
    allow_failures: bool = opt(False, "a -m sweep with a failed point still exits 0 (long unattended grids; the "
                               "failed rows and the sweep's last line say which points failed)")


@dataclass
class TopologyOptions:
    name: str = opt("star", "star: hosts on one bridge; mesh: a direct link per pair (Mininet only)",
                    choices=("star", "mesh"))


@dataclass
class TrackingOptions:
    enabled: bool = opt(False, "log every point as an MLflow run, and a -m sweep as their parent run with its "
                        "figures (harness.tracking; needs the tracking extra)")
    uri: str = opt("results/mlflow.db", "the MLflow store: a path is a SQLite file (artifacts in <path minus "
                   "suffix>-artifacts/), or any MLflow tracking URI (sqlite:///..., http://host:5000)")
    experiment: str = opt("astra-bench", "the MLflow experiment the runs are logged in")


GROUP_SCHEMAS = {"device": DeviceOptions, "fault": FaultOptions, "results": ResultsOptions,
                 "topology": TopologyOptions, "tracking": TrackingOptions}


@dataclass
class RunSpec:
    model: ModelConfig
    method: MethodOptions
    network: NetworkOptions
    topology: TopologyOptions
    device: DeviceOptions
    devices: int  # effective: what the method runs on
    tokens: int
    batch: int = 1
    seed: int = 0
    repeats: int = 5
    warmup: int = 2
    verify: bool = False
    timeout_s: float = 300.0
    collectives: str = "auto"
    cache_dir: str = "results/cache"
    budget_s: float | None = None
    solo_repeats: int = 0
    solo_paired: bool = False
    interleave: bool = False
    stream_s: float | None = None
    stream_real_s: float | None = None  # set by the backend: the stream's real duration (stream_s x k)
    stream_start_file: str | None = None  # set by the backend: rank 0 writes the stream's start time here
    dilation: float | None = 1.0  # k (harness.dilation); None: measured at run time (device.reference_ms)
    cores_of_ranks: list[int] | None = None  # device.spread resolved: each rank's core (Mininet), else None
    idle_poll: bool = False  # device.idle_poll resolved on this machine: the CPUs are held polling (harness.idle)
    tick_us: int = 0  # device.tick_us resolved on this machine: the ticker's interval (harness.tick), 0 when off
    quota_cores: float = 1.0  # real cores of the first device (device.cores / k, or the reference mode's fit)
    quotas: list[float] = field(default_factory=list)  # real cores per rank (heterogeneous devices), else empty
    shares: list[int] | None = None  # content tokens per rank (split=proportional or a list); None: even
    fault: FaultOptions = field(default_factory=FaultOptions)
    results: ResultsOptions = field(default_factory=ResultsOptions)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    # What the method prepares before ranks start, and what a caller feeds the ranks directly.
    codebooks: str | None = None
    model_state: str | None = None
    inputs_path: str | None = None
    outputs_dir: str | None = None
    wire_ifaces: list[str] = field(default_factory=list)  # per rank (Mininet): interfaces whose tx bytes count
    config: dict = field(default_factory=dict)  # the resolved Hydra config, for the row

    @property
    def method_class(self):
        return METHODS[self.method.name]

    @property
    def backend_class(self):
        return BACKENDS[self.network.name]

    def replace(self, **kw) -> "RunSpec":
        return dataclasses.replace(self, **kw)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        d = json.loads(text)
        d["model"] = ModelConfig(**d["model"])
        d["method"] = METHODS[d["method"]["name"]].Options(**d["method"])
        d["network"] = BACKENDS[d["network"]["name"]].Options(**d["network"])
        for key, schema in GROUP_SCHEMAS.items():
            d[key] = schema(**d[key])
        return cls(**d)


# ---------------------------------------------------------------------------------------------------- the builders
def model_config(values: dict, tokens: int, check_positions: bool = True) -> ModelConfig:
    """A checked ModelConfig from the ``model`` group's values, built for ``tokens`` content tokens."""
    values = dict(values)
    for key in ("tokens", "extra"):
        if key in values:
            raise ConfigError(f"model.{key} is not a model option: the token count is the top-level tokens=")
    mc = parse_options(ModelConfig, values, "model.", f"model={values.get('name')}")
    mc.tokens = tokens
    if mc.kind not in ("vit", "gpt2"):
        raise ConfigError(f"model.kind={mc.kind} is unknown: use vit or gpt2")
    for key in ("layers", "hidden", "heads", "mlp_ratio", "patch_size", "channels", "num_classes", "vocab_size",
                "max_positions"):
        if getattr(mc, key) < 1:
            raise ConfigError(f"model.{key}={getattr(mc, key)} must be >= 1")
    if not mc.ln_eps > 0:
        raise ConfigError(f"model.ln_eps={mc.ln_eps} must be > 0")
    from .ptq import BITS, group_for, misfit_width

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
    if check_positions and mc.kind == "gpt2" and tokens > mc.max_positions:
        raise ConfigError(f"tokens={tokens} exceeds {mc.name}'s {mc.max_positions} positions (model.max_positions): "
                          f"lower tokens or raise model.max_positions")
    if mc.weights and not Path(mc.weights).is_dir():
        raise ConfigError(f"model.weights={mc.weights} is not a directory: pass a directory with an HF config.json "
                          "and weights")
    if mc.weights:
        mc.weights = str(Path(mc.weights).resolve())  # the ranks run elsewhere (cwd = the repository)
    return mc


OPTION_GROUPS = ("method", "network")  # groups whose choices have different keys (one options schema each)


def registry(group: str) -> dict:
    """The classes of an option group's choices: ``METHODS`` or ``BACKENDS``."""
    return METHODS if group == "method" else BACKENDS


def option_keys(group: str, choice: str) -> set[str]:
    """The options of one choice of ``group`` (none for an unknown choice)."""
    reg = registry(group)
    return {f[0] for f in fields_of(reg[choice].Options)} if choice in reg else set()


def owners(group: str, key: str, choices=None) -> list[str]:
    """The choices of ``group`` (all of them, or those given) that have option ``key``."""
    return [c for c in (registry(group) if choices is None else choices) if key in option_keys(group, c)]


def not_an_option(group: str, choices: list[str], key: str) -> ConfigError:
    """The one-line refusal of ``group.key`` for choices none of which has it."""
    which = " or ".join(f"{group}={c}" for c in choices)
    elsewhere = owners(group, key)
    if elsewhere:
        return ConfigError(f"{which} has no option {key} (it is {' and '.join(elsewhere)}'s): remove {group}.{key}, "
                           f"or use {group}={elsewhere[0]}")
    anyone = sorted({k for c in registry(group) for k in option_keys(group, c)})
    mine = sorted({k for c in choices for k in option_keys(group, c)})
    return ConfigError(f"{group}.{key} is not an option of {which}{did_you_mean(key, anyone)}: its options are "
                       f"{', '.join(mine)}")


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
    from .results import check_store, check_writable

    check_store(sub["results"].path)
    if Path(top.cache_dir).exists() and not Path(top.cache_dir).is_dir():
        raise ConfigError(f"cache_dir={top.cache_dir} is a file: pass a directory")
    check_writable(top.cache_dir, "cache_dir")
    from . import dilation

    dev = sub["device"]
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
                   cores_of_ranks=spread,
                   **{k: getattr(top, k) for k in ("tokens", "batch", "seed", "repeats", "warmup", "verify",
                                                    "timeout_s", "collectives", "cache_dir", "budget_s",
                                                    "solo_repeats", "solo_paired", "interleave", "stream_s")},
                   **sub)
    if check_method:
        cls.check(spec)
    return spec


def resolve_spread(dev, enforced: bool, k: float | None, quotas: list[float]) -> list[int] | None:
    """``device.spread`` on this machine: each rank's core, or None (devices float over the cores)."""
    from . import dilation

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
    from . import idle

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
    from . import tick

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


def compose(overrides: list[str] | None = None, config_name: str = "config", hydra_node: bool = False):
    """The composed Hydra config for ``overrides`` (e.g. ``["model=vit_tiny", "method=sp"]``), outside any app and
    without touching a running one (``hydra_node``: keep the ``hydra`` node, e.g. an experiment's sweep)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode
    from omegaconf import open_dict

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))
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
    if model.kind == "gpt2":  # a trained GPT2's position table holds max(max_positions, tokens) positions
        cfg["model"]["max_positions"] = max(model.max_positions, model.tokens)
    return build_spec(cfg)


# ----------------------------------------------------------------------------------------------------- identities
def identity(spec: RunSpec, timing: bool = False) -> dict:
    """Every setting that changes what a point measures (not where results go, time limits, fault injection, names).
    ``timing``: only what changes its timings (``verify`` adds an error measurement after the timed repeats)."""
    from .ptq import model_identity

    cls = spec.method_class
    backend = spec.backend_class
    ident = {
        "model": model_identity(spec.model),
        "method": cls.identity(spec),
        "devices": spec.devices,
        "tokens": spec.tokens, "batch": spec.batch, "seed": spec.seed, "repeats": spec.repeats,
        "warmup": spec.warmup, "verify": None if timing else spec.verify, "collectives": spec.collectives,
        "budget_s": spec.budget_s,
        **({"stream_s": spec.stream_s} if spec.stream_s else {}),  # absent when unset: older keys stay valid
        "interleave": spec.interleave if cls.communicates and not timing else None,
        **({"shares": spec.shares} if spec.shares else {}),
        "device": {"threads": spec.device.threads, **({
            "cores": spec.device.cores, "cfs_period_us": spec.device.cfs_period_us,
            **({"pin_cores": spec.device.pin_cores} if spec.device.pin_cores else {}),  # absent: keys stay valid
            # absent when off, so points measured before these knobs keep their keys; spread's cores follow from the
            # quotas, so the single baseline of a spread sweep (one core) is the point its speedups name
            **({"idle_poll": True} if spec.idle_poll else {}),
            **({"spread": True} if spec.cores_of_ranks else {}),
            **({"tick_us": spec.tick_us} if spec.tick_us else {}),
            "dilation": None if spec.dilation is None else round(spec.dilation, 6),
            "reference_ms": spec.device.reference_ms} if backend.enforces_cores else {})},
        "topology": spec.topology.name if backend.uses_topology else None,
    }
    # one device: bandwidth, topology and the network's knobs do not matter
    ident["network"] = backend.identity(spec) if cls.communicates else {"name": spec.network.name}
    if not cls.communicates:
        ident["topology"] = None
        ident["collectives"] = None
    return ident


def point_key(spec: RunSpec) -> str:
    return hashlib.sha256(json.dumps(identity(spec), sort_keys=True).encode()).hexdigest()[:16]


def timing_key(spec: RunSpec) -> str:
    """Like ``point_key``, but equal for points whose timings are the same experiment (``verify`` aside)."""
    return hashlib.sha256(json.dumps(identity(spec, timing=True), sort_keys=True).encode()).hexdigest()[:16]


def baseline_key(spec: RunSpec) -> str:
    """The timing key of the single-device run this point's speedup is measured against."""
    single = next(n for n, cls in METHODS.items() if cls.is_baseline)
    base = spec.replace(method=METHODS[single].Options(name=single), devices=1)
    return timing_key(base)


# ------------------------------------------------------------------------------------------------------ the result row
def row(spec: RunSpec, network: dict, reports: list[dict] | None = None, measured: dict | None = None,
        error: str | None = None, links_mbps: list[float] | None = None) -> dict:
    """The one result row of a point: its settings (``network`` = the backend's ``describe()``), the measured
    columns summarised from the ranks' ``reports`` (times ÷ the dilation k, real ones kept), the backend's own
    ``measured`` columns (``dilation`` there is the k measured in reference mode), the fidelity verdict, or
    ``error``."""
    from . import dilation, fidelity
    from .provenance import provenance
    from .results import new_ids, summarize

    out = {
        "model": spec.model.name, "method": spec.method.name, "devices": spec.devices, "tokens": spec.tokens,
        "network": network["network"], "bandwidth_mbps": network.get("bandwidth_mbps"),
        "bandwidth_per_device": network.get("bandwidth_per_device"),
        "groups": None, "codebook_size": None, "repeats": spec.repeats if error is None else 0,  # timed inferences
        "latency_ms": None, "latency_p90_ms": None, "latency_ci_low_ms": None,
        "latency_ci_high_ms": None, "compute_ms": None, "comm_ms": None, "payload_bytes": None,
        "wire_bytes": None, "max_abs_err": None,
        "cpu_per_device": network.get("cpu_per_device", float(spec.device.threads)),
        "oversubscribed": network.get("oversubscribed", False),
        "status": "ok" if error is None else "failed", "error": error, **new_ids(),
        "config": json.dumps(spec.config, sort_keys=True),
        "batch": spec.batch, "threads": spec.device.threads, "seed": spec.seed, "vq": None,
        "topology": network.get("topology"), "device": spec.device.name, "setup_s": None,
        "point_key": point_key(spec), "timing_key": timing_key(spec), "baseline_key": baseline_key(spec),
        "settings": json.dumps(identity(spec), sort_keys=True), "wall_s": None, **provenance(),
    }
    out.update(spec.method_class.columns(spec))
    out["dilation"] = spec.dilation
    out["idle_poll"] = spec.idle_poll if spec.backend_class.enforces_cores else None
    out["spread"] = bool(spec.cores_of_ranks) if spec.backend_class.enforces_cores else None
    out["tick_us"] = spec.tick_us if spec.backend_class.enforces_cores else None
    out["cpu_real_per_device"] = network.get("cpu_real_per_device")
    if network.get("cores_per_device"):  # heterogeneous devices: the virtual cores of every rank
        out["cores_per_device"] = network["cores_per_device"]
    if spec.shares:
        out["split"] = json.dumps(spec.shares)
    if reports:
        out.update(summarize(reports))
        out["repeats"] = len(reports[0]["latency_s"])
        out["warmups"] = reports[0].get("warmups")
        from .stream import columns as stream_columns

        out.update(stream_columns(reports, spec))
    out.update(measured or {})
    if reports:
        k = out["dilation"] or 1.0
        out.update(dilation.scale_row(out, k))
        out.update(fidelity.assess(reports, bool(out.get("oversubscribed")), links_mbps, k,
                                   out.get("bandwidth_mbps") if spec.method_class.communicates else None))
        out.update(fidelity.interleaved(reports, k))
        if not spec.backend_class.emulates:
            out["fidelity"] = None
    return out
