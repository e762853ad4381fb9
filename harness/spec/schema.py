"""Every setting, defined once: the top-level knobs and the option groups as dataclasses whose fields carry their
default, help text and allowed range (``harness.options.opt``), the method and backend registries' option schemas,
and ``RunSpec``, the checked point the controller hands to the backend and every rank."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from harness.errors import ConfigError
from harness.models import ModelConfig
from harness.network import BACKENDS, NetworkOptions
from harness.options import did_you_mean, fields_of, opt
from harness.parallel import METHODS, MethodOptions

MODEL_FIELDS = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("tokens", "extra")]


@dataclass
class Knobs:
    """The top-level settings (besides the groups). Their defaults are the config's: ``register_configs`` stores
    them in Hydra's ConfigStore, under ``conf/config.yaml``'s overrides."""

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
                           "flow per link), bruck (all-gather in log2 N rounds), auto (ring for steps of >= 64 kB, p2p "
                           "below); gloo: gloo's own",
                           choices=("auto", "p2p", "ring", "bruck", "gloo"))
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
    cpu_ns_per_byte: float = opt(0.0, "CPU time (ns) the device's compute core spends per payload byte it sends "
                                 "or receives: the analytic backend and a row's own timeline (analytic_wire_ms) then "
                                 "slow compute under a started transfer and share the core between them "
                                 "(harness.comm.cost.timeline). 0: transfers cost the compute nothing (the paper's "
                                 "model, a NIC with offload); the emulated one-core hosts pay what "
                                 "benchmarks/exchange.py --shard-bytes measures", lo=0)
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
    compute: str = opt("real", "real: each device computes on this machine's CPU (the reference: it measures "
                       "interference, caches and the real kernels; time-dilated on Mininet when the devices do not "
                       "fit); replay: each device replays its compute profile as timed waits while its collectives "
                       "run for real (no dilation, links at their true rates, many devices on two cores; compared "
                       "with real where both run: benchmarks/replay.py validate)", choices=("real", "replay"))
    profile: str = opt("measure", "device.compute=replay: the compute profile replayed. measure: each rank's compute "
                       "measured here, alone at this device's speed (cached in cache_dir/profiles); reference: the "
                       "same, scaled so that the single device takes device.reference_ms; or a profile file, or a "
                       "folder of them, recorded by astra-profile (on any machine, a GPU's included)")
    profile_layers: Any = opt("auto", "device.compute=replay and astra-profile: record the profile on this many of "
                              "the model's blocks (at least 2) and repeat the last one's compute and calls to the "
                              "model's depth (its blocks all have one shape); auto: every block, or 2 when the "
                              "model's fp32 weights would fill more than a quarter of this machine's memory "
                              "(llama3_8b: 32 GB)", lo=2, hi=10000, kind="auto_number")
    replay_sched: str = opt("fifo", "device.compute=replay: how the ranks are scheduled. fifo: each rank and its "
                            "gloo threads run SCHED_FIFO at priority 1 where the process may (root), so a rank whose "
                            "sleep ended or whose message arrived runs at once instead of up to a scheduler tick "
                            "later behind another rank (the kernel's real-time throttling keeps 5 % for everything "
                            "else); other: the normal scheduler", choices=("fifo", "other"))
    accelerator: str = opt("cpu", "astra-profile: record the profile on this accelerator (cuda: the model on the "
                           "GPU, the clock read after torch.cuda.synchronize); ranks of astra-bench run on the CPU",
                           choices=("cpu", "cuda"))


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


@dataclass(kw_only=True)
class RunSpec(Knobs):
    """One checked point: the top-level knobs (``devices`` here is what the method runs on: ``single`` always 1),
    every group's options, and what ``build_spec`` resolves on this machine or a method prepares."""

    model: ModelConfig
    method: MethodOptions
    network: NetworkOptions
    topology: TopologyOptions
    device: DeviceOptions
    fault: FaultOptions = field(default_factory=FaultOptions)
    results: ResultsOptions = field(default_factory=ResultsOptions)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    stream_real_s: float | None = None  # set by the backend: the stream's real duration (stream_s x k)
    stream_start_file: str | None = None  # set by the backend: rank 0 writes the stream's start time here
    dilation: float | None = 1.0  # k (harness.emulation.dilation); None: measured at run time (device.reference_ms)
    cores_of_ranks: list[int] | None = None  # device.spread resolved: each rank's core (Mininet), else None
    idle_poll: bool = False  # device.idle_poll resolved on this machine: the CPUs are held polling
    tick_us: int = 0  # device.tick_us resolved on this machine: the ticker's interval, 0 when off
    quota_cores: float = 1.0  # real cores of the first device (device.cores / k, or the reference mode's fit)
    quotas: list[float] = field(default_factory=list)  # real cores per rank (heterogeneous devices), else empty
    shares: list[int] | None = None  # content tokens per rank (split=proportional or a list); None: even
    profile_path: str | None = None  # device.compute=replay: the profile file every rank replays (prepared)
    profile_id: str | None = None  # ... and its content's hash
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


# ------------------------------------------------------------------------------------------------ Hydra's defaults
BASE = "astra_bench_base"  # the root defaults of conf/config.yaml
BASE_SUFFIX = "_base"  # a group choice's defaults: method/astra_base, network/mininet_base, device/base ...


def defaults(cls) -> dict:
    """A dataclass's field defaults, as plain values."""
    return {name: default for name, _tp, _meta, default in fields_of(cls)}


def register_configs() -> None:
    """Store every setting's default in Hydra's ConfigStore, so each is written once (in these dataclasses) and the
    YAML files under ``conf/`` only override: the top-level knobs and the fixed groups (``astra_bench_base``, which
    ``conf/config.yaml`` lists first), each method's and backend's options (``method/<name>_base``,
    ``network/<name>_base``, which ``conf/method/<name>.yaml`` and ``conf/network/<name>.yaml`` extend), the
    device's (``device/base``) and the topology's (``topology/base``)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    model = {k: v for k, v in defaults(ModelConfig).items() if k in MODEL_SETTINGS}
    fixed = {g: defaults(s) for g, s in GROUP_SCHEMAS.items() if g not in CHOSEN_GROUPS}
    cs.store(name=BASE, node={**defaults(Knobs), **fixed, "model": model}, provider="astra-bench")
    for group, reg in (("method", METHODS), ("network", BACKENDS)):
        for name, cls in reg.items():
            cs.store(group=group, name=name + BASE_SUFFIX, node={**defaults(cls.Options), "name": name},
                     provider="astra-bench")
    for group in CHOSEN_GROUPS:
        cs.store(group=group, name=BASE_SUFFIX.lstrip("_"), node=defaults(GROUP_SCHEMAS[group]),
                 provider="astra-bench")


CHOSEN_GROUPS = ("device", "topology")  # groups chosen by name (a YAML file per choice), besides method and network
MODEL_SETTINGS = ("weight_bits", "weight_group")  # model fields that are settings of a run, not of a model's shape
register_configs()
