"""The Hydra entry point of ``astra-bench`` and ``astra-train``, and the check of the command line before Hydra.

Hydra answers a typo with a multi-line message and the advice to append the key with ``+`` (which then runs with
the key ignored). ``check_argv`` reads the overrides first and refuses, with one line and exit 2, every override
the code would not read: an unknown config group choice, an unknown key (with a "did you mean"), a knob the chosen
method or backend does not have, an appended (``+key``) or deleted (``~key``) key, several values without ``-m``.

Inside a ``-m`` sweep over several methods (or backends), a knob of only some of them (``method.groups`` while
sweeping sp and astra) applies to those that have it: the override is passed on as ``++key`` and the job of a
method without it drops it (``spec.group_options``); a point that then repeats an earlier one is measured once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.options import did_you_mean, fields_of
from harness.paths import CONF_DIR
from harness.spec.build import compose
from harness.spec.schema import MODEL_FIELDS, OPTION_GROUPS, not_an_option, option_keys, owners, registry

APP_GROUPS = {"config": ("model", "method", "network", "topology", "device", "experiment"), "train": ("task", "suite")}
FREE_MAPS = ("task.model_overrides.",)  # astra-train maps whose keys are model fields, not fixed settings
VALUE_FLAGS = {"-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-c", "--cfg", "-p",
               "--package", "-sc", "--shell-completion", "-i", "--info", "--experimental-rerun"}


def available(group: str, dirs: tuple[Path, ...] = ()) -> list[str]:
    """The choices of a config group: its YAML files in conf/ and in the user's own config folders."""
    return sorted({p.stem for d in (CONF_DIR, *dirs) for p in (Path(d) / group).glob("*.yaml")})


def config_dirs(argv: list[str]) -> tuple[Path, ...]:
    """The user's own config folders, added as Hydra adds them: ``-cd``/``--config-dir`` and the ``file://`` (or
    plain) entries of ``hydra.searchpath=[...]``. A folder that does not exist is refused in one line."""
    dirs: list[str] = []
    for i, arg in enumerate(argv):
        if arg in ("-cd", "--config-dir") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        elif arg.lstrip("+").startswith("hydra.searchpath="):
            entries = [v.strip().strip("'\"") for v in arg.split("=", 1)[1].strip("[]").split(",")]
            dirs += [e for e in entries if e and ("://" not in e or e.startswith("file://"))]  # not pkg://
    out = []
    for d in dirs:
        path = Path(d.removeprefix("file://")).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"config folder {d} does not exist: pass a folder holding your config groups (e.g. "
                              "<folder>/experiment/<name>.yaml)")
        out.append(path)
    return tuple(out)


def _leaf_keys(node, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        out += _leaf_keys(v, key + ".") if isinstance(v, dict) else [key]
        if isinstance(v, dict):
            out.append(key)
    return out


def split_argv(argv: list[str]) -> tuple[list[str], bool]:
    """The overrides among Hydra's command-line arguments, and whether ``-m`` was given."""
    overrides, skip = [], False
    multirun = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, multirun


def _values(ov) -> list[str]:
    return list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]


def check_argv(argv: list[str], config_name: str = "config") -> list[str]:
    """Refuse bad overrides with one line (ConfigError); return the argv Hydra should see (method/backend knobs of
    only some swept choices turned into ``++`` overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    overrides, multirun = split_argv(argv)
    dirs = config_dirs(argv)
    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.append(parser.parse_overrides([text])[0])
        except HydraException as exc:
            raise ConfigError(unreadable(text, str(exc).splitlines()[0], parsed)) from None
    groups = APP_GROUPS[config_name]
    chosen: dict[str, list[str]] = {}
    for ov in parsed:
        key = ov.key_or_group
        if ov.is_sweep_override() and not multirun:
            raise ConfigError(f"{ov.input_line} gives several values: add -m to sweep over them, or give one value")
        if key in groups:
            if ov.type == OverrideType.DEL:
                raise ConfigError(f"~{key} removes the {key} group the run needs: choose one with {key}=<name>")
            names = available(key, dirs)
            for choice in _values(ov):
                if choice not in names and not (key == "experiment" and choice == "null"):
                    raise ConfigError(f"unknown {key} '{choice}'{did_you_mean(choice, names)}: choose one of "
                                      f"{', '.join(names)}")
            chosen[key] = _values(ov)
    group_args = [ov.input_line.lstrip("+") for ov in parsed if ov.key_or_group in groups]
    first = [f"{g}={vals[0]}" for g, vals in chosen.items()]
    try:
        cfg = compose(first, config_name, hydra_node=True, dirs=dirs)
    except Exception as exc:  # noqa: BLE001 - a broken config file of ours, or Hydra refusing a group choice
        raise ConfigError(f"cannot compose the config with {' '.join(group_args)}: {str(exc).splitlines()[0]}") \
            from None
    plain = OmegaConf.to_container(cfg, resolve=False)
    sweeper = (plain.get("hydra") or {}).get("sweeper", {}).get("params") or {}
    if sweeper and not multirun and chosen.get("experiment", ["null"])[0] != "null":
        name = chosen["experiment"][0]
        raise ConfigError(f"experiment={name} is a sweep over {', '.join(k.lstrip('+') for k in sweeper)}: run it with -m "
                          f"(astra-bench -m experiment={name} ...)")
    plain.pop("hydra", None)
    known = set(_leaf_keys(plain))
    nodes = {k for k in known if isinstance(OmegaConf.select(OmegaConf.create(plain), k), DictConfig)}
    for g in OPTION_GROUPS if config_name == "config" else ():
        if g not in chosen:
            swept = sweeper.get(g) if multirun else None
            chosen[g] = [s.strip() for s in str(swept).split(",")] if swept else [str(plain[g]["name"])]
    out = list(argv)

    def force_add(ov) -> None:
        """Pass ``ov`` on as ``++key=value``: a key some of the composed configs lack."""
        if ov.type != OverrideType.FORCE_ADD:
            out[out.index(ov.input_line)] = "++" + ov.input_line.lstrip("+")

    if config_name == "config":  # every value of the command line and of the experiment's sweep, before any point
        swept = []
        if multirun:
            for k, v in sweeper.items():
                try:
                    swept.append(parser.parse_overrides([f"{k}={v}"])[0])
                except HydraException:
                    raise ConfigError(f"the experiment's sweep parameter {k}: {v} cannot be read") from None
        for ov in [*swept, *parsed]:
            if ov.type != OverrideType.DEL and ov.key_or_group not in groups:
                _check_values(ov.key_or_group.lstrip("+"), _values(ov), chosen)
    for ov in parsed:
        key = ov.key_or_group
        if key in groups or key.startswith(("hydra.", "hydra/")) or key == "hydra":
            continue
        if ov.type == OverrideType.DEL:
            raise ConfigError(f"~{key} removes a setting the run needs: set it instead ({key}=<value>)")
        head, _, rest = key.partition(".")
        if head in OPTION_GROUPS and config_name == "config" and rest:
            if _check_option_key(head, rest, chosen[head], multirun):
                force_add(ov)
            elif ov.type == OverrideType.ADD:
                raise ConfigError(f"+{key} appends a key, but {key} is a setting already: write {key}=<value>")
            continue
        if config_name == "train" and key.startswith(FREE_MAPS):  # a map of ModelConfig fields
            field_name = key.rsplit(".", 1)[-1]
            if key.count(".") != 2 or field_name not in MODEL_FIELDS:
                raise ConfigError(f"{key}: task.model_overrides takes model fields{did_you_mean(field_name, MODEL_FIELDS)}"
                                  f" ({', '.join(MODEL_FIELDS)})")
            force_add(ov)
            continue
        if config_name == "config" and head == "model" and rest in MODEL_FIELDS:
            force_add(ov)  # every model has every field, though each model's file lists only its family's
            continue
        if key == "model.tokens":
            raise ConfigError("model.tokens is set by the top-level tokens=: write tokens=<n>")
        if key in nodes:
            raise ConfigError(f"{key} is a group of settings, not a value: set {key}.<key>=<value> (see --help)")
        if key not in known:
            cands = known | {f"{g}.{k}" for g in OPTION_GROUPS if config_name == "config"
                             for c in registry(g) for k in option_keys(g, c)}
            raise ConfigError(f"unknown key '{key}'{did_you_mean(key, cands)}: see --help for the settings")
        if ov.type == OverrideType.ADD:
            raise ConfigError(f"+{key} appends a key, but {key} is a setting already: write {key}=<value>")
    if config_name == "config":  # a store that cannot take rows refuses the whole run (or sweep) before it starts
        from harness.store.results import check_store
        from harness.sweep.tracking import check as check_tracking

        given = [_values(ov) for ov in parsed if ov.key_or_group.lstrip("+") == "results.path"]
        for path in given[-1] if given else [str(plain["results"]["path"])]:
            check_store(path)
        check_tracking(plain.get("tracking"), [ov for ov in parsed if ov.key_or_group.startswith("tracking.")])
    return out


def unreadable(text: str, reason: str, before: list) -> str:
    """The one line for an override Hydra cannot read. A bare value right after ``key=value`` is most likely a
    second value meant for a sweep (``network.bandwidth_mbps=10 100``): name the sweep syntax, and what a list
    means for keys that take one."""
    if "=" not in text and before:
        key, value = before[-1].key_or_group, ",".join(_values(before[-1]))
        hint = f"'{text}' is not key=value: to sweep {key} over several values write {key}={value},{text} with -m"
        return hint + LIST_MEANS.get(key, "")
    return f"cannot read the override '{text}' ({reason}): write key=value, e.g. devices=4"


# What a list means for keys that take one, said where a user likely meant a sweep.
LIST_MEANS = {
    "network.bandwidth_mbps": " (network.bandwidth_mbps=[a,b] is not a sweep but one point with a rate per device: "
                              "device 1 at a Mbit/s, device 2 at b)",
    "device.cores": " (device.cores=[a,b] is not a sweep but one point with a speed per device)",
    "split": " (split=[a,b] is not a sweep but one point's token counts per device)",
}


def _check_values(key: str, values: list[str], chosen: dict[str, list[str]]) -> None:
    """Each value of ``key`` (one, or a sweep's) against the key's type and range, where a schema knows the key."""
    import yaml

    from harness.options import convert, parse_bandwidths
    from harness.spec.schema import GROUP_SCHEMAS, Knobs

    head, _, rest = key.partition(".")
    schema, name = None, key
    if not rest:
        schema = Knobs
    elif head in GROUP_SCHEMAS:
        schema, name = GROUP_SCHEMAS[head], rest
    elif head in OPTION_GROUPS:
        have = owners(head, rest, chosen.get(head, []))
        schema, name = (registry(head)[have[0]].Options, rest) if have else (None, rest)
    fields = {f[0]: f for f in fields_of(schema)} if schema else {}
    if name not in fields:
        return
    _, tp, meta, _ = fields[name]
    for raw in values:
        try:
            value = yaml.safe_load(raw) if isinstance(raw, str) else raw
        except yaml.YAMLError:
            value = raw
        if meta.get("kind") == "bandwidth":
            parse_bandwidths(value, len(value) if isinstance(value, list) and value else 1)
        else:
            convert(value, tp, key, meta)


def _check_option_key(group: str, key: str, choices: list[str], multirun: bool) -> bool:
    """Whether ``group.key`` must be passed as ``++`` (a knob of only some swept choices); raise if no chosen
    choice has it."""
    have = owners(group, key, choices)
    if not have:
        raise not_an_option(group, choices, key)
    return multirun and len(have) < len(choices)


# ------------------------------------------------------------------------------------------------------------ help
def help_text(prog: str, doc: str, config_name: str) -> str:
    """``--help``: what the command does, examples, its own config groups and settings."""
    lines = [doc.strip(), "", "Config groups (choose with group=name; several with -m group=a,b):"]
    for g in APP_GROUPS[config_name]:
        lines.append(f"  {g:<11} {', '.join(available(g))}")
    if config_name == "config":
        from harness.spec.schema import GROUP_SCHEMAS, Knobs

        lines += ["", "Settings (key=value):"]
        lines += _describe(Knobs, "")
        for g, schema in GROUP_SCHEMAS.items():
            lines += _describe(schema, f"{g}.")
        lines.append("  model.<field>   " + ", ".join(MODEL_FIELDS))
        for g in OPTION_GROUPS:
            for name, cls in sorted(registry(g).items()):
                rows = [r for r in _describe(cls.Options, f"{g}.") if not r.lstrip().startswith(f"{g}.name")]
                if rows:
                    lines += ["", f"Options of {g}={name}:", *rows]
    else:
        cfg = OmegaConf.to_container(compose([], config_name), resolve=False)
        lines += ["", "Settings (key=value; defaults shown):"]
        for key in _leaf_keys(cfg):
            val = OmegaConf.select(OmegaConf.create(cfg), key)
            if not OmegaConf.is_config(val) and not isinstance(val, dict):
                lines.append(f"  {key} = {val}")
    lines += ["", "Hydra's own flags: --hydra-help"]
    return "\n".join(lines)


def _describe(cls, prefix: str) -> list[str]:
    out = []
    for name, _tp, meta, default in fields_of(cls):
        out.append(f"  {prefix + name:<28} {meta.get('help', '')} [default: {default}]")
    return out


def ray_launcher_installed() -> bool:
    """Whether the cluster extra is installed; if so, ``hydra/launcher=ray`` is made ours (``harness.cluster``):
    the plugin's config is stored first, then replaced under the same name."""
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None or importlib.util.find_spec("ray") is None:
        return False
    from hydra.core.config_store import ConfigStore

    import hydra_plugins.hydra_ray_launcher._config  # noqa: F401 - stores the plugin's own config first
    from hydra_plugins.astra_ray_launcher import CONFIG

    ConfigStore.instance().store(group="hydra/launcher", name="ray", node=CONFIG, provider="astra-bench")
    return True


def run_hydra_app(prog: str, config_name: str, job, doc: str | None = None) -> None:
    """Entry point of a Hydra console script: ``--help``, then the command-line check (a bad override is one
    ``<prog>: error:`` line and exit 2, before Hydra), SIGTERM as SystemExit so teardown runs, then ``job``."""
    argv = sys.argv[1:]
    if "--help" in argv or "-h" in argv:
        print(help_text(prog, doc or "", config_name))
        sys.exit(0)
    try:
        if any(a.startswith("hydra/launcher=ray") for a in argv) and not ray_launcher_installed():
            raise ConfigError("hydra/launcher=ray needs the cluster extra (Ray and the Hydra Ray launcher): "
                              "pip install -e '.[cluster]'")
        sys.argv[1:] = check_argv(argv, config_name)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    from harness.launch import install_signal_handlers
    from harness.sweep import compose

    install_signal_handlers()
    compose.install()  # a sweep composes each distinct set of group choices once, not each job twice
    import hydra

    hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base=None)(job)()
    from harness.sweep.progress import TALLY

    sys.exit(TALLY.exit_status())  # a -m sweep with a failed point: 1 (results.allow_failures=true: 0)
