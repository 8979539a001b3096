"""The real-arm graph: franka_bridge (with its safety layer) + policy (+ prm) + recorder (+ learner).

Built from the same :class:`~vla_rl_ros.graph.description.NodeSpec` / ``GraphSpec`` as the
simulation graphs, so ``launch/deploy_franka.launch.py`` (launch_ros) and the plain-process route
start identical nodes. ROS-free: launch files import it before any ROS package.

Modes: ``eval`` (greedy policy, no learner) and ``rl`` (sampling policy, learner updates the
adapters from the recorded on-robot episodes). The bridge's driver-side topics are remappable
from launch arguments; ``armed`` defaults to false (dry run).
"""
from __future__ import annotations

from typing import Any

from vla_rl_ros.graph.description import LOG_LEVELS, GraphSpec, NodeSpec, default_config_file

GRAPH = "deploy_franka"
MODES = ("eval", "rl")
# Driver-side topics of franka_bridge (relative names inside the node) -> launch argument.
DRIVER_TOPICS = {
    "camera/image_raw": "camera_topic",
    "joint_states": "joint_states_topic",
    "eef_pose": "eef_pose_topic",
    "command/pose": "pose_command_topic",
    "command/twist": "twist_command_topic",
    "command/gripper": "gripper_command_topic",
    "estop": "estop_topic",
}

# name -> (default, description), shared by the launch file and the plain-process route.
DEPLOY_ARGUMENTS: dict[str, tuple[str, str]] = {
    "config": ("", "ROS 2 params YAML ('' = the package's config/franka.yaml)"),
    "mode": ("eval", "eval (greedy policy, no learner) or rl (sampling policy + learner: on-robot RL)"),
    "armed": ("false", "true sends safe commands to the driver; false (default) = dry run, "
                       "commands only on dry_run/command/*"),
    "use_prm": ("false", "also start the process reward model (needs reward.prm_path in the config)"),
    "model_path": ("", "policy checkpoint directory ('' = the config file's policy.model_path)"),
    "instruction": ("", "task instruction sent to the policy ('' = the config file's)"),
    "output_dir": ("", "run directory for bags, adapters and logs ('' = the config file's train.output_dir)"),
    "camera_topic": ("camera/image_raw", "sensor_msgs/Image from the camera driver"),
    "joint_states_topic": ("joint_states", "sensor_msgs/JointState from the arm (fingers for proprio)"),
    "eef_pose_topic": ("eef_pose", "geometry_msgs/PoseStamped of the end effector in the base frame"),
    "pose_command_topic": ("command/pose", "geometry_msgs/PoseStamped Cartesian target to the controller"),
    "twist_command_topic": ("command/twist", "geometry_msgs/TwistStamped Cartesian velocity to the "
                                             "controller"),
    "gripper_command_topic": ("command/gripper", "std_msgs/Float64 gripper width in metres"),
    "estop_topic": ("estop", "std_msgs/Bool e-stop input (true latches until the estop_reset service)"),
    "log_level": ("info", f"ROS log level of every node: {', '.join(LOG_LEVELS)}"),
}


def _bool(name: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(f"{name}={value!r}: true or false")
    return value.lower() == "true"


def build_deploy_graph(**arguments: str) -> GraphSpec:
    """Nodes of the real-arm graph for launch ``arguments`` (strings); ValueError names a bad argument."""
    unknown = sorted(set(arguments) - set(DEPLOY_ARGUMENTS))
    if unknown:
        raise ValueError(f"unknown launch argument(s) {unknown}; known: {', '.join(DEPLOY_ARGUMENTS)}")
    args = {name: default for name, (default, _) in DEPLOY_ARGUMENTS.items()}
    args.update({k: str(v) for k, v in arguments.items()})
    if args["mode"] not in MODES:
        raise ValueError(f"mode={args['mode']!r}: one of {', '.join(MODES)}")
    if args["log_level"] not in LOG_LEVELS:
        raise ValueError(f"log_level={args['log_level']!r}: one of {', '.join(LOG_LEVELS)}")
    armed, use_prm = _bool("armed", args["armed"]), _bool("use_prm", args["use_prm"])
    params_file = args["config"] or default_config_file("franka")
    shared: dict[str, Any] = {"safety.armed": armed}
    if args["model_path"]:
        shared["policy.model_path"] = args["model_path"]
    if args["output_dir"]:
        shared["train.output_dir"] = args["output_dir"]
        shared["graph.bag_dir"] = args["output_dir"].rstrip("/") + "/bags"
    cfg = _resolved_config(params_file, shared)
    if use_prm and not cfg.reward.prm_path:
        raise ValueError("use_prm=true needs reward.prm_path in the config file")
    # policy + recorder (+ prm) must hear the first observation
    bridge_params = dict(shared, min_observation_subscribers=2 + int(use_prm))
    if args["instruction"]:
        bridge_params["instruction"] = args["instruction"]
    remappings = [(topic, args[arg]) for topic, arg in DRIVER_TOPICS.items() if args[arg] != topic]
    nodes = [NodeSpec("franka_bridge", "franka_bridge", "", bridge_params, remappings),
             NodeSpec("policy", "policy", "", dict(shared, greedy=args["mode"] == "eval"))]
    if use_prm:
        nodes.append(NodeSpec("prm", "prm", "", dict(shared), required=False))
    nodes.append(NodeSpec("recorder", "recorder", "", dict(shared)))
    if args["mode"] == "rl":
        nodes.append(NodeSpec("learner", "learner", "", dict(shared)))
    return GraphSpec(GRAPH, params_file, args["log_level"], nodes)


def _resolved_config(params_file: str, flat_overrides: dict[str, Any]):
    """The ExperimentConfig the nodes will see (a bad file fails here, before any node starts)."""
    from vla_rl_ros.core.config import load_config
    return load_config(params_file, [f"{k}={v}" for k, v in flat_overrides.items()])


def generate_launch():
    """The launch_ros LaunchDescription of the real-arm graph, every argument declared and described."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    from vla_rl_ros.graph.ros_launch import node_action

    def nodes(context, *args, **kwargs):
        values = {name: context.launch_configurations.get(name, default)
                  for name, (default, _) in DEPLOY_ARGUMENTS.items()}
        graph = build_deploy_graph(**values)
        return [node_action(spec, graph) for spec in graph.nodes]

    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, (default, description) in DEPLOY_ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=nodes)])
