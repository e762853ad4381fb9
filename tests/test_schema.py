"""Every setting defined once (harness.spec.schema): the YAML files under conf/ only override the dataclasses'
defaults, the root config sets no setting, and a RunSpec survives its trip to the ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from harness.config import available
from harness.network import BACKENDS
from harness.options import fields_of
from harness.parallel import METHODS
from harness.spec.build import build_spec, compose
from harness.spec.identity import point_key
from harness.spec.schema import RunSpec

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


# ---------------------------------------------------------------------------------------------------- schemas
def overrides_of(path: Path) -> dict:
    """What a YAML file sets, besides its defaults list."""
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("defaults", None)
    return data


def differs(value, default) -> bool:
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) != default
    return value != default


@pytest.mark.parametrize("group,registry", [("method", METHODS), ("network", BACKENDS)])
def test_every_setting_is_written_once(group, registry):
    """A method's or backend's options and defaults live in its Options dataclass only: its YAML file extends the
    defaults Hydra's ConfigStore holds for it and sets nothing more, and the composed group is those defaults."""
    assert sorted(available(group)) == sorted(registry), "a config file without a class, or a class without one"
    for name, cls in registry.items():
        assert overrides_of(CONF / group / f"{name}.yaml") == {}, f"conf/{group}/{name}.yaml repeats settings"
        composed = OmegaConf.to_container(compose([f"{group}={name}"])[group])
        assert composed == {**{f[0]: f[3] for f in fields_of(cls.Options)}, "name": name}


def test_device_and_topology_files_only_override():
    """A device or topology file sets only what differs from the schema's defaults, and composes to its name."""
    from harness.spec.schema import DeviceOptions, TopologyOptions

    for group, schema in (("device", DeviceOptions), ("topology", TopologyOptions)):
        defaults = {f[0]: f[3] for f in fields_of(schema)}
        for name in available(group):
            data = overrides_of(CONF / group / f"{name}.yaml")
            assert set(data) <= set(defaults), (name, set(data) - set(defaults))
            assert all(differs(v, defaults[k]) for k, v in data.items()), (name, "sets a default again")
            assert getattr(getattr(build_spec(compose([f"{group}={name}"])), group), "name") == name


def test_the_root_config_sets_no_setting():
    """conf/config.yaml chooses the groups and configures Hydra; every setting's default comes from the schema."""
    root = overrides_of(CONF / "config.yaml")
    assert set(root) == {"hydra"}, set(root)


def test_spec_round_trip_and_keys():
    spec = build_spec(compose(["model=gpt2_tiny", "method=astra", "method.groups=4", "network=analytic"]))
    again = RunSpec.from_json(spec.to_json())
    assert again == spec and type(again.method) is type(spec.method)
    assert point_key(spec) != point_key(spec.replace(method=spec.method.__class__(groups=8)))
    assert point_key(spec) == point_key(spec.replace(results=spec.results.__class__(path="elsewhere.csv")))


def test_every_top_level_knob_is_in_the_config():
    """A Knobs field missing from conf/config.yaml could not be set from the command line (unknown key)."""
    from harness.options import fields_of
    from harness.spec.build import compose
    from harness.spec.schema import GROUP_SCHEMAS, Knobs

    cfg = compose([])
    assert not [name for name, *_ in fields_of(Knobs) if name not in cfg]
    for group, schema in GROUP_SCHEMAS.items():
        assert not [name for name, *_ in fields_of(schema) if name not in cfg[group]], group
