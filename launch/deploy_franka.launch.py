"""Real-arm graph: franka_bridge (safety layer, dry run by default) + policy (+ prm) + recorder (+ learner).

    ros2 launch vla_rl_ros deploy_franka.launch.py mode:=eval camera_topic:=/camera/color/image_raw
    ros2 launch vla_rl_ros deploy_franka.launch.py mode:=rl armed:=true   # only after a dry run

Every argument is declared with a description (``ros2 launch ... --show-args``); the node list
comes from vla_rl_ros.graph.deploy_franka, shared with the plain-process route. docs/franka.md
describes the driver interfaces and the safety layer.
"""
from vla_rl_ros.graph.deploy_franka import generate_launch


def generate_launch_description():
    """Declared arguments (mode, armed, use_prm, topics, ...) and the nodes of the real-arm graph."""
    return generate_launch()
