"""The configuration tree: strict loading, validation messages, shipped YAML files."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from vla_rl_ros.core.config import ExperimentConfig, dump_params_yaml, load_config
from vla_rl_ros.core.config_io import (ConfigError, flatten, from_dict, parse_overrides, to_dict,
                                       unflatten)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "config"


def write_params(tmp_path: Path, params: dict, node: str = "/**") -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({node: {"ros__parameters": params}}))
    return path


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    cfg = load_config()
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(dump_params_yaml(cfg)))
    assert load_config(path) == cfg


def test_unknown_yaml_key_is_an_error_naming_it(tmp_path):
    path = write_params(tmp_path, {"ppo": {"clip_rnage": 0.1}})
    with pytest.raises(ConfigError, match=r"ppo\.clip_rnage"):
        load_config(path)


def test_unknown_section_is_an_error(tmp_path):
    path = write_params(tmp_path, {"optimiser": {"lr": 1.0}})
    with pytest.raises(ConfigError, match="optimiser"):
        load_config(path)


def test_bad_value_error_names_field_and_value(tmp_path):
    path = write_params(tmp_path, {"ppo": {"gamma": 1.5}})
    with pytest.raises(ConfigError, match=r"ppo\.gamma=1\.5"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"env\.num_envs='many'"):
        load_config(overrides=["env.num_envs=many"])
    with pytest.raises(ConfigError, match=r"train\.iterations=2\.5"):
        load_config(overrides=["train.iterations=2.5"])


def test_overrides_win_over_file_and_nested_keys_merge(tmp_path):
    path = write_params(tmp_path, {"ppo": {"clip_range": 0.3, "epochs": 2}})
    cfg = load_config(path, ["ppo.clip_range=0.1", "env.task_ids=[4, 5]"])
    assert cfg.ppo.clip_range == 0.1
    assert cfg.ppo.epochs == 2          # untouched by the override, kept from the file
    assert cfg.env.task_ids == [4, 5]


def test_node_block_overrides_shared_block(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "/**": {"ros__parameters": {"env": {"num_envs": 2}}},
        "sim_bridge": {"ros__parameters": {"env": {"num_envs": 1}}},
    }))
    assert load_config(path, node_name="sim_bridge").env.num_envs == 1
    assert load_config(path, node_name="policy").env.num_envs == 2


def test_params_file_without_ros_parameters_is_rejected(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ppo": {"gamma": 0.9}}}))
    with pytest.raises(ConfigError, match="ros__parameters"):
        load_config(path)


def test_missing_and_malformed_files_have_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_malformed_override_is_rejected():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["ppo.clip_range"])
    with pytest.raises(ConfigError, match="empty key"):
        parse_overrides(["ppo..clip=1"])


def test_flatten_matches_ros_dotted_parameter_names():
    nested = to_dict(ExperimentConfig())
    flat = flatten(nested)
    assert flat["ppo.clip_range"] == 0.2
    assert unflatten(flat) == nested
    assert from_dict(ExperimentConfig, unflatten(flat)) == ExperimentConfig()


def every_field_documented(cls) -> list[str]:
    """Field names of ``cls`` (recursively) that lack a docstring line in the source."""
    import inspect
    missing = []
    source = inspect.getsource(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else None):
            continue
        if f.name in ("policy", "env", "ppo", "reward", "curriculum", "train", "graph", "safety"):
            continue
        lines = source.splitlines()
        idx = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{f.name}:"))
        if not lines[idx + 1].strip().startswith('"""'):
            missing.append(f"{cls.__name__}.{f.name}")
    return missing


def test_every_config_field_has_a_docstring():
    missing = []
    for section in dataclasses.fields(ExperimentConfig):
        missing += every_field_documented(section.default_factory().__class__)
    assert not missing, f"config fields without a docstring: {missing}"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_yaml_loads_and_differs_from_defaults_only_on_purpose(path):
    """Every shipped params file loads strictly; each value that differs from the dataclass
    default must be listed in the file's ``# overrides:`` header, so drift is deliberate."""
    text = path.read_text()
    data = yaml.safe_load(text)
    declared = set()
    for line in text.splitlines():
        if line.startswith("# overrides:"):
            declared |= {k.strip() for k in line.split(":", 1)[1].split(",") if k.strip()}
    defaults = flatten(to_dict(ExperimentConfig()))
    for node in data:
        cfg = load_config(path, node_name=None if node == "/**" else node)
        values = flatten(to_dict(cfg))
        differing = {k for k, v in values.items() if v != defaults[k]}
        undeclared = differing - declared
        assert not undeclared, f"{path.name} [{node}] changes {sorted(undeclared)} without declaring it"
