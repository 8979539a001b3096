"""The real ``ros2 launch`` from the upstream sources in ../shared/upstream (test fixtures only).

launch, launch_ros, ros2cli and ros2launch are pure Python but not on PyPI; composition_interfaces
(needed by ``import launch_ros.actions``) is .srv files only. Both are installed into scratch
prefixes, never into .venv: the rest of the suite must keep seeing the venv without them (the
launch stand-in tests check that). shared/upstream/README.md says what was measured.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from cmake_route import VENV, cmake_install, python_site_packages

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT.parent / "shared" / "upstream"
PYTHON_PACKAGES = ("ros2-launch/launch", "ros2-launch/launch_xml", "ros2-launch/launch_yaml",
                   "ros2-launch_ros/launch_ros", "ros2-launch_ros/ros2launch",
                   "ros2-ros2cli/ros2cli", "ros2-ros2cli/ros2pkg")
INTERFACES = "ros2-rcl_interfaces/composition_interfaces"


def upstream_missing_reason() -> str | None:
    """Why the real ``ros2 launch`` cannot run here, or None when it can."""
    if not UPSTREAM.is_dir():
        return f"upstream launch sources not found at {UPSTREAM} (CI lays them out in ../shared)"
    missing = [p for p in PYTHON_PACKAGES + (INTERFACES,) if not (UPSTREAM / p).is_dir()]
    if missing:
        return f"upstream launch sources incomplete in {UPSTREAM}: {missing}"
    return None


def install_launch_packages(work: Path) -> Path:
    """pip-install the upstream Python packages into the prefix ``work/prefix``; returns it."""
    # CI lays shared/ out read-only and setuptools builds inside the source folder: copy first.
    sources = work / "src"
    for package in PYTHON_PACKAGES:
        shutil.copytree(UPSTREAM / package, sources / Path(package).name,
                        ignore=shutil.ignore_patterns("test", "__pycache__"))
    prefix = work / "prefix"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
           "--no-build-isolation", "--no-index", "--prefix", str(prefix)]
    cmd += [str(sources / Path(p).name) for p in PYTHON_PACKAGES]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return prefix


def build_composition_interfaces(work: Path) -> Path:
    """Generate composition_interfaces with the rosidl generators that build msg/; returns its prefix."""
    source = work / "composition_interfaces"
    shutil.copytree(UPSTREAM / INTERFACES, source)
    return cmake_install(source, work / "build", work / "install")


def ros2_launch_environment(prefixes: list[Path]) -> dict:
    """This process's environment (DDS domain included) with ``prefixes`` found first.

    ``prefixes``: install trees (this package, composition_interfaces, the launch packages).
    """
    env = dict(os.environ)
    python_paths = [str(python_site_packages(p)) for p in prefixes]
    env["PYTHONPATH"] = os.pathsep.join(python_paths + [p for p in [env.get("PYTHONPATH")] if p])
    env["AMENT_PREFIX_PATH"] = os.pathsep.join([str(p) for p in prefixes] + [str(VENV)])
    # The node launchers start with `#!/usr/bin/env python3`: this venv's interpreter must be
    # the python3 found first, also where the tests run without an activated venv (CI).
    bins = [str(p / "bin") for p in prefixes] + [str(Path(sys.executable).parent)]
    env["PATH"] = os.pathsep.join(bins + [env.get("PATH", "")])
    return env


class Ros2Launch:
    """``ros2 launch vla_rl_ros FILE ARGS`` as a child process, its output in ``log``."""

    def __init__(self, env: dict, launch_file: str, arguments: dict, log: Path):
        self.log = log
        argv = [shutil.which("ros2", path=env["PATH"]) or "ros2", "launch", "vla_rl_ros", launch_file]
        argv += [f"{name}:={value}" for name, value in arguments.items()]
        # A session of its own: the test's SIGINT must reach the nodes only through the launch
        # (that is what it checks), and a failed test can still kill every node of this launch.
        self.process = subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=_default_signals)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, chars: int = 6000) -> str:
        return f"\n--- ros2 launch output ({self.log}):\n" + self.output()[-chars:]

    def interrupt(self, timeout_s: float = 60.0) -> int:
        """SIGINT to ``ros2 launch`` only (what Ctrl-C on it does); its exit code."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """Clean-up after a failed test: the launch and every node it started (its own session)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:  # the launch and all its nodes are gone already
            pass
        self.process.wait(timeout=30)


def _default_signals() -> None:
    """In the child before exec: SIGINT and SIGTERM unblocked and at their defaults.

    An ignored or blocked signal survives exec, and earlier tests in the same pytest process
    (in-process nodes, rclpy's own signal handling) can leave the parent that way: ros2 launch
    then never saw the test's Ctrl-C (every real-launch test timed out on it in the full suite,
    none alone).
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
