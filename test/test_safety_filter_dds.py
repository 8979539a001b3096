"""safety_filter as its own process over loopback DDS: external pose targets reach the fake driver
only within limits, bad targets stop the arm, and the watchdog stops it when targets cease."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dds_domains import isolate_dds
from vla_rl_ros.graph.processes import stop_processes

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_local.xml"))
sys.path.insert(0, str(Path(__file__).parent))

PERIOD, WATCHDOG, STEP = 0.05, 0.2, 0.02


def xyz(v) -> np.ndarray:
    return np.array([v.x, v.y, v.z])


@pytest.fixture
def driver(monkeypatch):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from fake_franka_driver import FakeFrankaDriver
    isolate_dds(monkeypatch)
    rclpy.init()
    fake = FakeFrankaDriver()
    executor = SingleThreadedExecutor()
    executor.add_node(fake)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    process = subprocess.Popen(
        [sys.executable, "-m", "vla_rl_ros.nodes.safety_filter_node", "--ros-args",
         "-p", "safety.armed:=true",
         "-p", f"safety.control_rate_hz:={1 / PERIOD}", "-p", f"safety.watchdog_timeout_s:={WATCHDOG}",
         "--log-level", "error"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield fake, process
    stop_processes([process])
    executor.shutdown()
    rclpy.shutdown()
    thread.join(timeout=5)


def test_external_targets_are_limited_and_watched(driver):
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import Float64

    from vla_rl_ros.nodes import qos
    fake, process = driver
    target_pub = fake.create_publisher(PoseStamped, "command_in/pose", qos.COMMAND)
    gripper_pub = fake.create_publisher(Float64, "command_in/gripper", qos.COMMAND)
    deadline = time.monotonic() + 20
    while target_pub.get_subscription_count() == 0 or not fake.commands("twist"):
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "safety_filter never came up"
        time.sleep(0.05)
    gripper_pub.publish(Float64(data=0.0))
    rng = np.random.default_rng(0)
    for i in range(40):  # far, random, and sometimes NaN targets, faster than the control rate
        msg = PoseStamped()
        msg.header.frame_id = "panda_link0"
        goal = rng.uniform(-2, 2, 3) if i % 7 else np.array([math.nan, 0, 0])
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = map(float, goal)
        msg.pose.orientation.w = 1.0
        target_pub.publish(msg)
        time.sleep(0.03)
    last_sent = time.monotonic()
    time.sleep(WATCHDOG + 4 * PERIOD)
    poses = [xyz(m.pose.position) for _, m in fake.commands("pose")]
    assert len(poses) >= 20
    lo, hi = np.array([0.25, -0.4, 0.02]), np.array([0.75, 0.4, 0.6])
    previous = [np.array([0.5, 0.0, 0.3])]
    for p in poses:
        assert np.isfinite(p).all() and (p >= lo - 1e-9).all() and (p <= hi + 1e-9).all()
        assert min(np.linalg.norm(p - r) for r in previous[-3:]) <= STEP + 1e-6
        previous.append(p)
    assert any(m.data == 0.0 for _, m in fake.commands("gripper"))
    late = [m for t, m in fake.commands("twist") if t > last_sent + WATCHDOG + 2 * PERIOD]
    assert late and all(not xyz(m.twist.linear).any() for m in late), "watchdog did not stop the arm"
