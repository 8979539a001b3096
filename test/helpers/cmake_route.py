"""The ROS 2 (colcon) route, driven by hand: cmake configure, build and install of an ament_cmake
package against the PyPI ROS wheels of this venv.

colcon itself only calls cmake for an ament_cmake package, so this is what a ROS 2 user's build
does. The install tree of this package is built once per test session (test_ros2_route checks
it, test_ros2_launch_real launches from it): the build takes half a minute on two cores.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
WHEEL_INCLUDE_FIX = ROOT / "tools" / "cmake" / "ros_wheel_include_fix.cmake"
PACKAGE_SOURCES = ("package.xml", "CMakeLists.txt", "setup.py", "msg", "vla_rl_ros", "launch",
                   "config", "scripts", "rviz", "resource", "tools")
_session_install: Path | None = None


def have_cmake_and_ninja() -> bool:
    """tools/setup.sh installs both; a bare machine may lack them."""
    return shutil.which("cmake") is not None and shutil.which("ninja") is not None


def copy_package_sources(dest: Path) -> None:
    """This package's build inputs, as a workspace's src/vla_rl_ros would hold them."""
    # A workspace keeps the package apart from the environment; copying keeps .venv out of
    # the source tree (CMake refuses exported include paths inside the source directory).
    dest.mkdir(parents=True, exist_ok=True)
    for name in PACKAGE_SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)


def cmake_install(source: Path, build: Path, install: Path, prefixes: tuple[Path, ...] = ()) -> Path:
    """Configure, build and install the ament_cmake package ``source`` into ``install``.

    ``prefixes`` are install trees of packages it depends on, found before the venv's wheels.
    Raises AssertionError with the failing step's output.
    """
    search = [str(p) for p in prefixes] + [str(VENV)]
    env = dict(os.environ, AMENT_PREFIX_PATH=os.pathsep.join(search))
    configure = ["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja",
                 f"-DCMAKE_PREFIX_PATH={';'.join(search)}", f"-DCMAKE_INSTALL_PREFIX={install}",
                 f"-DPython3_EXECUTABLE={sys.executable}", "-DPython3_FIND_VIRTUALENV=ONLY",
                 "-DBUILD_TESTING=OFF", f"-DCMAKE_PROJECT_INCLUDE={WHEEL_INCLUDE_FIX}"]
    for cmd in (configure, ["cmake", "--build", str(build)], ["cmake", "--install", str(build)]):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, (" ".join(cmd) + "\n" + out.stdout[-4000:] + out.stderr[-4000:])
    return install


def this_package_installed(tmp_path_factory) -> Path:
    """The install prefix of this package built by the CMake route, once per test session."""
    global _session_install
    if _session_install is None:
        work = tmp_path_factory.mktemp("cmake_route")
        copy_package_sources(work / "src")
        _session_install = cmake_install(work / "src", work / "build", work / "install")
    return _session_install


def python_site_packages(install: Path) -> Path:
    """``lib/python3.X/site-packages`` of an install prefix."""
    return install / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
