"""The ROS 2 (colcon) route: CMakeLists.txt with the Python install on builds and installs.

colcon itself only calls cmake for an ament_cmake package; this drives the same configure,
build and install against the PyPI ROS wheels and checks the install tree a ROS 2 user gets.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def copy_sources(dest: Path) -> None:
    # A workspace keeps the package apart from the environment; copying keeps .venv out of
    # the source tree (CMake refuses exported include paths inside the source directory).
    for name in ("package.xml", "CMakeLists.txt", "setup.py", "msg", "vla_rl_ros", "launch",
                 "config", "scripts", "rviz", "resource", "tools"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ninja") is None,
                    reason="cmake and ninja are installed by tools/setup.sh")
def test_cmake_route_installs_messages_python_nodes_launch_and_config(tmp_path):
    src, build, install = tmp_path / "src", tmp_path / "build", tmp_path / "install"
    src.mkdir()
    copy_sources(src)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV))
    configure = ["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja",
                 f"-DCMAKE_PREFIX_PATH={VENV}", f"-DCMAKE_INSTALL_PREFIX={install}",
                 f"-DPython3_EXECUTABLE={sys.executable}", "-DPython3_FIND_VIRTUALENV=ONLY",
                 "-DBUILD_TESTING=OFF",
                 f"-DCMAKE_PROJECT_INCLUDE={src / 'tools/cmake/ros_wheel_include_fix.cmake'}"]
    for cmd in (configure, ["cmake", "--build", str(build)], ["cmake", "--install", str(build)]):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, (" ".join(cmd) + "\n" + out.stdout[-4000:] + out.stderr[-4000:])
    site = next(install.glob("lib/python3*/site-packages/vla_rl_ros"))
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
