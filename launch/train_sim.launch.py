"""Training graph: sim_bridge(s) -> policy -> recorder -> learner (PPO), plus the PRM when configured.

    ros2 launch vla_rl_ros train_sim.launch.py suite:=libero_object num_envs:=2 log_level:=info

Without ROS 2's launch packages the same graph starts with `vla-rl launch train_sim` (same arguments,
as NAME:=VALUE); both routes build their nodes from vla_rl_ros.graph.description.
"""
from vla_rl_ros.graph.ros_launch import generate


def generate_launch_description():
    """Declared, described arguments (config, suite, num_envs, model_path, log_level, ...) and the nodes."""
    return generate("train_sim")
