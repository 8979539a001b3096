"""Node parameters are the ExperimentConfig: loaded from the params YAML, described, validated on set."""
import pytest
import rclpy
import yaml
from rclpy.node import Node
from rclpy.parameter import Parameter

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.nodes.params import ExperimentParameters, field_descriptions


@pytest.fixture()
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


def _node(context, tmp_path, params: dict, name="param_test"):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return Node(name, context=context, cli_args=["--ros-args", "--params-file", str(path)])


def test_nested_yaml_keys_reach_the_config(context, tmp_path):
    node = _node(context, tmp_path, {"/**": {"ros__parameters": {
        "env": {"num_envs": 3, "task_ids": [4, 5]}, "ppo": {"clip_range": 0.1}}},
        "param_test": {"ros__parameters": {"ppo": {"clip_range": 0.3}}}})
    params = ExperimentParameters(node, {"greedy": (False, "decode greedily")})
    assert params.config.env.num_envs == 3 and params.config.env.task_ids == [4, 5]
    assert params.config.ppo.clip_range == 0.3  # the node's own block wins over /**
    assert params.extra_values == {"greedy": False}
    node.destroy_node()


def test_every_parameter_is_described_from_the_dataclass_docstrings(context, tmp_path):
    node = _node(context, tmp_path, {"/**": {"ros__parameters": {}}})
    ExperimentParameters(node)
    descriptors = node.describe_parameters(["ppo.clip_range", "env.num_envs", "graph.action_timeout_s"])
    assert descriptors[0].description == "PPO ratio clip."
    assert "Parallel environment" in descriptors[1].description
    assert all(text for text in field_descriptions().values())
    node.destroy_node()


def test_unknown_parameter_in_the_file_is_an_error(context, tmp_path):
    node = _node(context, tmp_path, {"/**": {"ros__parameters": {"ppo": {"clip_rnage": 0.1}}}})
    with pytest.raises(ConfigError, match="ppo.clip_rnage"):
        ExperimentParameters(node)
    node.destroy_node()


def test_bad_value_in_the_file_names_field_and_value(context, tmp_path):
    node = _node(context, tmp_path, {"/**": {"ros__parameters": {"env": {"num_envs": 0}}}})
    with pytest.raises(ConfigError, match="env.num_envs=0"):
        ExperimentParameters(node)
    node.destroy_node()


def test_set_is_validated_and_applied(context, tmp_path):
    node = _node(context, tmp_path, {"/**": {"ros__parameters": {}}})
    changes = []
    params = ExperimentParameters(node, on_change=lambda cfg, names: changes.append(names))
    result = node.set_parameters([Parameter("ppo.clip_range", value=-1.0)])[0]
    assert not result.successful and "ppo.clip_range=-1.0" in result.reason
    assert params.config.ppo.clip_range == 0.2 and changes == []
    assert node.set_parameters([Parameter("ppo.clip_range", value=0.15)])[0].successful
    assert params.config.ppo.clip_range == 0.15 and changes == [["ppo.clip_range"]]
    result = node.set_parameters([Parameter("env.backend", value="gazebo")])[0]
    assert not result.successful and "env.backend" in result.reason
    node.destroy_node()


def test_empty_yaml_list_means_an_empty_list(context, tmp_path):
    # rcl reads "[]" as "not set"; it must still mean [] (and fail validation where [] is invalid).
    node = _node(context, tmp_path, {"/**": {"ros__parameters": {"env": {"render_gpus": []}}}})
    assert ExperimentParameters(node).config.env.render_gpus == []
    node.destroy_node()
    node = _node(context, tmp_path, {"/**": {"ros__parameters": {"env": {"task_ids": []}}}}, "empty_tasks")
    with pytest.raises(ConfigError, match="env.task_ids"):
        ExperimentParameters(node)
    node.destroy_node()
