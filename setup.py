"""pip route of the package (the ROS 2 route builds with CMakeLists.txt via colcon)."""
from setuptools import find_packages, setup

NODES = ["sim_bridge", "policy", "prm", "recorder", "learner", "franka_bridge", "safety_filter"]

setup(
    name="vla_rl_ros",
    version="0.1.0",
    description="Online RL (VLA-RL) for vision-language-action policies as a ROS 2 graph",
    license="Apache-2.0",
    packages=find_packages(include=["vla_rl_ros", "vla_rl_ros.*"]),
    python_requires=">=3.10",
    # Heavy dependencies (torch pinned to a CPU wheel, ROS 2 wheels, LIBERO) are installed by
    # tools/setup.sh in a fixed order; declaring torch here would let pip pull a CUDA build.
    install_requires=["numpy", "pyyaml"],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/vla_rl_ros"]),
        ("share/vla_rl_ros", ["package.xml"]),
    ],
    entry_points={
        "console_scripts": ["vla-rl = vla_rl_ros.cli.main:main"]
        + [f"vla-rl-{name.replace('_', '-')} = vla_rl_ros.nodes.{name}_node:main" for name in NODES],
    },
)
