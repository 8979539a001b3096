"""franka_bridge over real loopback DDS: the node runs as its own process, against the fake driver.

The test process plays the policy (it answers each ObservationBatch with chosen actions) and
hosts the fake driver; it checks what reaches the driver topics and what stays in dry run.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_local.xml"))
sys.path.insert(0, str(Path(__file__).parent))

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import Bool, Float64  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from dds_domains import isolate_dds  # noqa: E402
from fake_franka_driver import FakeFrankaDriver  # noqa: E402
from vla_rl_ros.msg import ActionBatch, ObservationBatch  # noqa: E402
from vla_rl_ros.nodes import convert, qos  # noqa: E402
from vla_rl_ros.graph.processes import stop_processes  # noqa: E402

PERIOD = 0.1  # 10 Hz: two periods of slack stay meaningful on an overloaded 2-core machine
WATCHDOG = 0.3
LIMITS = dict(step=0.02, rot=0.15, speed=0.25, ang=1.0, lo=np.array([0.25, -0.4, 0.02]),
              hi=np.array([0.75, 0.4, 0.6]))


class PolicyHarness(Node):
    """Answers observations with ``self.action_fn(step_seq)``: one action [7] or a chunk [K, 7]
    (None = stay silent), ``self.delay_fn(step_seq)`` seconds late when set (a slow policy);
    records the rest."""

    def __init__(self) -> None:
        super().__init__("policy_harness")
        self.lock = threading.Lock()
        self.action_fn = None
        self.delay_fn = None
        self.sent: list[tuple[float, int]] = []
        self.observations: list[ObservationBatch] = []
        self.dry_run: list = []
        self.diagnostics: list[DiagnosticStatus] = []
        self.create_subscription(ObservationBatch, "observations", self._on_obs, qos.BATCH)
        self.action_pub = self.create_publisher(ActionBatch, "actions", qos.BATCH)
        self.estop_pub = self.create_publisher(Bool, "estop", qos.COMMAND)
        self.create_subscription(PoseStamped, "dry_run/command/pose", self._on_dry, qos.COMMAND)
        self.create_subscription(TwistStamped, "dry_run/command/twist", self._on_dry, qos.COMMAND)
        self.create_subscription(Float64, "dry_run/command/gripper", self._on_dry, qos.COMMAND)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, qos.COMMAND)
        self.reset_client = self.create_client(Trigger, "estop_reset")
        self.param_client = self.create_client(SetParameters, "franka_bridge/set_parameters")

    def _on_obs(self, msg: ObservationBatch) -> None:
        if msg.bridge_id != "franka":
            return
        with self.lock:
            self.observations.append(msg)
        action = self.action_fn(msg.step_seq) if self.action_fn else None
        if action is None:
            return
        chunk = np.asarray(action, np.float64).reshape(-1, 7)
        reply = convert.actions_to_msg(msg.bridge_id, msg.step_seq, list(msg.env_ids), 3,
                                       np.zeros((1, chunk.size)), np.zeros((1, len(chunk), 7)),
                                       np.zeros((1, chunk.size)), np.zeros(1), 1.0,
                                       incarnation=msg.incarnation)
        reply.actions = [float(a) for a in chunk.ravel()]  # bypass the converter's checks: adversarial
        delay = self.delay_fn(msg.step_seq) if self.delay_fn else 0.0
        if delay > 0:  # from a timer thread, so the executor (and the fake driver) keep spinning
            threading.Timer(delay, self._reply, (reply, msg.step_seq)).start()
        else:
            self._reply(reply, msg.step_seq)

    def _reply(self, reply: ActionBatch, step_seq: int) -> None:
        if not rclpy.ok():
            return  # a late reply after the test ended
        self.action_pub.publish(reply)
        with self.lock:
            self.sent.append((time.monotonic(), step_seq))

    def _on_dry(self, msg) -> None:
        with self.lock:
            self.dry_run.append((time.monotonic(), msg))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics += [s for s in msg.status if s.name.startswith("franka_bridge")]


@pytest.fixture
def graph(monkeypatch, tmp_path):
    """Fake driver + policy harness spinning here, and a function that starts the bridge process."""
    # A private DDS domain: other test runs on this machine also publish 'observations' and 'actions'.
    isolate_dds(monkeypatch)
    monkeypatch.setenv("ROS_HOME", str(tmp_path / "ros_home"))  # where the e-stop reset token goes
    rclpy.init()
    driver, harness = FakeFrankaDriver(), PolicyHarness()
    executor = SingleThreadedExecutor()
    executor.add_node(driver)
    executor.add_node(harness)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    processes = []

    def start_bridge(armed: bool, **parameters) -> subprocess.Popen:
        args = [sys.executable, "-m", "vla_rl_ros.nodes.franka_bridge_node", "--ros-args",
                "-p", f"safety.armed:={'true' if armed else 'false'}",
                "-p", f"safety.control_rate_hz:={1 / PERIOD}", "-p", f"safety.watchdog_timeout_s:={WATCHDOG}",
                "-p", "instruction:=put the bowl on the plate", "--log-level", "error"]
        for name, value in parameters.items():
            args[-2:-2] = ["-p", f"{name}:={value}"]
        process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        processes.append(process)
        wait_for(lambda: len(harness.observations) > 0, 20, "first observation from franka_bridge", process)
        return process

    yield driver, harness, start_bridge
    stop_processes(processes)
    executor.shutdown()
    rclpy.shutdown()
    thread.join(timeout=5)


def wait_for(condition, timeout_s: float, what: str, process=None) -> None:
    """Poll ``condition`` until true; fail naming ``what`` (with the bridge's output if it died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            output = process.stdout.read()
            pytest.fail(f"franka_bridge exited ({process.returncode}) before {what}:\n{output}")
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def random_actions(seed: int):
    rng = np.random.default_rng(seed)
    return lambda seq: rng.uniform(0.3, 1.0, 7) * rng.choice([-1, 1], 7)


def angle_between(q1, q2) -> float:
    return 2.0 * math.acos(min(1.0, abs(float(np.dot(q1, q2)))))


def xyz(v) -> np.ndarray:
    return np.array([v.x, v.y, v.z])


def test_dry_run_never_reaches_the_driver_and_cannot_be_armed_remotely(graph):
    driver, harness, start_bridge = graph
    harness.action_fn = random_actions(0)
    start_bridge(armed=False)
    wait_for(lambda: sum(isinstance(m, PoseStamped) for _, m in harness.dry_run) >= 15, 20,
             "dry-run commands")
    assert harness.param_client.wait_for_service(timeout_sec=10)

    def set_parameter(name, value):
        future = harness.param_client.call_async(SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()]))
        wait_for(future.done, 10, "set_parameters reply")
        return future.result().results[0]

    # Arming is a local act (the node's start-up parameters), never a set_parameters call.
    armed = set_parameter("safety.armed", True)
    assert not armed.successful and "safety.armed: arming" in armed.reason
    rejected = set_parameter("safety.max_linear_speed_m_s", -1.0)
    assert not rejected.successful and "safety.max_linear_speed_m_s" in rejected.reason
    rate = set_parameter("safety.control_rate_hz", 50.0)
    assert not rate.successful and "restarting the node" in rate.reason
    dry_before = len(harness.dry_run)
    wait_for(lambda: len(harness.dry_run) >= dry_before + 15, 10, "dry-run commands after the attempts")
    assert all(driver.commands(kind) == [] for kind in ("pose", "twist", "gripper"))
    for topic in ("/command/pose", "/command/twist", "/command/gripper"):
        assert harness.count_publishers(topic) == 0, f"{topic} has a publisher in dry run"


def test_adversarial_actions_keep_driver_commands_inside_limits(graph):
    driver, harness, start_bridge = graph
    rng = np.random.default_rng(1)
    kinds = [lambda: rng.uniform(-1, 1, 7), lambda: rng.uniform(-5, 5, 7), lambda: rng.normal(0, 1e6, 7),
             lambda: np.where(rng.random(7) < 0.5, np.nan, 0.5), lambda: np.full(7, np.inf)]
    harness.action_fn = lambda seq: kinds[seq % len(kinds)]()
    start_bridge(armed=True)
    wait_for(lambda: len(harness.sent) >= 60, 40, "60 adversarial actions answered")
    time.sleep(0.3)
    poses = [m for _, m in driver.commands("pose")]
    assert len(poses) >= 30
    previous = [np.array([0.5, 0.0, 0.3])]
    previous_q = [np.array([1.0, 0.0, 0.0, 0.0])]
    for pose in poses:
        p = xyz(pose.pose.position)
        o = pose.pose.orientation
        q = np.array([o.x, o.y, o.z, o.w])
        assert np.isfinite(p).all() and np.isfinite(q).all() and abs(np.linalg.norm(q) - 1) < 1e-6
        assert (p >= LIMITS["lo"] - 1e-9).all() and (p <= LIMITS["hi"] + 1e-9).all()
        # Each target is one bounded step from a pose the arm recently had (state may lag by a message).
        assert min(np.linalg.norm(p - r) for r in previous[-3:]) <= LIMITS["step"] + 1e-6
        assert min(angle_between(q, r) for r in previous_q[-3:]) <= LIMITS["rot"] + 1e-5
        previous.append(p)
        previous_q.append(q)
    for _, twist in driver.commands("twist"):
        assert np.linalg.norm(xyz(twist.twist.linear)) <= LIMITS["speed"] + 1e-9
        assert np.linalg.norm(xyz(twist.twist.angular)) <= LIMITS["ang"] + 1e-9
    assert {g.data for _, g in driver.commands("gripper")} <= {0.0, 0.08}
    wait_for(lambda: harness.diagnostics, 5, "diagnostics")
    time.sleep(1.1)
    values = {kv.key: kv.value for kv in harness.diagnostics[-1].values}
    assert int(values["stop_invalid_action"]) >= 20 and int(values["clamp_action_range"]) >= 10
    assert int(values["clamp_velocity"]) + int(values["clamp_translation_step"]) >= 10


def test_watchdog_stops_within_two_control_periods(graph):
    driver, harness, start_bridge = graph
    budget = {"left": 25}

    def answer_then_go_silent(seq):
        budget["left"] -= 1
        return random_actions(seq)(seq) if budget["left"] >= 0 else None

    harness.action_fn = answer_then_go_silent
    start_bridge(armed=True)
    wait_for(lambda: budget["left"] < 0, 20, "25 actions answered")
    time.sleep(WATCHDOG + 6 * PERIOD)
    last_action = harness.sent[-1][0]
    after = [(t, m) for t, m in driver.commands("twist") if t > last_action]
    moving = [t for t, m in after if np.linalg.norm(xyz(m.twist.linear)) > 0]
    stops = [(t, m) for t, m in after if not xyz(m.twist.linear).any() and not xyz(m.twist.angular).any()]
    assert stops, "no stop command after the policy went silent"
    delay = stops[0][0] - last_action
    assert WATCHDOG - 0.01 <= delay <= WATCHDOG + 2 * PERIOD, f"stop after {delay:.3f} s"
    assert all(t < stops[0][0] for t in moving)
    assert len(stops) >= 3  # the stop is repeated every period, not sent once and forgotten
    # Stopped means holding: every pose target after the stop repeats the last one sent before it.
    # (Timed by the stop, not by the last action: under load the bridge may turn that action into
    # a target a few ms after the harness sent it.)
    poses = driver.commands("pose")
    before_stop = [m for t, m in poses if t < stops[0][0]]
    held = [m for t, m in poses if t >= stops[0][0]]
    assert before_stop and held, "no pose target around the stop"
    for m in held:
        np.testing.assert_allclose(xyz(m.pose.position), xyz(before_stop[-1].pose.position), atol=1e-9)


def test_estop_latches_until_the_reset_service_and_shutdown_stops(graph):
    driver, harness, start_bridge = graph
    harness.action_fn = random_actions(2)
    process = start_bridge(armed=True)
    wait_for(lambda: len(driver.commands("pose")) >= 10, 20, "moving commands")
    wait_for(lambda: harness.estop_pub.get_subscription_count() > 0, 10, "e-stop subscriber")
    harness.estop_pub.publish(Bool(data=True))
    latched_at = time.monotonic()
    time.sleep(0.4)
    harness.estop_pub.publish(Bool(data=False))  # releasing the button does not clear the latch
    time.sleep(1.2)
    late = [m for t, m in driver.commands("twist") if t > latched_at + 0.05]
    assert len(late) >= 10 and all(not xyz(m.twist.linear).any() for m in late)
    assert harness.diagnostics[-1].level == DiagnosticStatus.ERROR
    assert harness.reset_client.wait_for_service(timeout_sec=10)
    (Path(os.environ["ROS_HOME"]) / "vla_rl_ros" / "franka_bridge" / "estop_reset").touch()  # the local act
    future = harness.reset_client.call_async(Trigger.Request())
    wait_for(future.done, 10, "estop_reset reply")
    assert future.result().success
    reset_at = time.monotonic()
    wait_for(lambda: any(t > reset_at and np.linalg.norm(xyz(m.twist.linear)) > 0
                         for t, m in driver.commands("twist")), 10, "motion after the reset")
    interrupted_at = time.monotonic()
    process.send_signal(signal.SIGINT)  # what ros2 launch / vla-rl launch send first
    assert process.wait(timeout=15) == 0
    time.sleep(0.3)
    last = [m for t, m in driver.commands("twist") if t > interrupted_at]
    assert last and not xyz(last[-1].twist.linear).any(), "no final stop on shutdown"
