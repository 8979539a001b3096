"""The ROS 2 (colcon) route: CMakeLists.txt with the Python install on builds and installs.

colcon itself only calls cmake for an ament_cmake package; test/helpers/cmake_route.py drives the
same configure, build and install against the PyPI ROS wheels, and this checks the install tree
a ROS 2 user gets.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cmake_route import have_cmake_and_ninja, python_site_packages, this_package_installed

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not have_cmake_and_ninja(), reason="cmake and ninja are installed by tools/setup.sh")
def test_cmake_route_installs_messages_python_nodes_launch_and_config(tmp_path_factory):
    install = this_package_installed(tmp_path_factory)
    site = python_site_packages(install) / "vla_rl_ros"
    assert (site / "msg" / "_observation_batch.py").is_file()
    assert (site / "core" / "config.py").is_file() and (site / "nodes").is_dir()
    assert "extend_path" in (site / "__init__.py").read_text()   # ours, not the empty generated one
    share = install / "share" / "vla_rl_ros"
    assert (share / "package.xml").is_file()
    for launch_file in (ROOT / "launch").glob("*.launch.py"):
        assert (share / "launch" / launch_file.name).is_file()
    assert (share / "config" / "train_sim.yaml").is_file()
    assert os.access(install / "bin" / "vla-rl", os.X_OK)
    node_scripts = sorted(p.name for p in (ROOT / "scripts" / "ros2_run").glob("*"))
    assert node_scripts, "scripts/ros2_run holds one launcher per node for `ros2 run`"
    for name in node_scripts:
        assert os.access(install / "lib" / "vla_rl_ros" / name, os.X_OK)
