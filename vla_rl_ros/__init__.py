"""vla_rl_ros: online RL (VLA-RL) for vision-language-action policies as a ROS 2 graph.

``vla_rl_ros.core`` is ROS-free (policy, PPO, PRM, curriculum, environments, data);
``vla_rl_ros.nodes`` are thin rclpy nodes over it (and their ROS helpers); ``vla_rl_ros.graph``
describes and launches the graph; ``vla_rl_ros.bench`` measures the running graph;
``vla_rl_ros.cli`` is the ``vla-rl`` command.
"""
# The generated message modules (vla_rl_ros.msg) are installed by the ROS build into the
# environment's site-packages, while the Python sources may live in a checkout (editable
# install). Extending __path__ lets one import name serve both halves.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
