"""franka_bridge against the rest of the network, over real loopback DDS (issue 26).

The bridge runs as its own process against the fake driver (the fixture of
test_franka_bridge_dds). A *remote client* — a node in a DDS participant of its own, i.e. what
any machine that discovers the bridge can run — tries to arm it and loosen every limit, presses
the e-stop with a best-effort publisher, and streams end-effector poses with zero and NaN
quaternions. Checked: every loosening is refused with a reason, counted in /diagnostics, and the
driver's commands stay inside the limits the bridge started with; the gripper widths may only
narrow; the best-effort e-stop latches, and the remote client cannot clear it without the local
reset token; bad poses are counted and the bridge keeps serving.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.srv import GetParameters, SetParameters, SetParametersAtomically
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

import test_franka_bridge_dds
from test_franka_bridge_dds import LIMITS, angle_between, random_actions, wait_for, xyz
from vla_rl_ros.nodes import qos

graph = test_franka_bridge_dds.graph  # its fixture: fake driver, policy harness, bridge process

BRIDGE = "/franka_bridge"
ATTACKS = [("safety.workspace_min_m", [-10.0, -10.0, -10.0]), ("safety.workspace_max_m", [10.0, 10.0, 10.0]),
           ("safety.max_linear_speed_m_s", 100.0), ("safety.max_angular_speed_rad_s", 100.0),
           ("safety.max_translation_step_m", 1.0), ("safety.max_rotation_step_rad", 3.0),
           ("safety.action_translation_scale_m", 1.0), ("safety.action_rotation_scale_rad", 3.0),
           ("safety.watchdog_timeout_s", 1e9), ("safety.state_timeout_s", 1e9),
           ("safety.control_rate_hz", 1000.0), ("use_sim_time", True)]
"""One loosening per parameter (arming is tried once the bridge is disarmed); the first five and
arming are what issue 26 saw accepted."""


class RemoteClient:
    """A node in its own rclpy context (its own DDS participant), spinning in a thread."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("remote_client", context=self.context)
        self.lock = threading.Lock()
        self.diagnostics: list[DiagnosticStatus] = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, qos.COMMAND)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics += [s for s in msg.status if s.name.startswith("franka_bridge")]

    def diagnostic(self, key: str) -> str | None:
        """``key`` of the latest franka_bridge status (None before the first)."""
        with self.lock:
            last = self.diagnostics[-1] if self.diagnostics else None
        return None if last is None else {kv.key: kv.value for kv in last.values}.get(key)

    def call(self, srv_type, name: str, request):
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=15), f"{name} not available"
        future = client.call_async(request)
        wait_for(future.done, 15, f"{name} reply")
        return future.result()

    def set_parameters(self, pairs, atomically: bool = False):
        """Results of a remote set (one per parameter, or the one atomic result)."""
        messages = [Parameter(name, value=value).to_parameter_msg() for name, value in pairs]
        if atomically:
            return [self.call(SetParametersAtomically, f"{BRIDGE}/set_parameters_atomically",
                              SetParametersAtomically.Request(parameters=messages)).result]
        return list(self.call(SetParameters, f"{BRIDGE}/set_parameters",
                              SetParameters.Request(parameters=messages)).results)

    def get_parameters(self, names):
        reply = self.call(GetParameters, f"{BRIDGE}/get_parameters", GetParameters.Request(names=names))
        return {n: parameter_value_to_python(v) for n, v in zip(names, reply.values)}

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(timeout=5)


def assert_inside_original_limits(poses, twists) -> None:
    """Every driver command: in the start-up box, one bounded step from a recent pose, bounded twist."""
    previous, previous_q = [np.array([0.5, 0.0, 0.3])], [np.array([1.0, 0.0, 0.0, 0.0])]
    for pose in poses:
        p, o = xyz(pose.pose.position), pose.pose.orientation
        q = np.array([o.x, o.y, o.z, o.w])
        assert (p >= LIMITS["lo"] - 1e-9).all() and (p <= LIMITS["hi"] + 1e-9).all(), p
        assert min(np.linalg.norm(p - r) for r in previous[-3:]) <= LIMITS["step"] + 1e-6
        assert min(angle_between(q, r) for r in previous_q[-3:]) <= LIMITS["rot"] + 1e-5
        previous.append(p)
        previous_q.append(q)
    for twist in twists:
        assert np.linalg.norm(xyz(twist.twist.linear)) <= LIMITS["speed"] + 1e-9
        assert np.linalg.norm(xyz(twist.twist.angular)) <= LIMITS["ang"] + 1e-9


def test_a_remote_client_can_neither_arm_nor_loosen_the_bridge(graph):
    driver, harness, start_bridge = graph
    # The policy pushes into the (+x, +y, +z) corner of the box and rotates as fast as it may.
    harness.action_fn = lambda seq: np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, -1.0])
    start_bridge(armed=True)  # the local act: armed on the bridge's own command line
    remote = RemoteClient()
    try:
        refused = 0
        for name, value in ATTACKS:
            (result,) = remote.set_parameters([(name, value)])
            assert not result.successful and name in result.reason and "restarting the node" in result.reason
            refused += 1
        batch = ATTACKS[:5] + [("safety.armed", False)]
        for result in remote.set_parameters(batch, atomically=True) + remote.set_parameters(batch[:5]):
            assert not result.successful
            refused += 1
        names = [name for name, _ in ATTACKS] + ["safety.armed"]
        values = remote.get_parameters(names)
        assert list(values["safety.workspace_max_m"]) == LIMITS["hi"].tolist()
        assert values["safety.max_linear_speed_m_s"] == LIMITS["speed"] and values["safety.armed"] is True
        assert values["safety.watchdog_timeout_s"] == 0.3 and values["use_sim_time"] is False
        # Tightening is still a remote action.
        assert all(r.successful for r in remote.set_parameters([("safety.max_linear_speed_m_s", 0.2)]))
        wait_for(lambda: remote.diagnostic("refused_parameter_changes") == str(refused), 10,
                 f"/diagnostics counting {refused} refused changes")

        wait_for(lambda: any(xyz(m.pose.position)[1] >= LIMITS["hi"][1] - 1e-6
                             for _, m in driver.commands("pose")), 60, "the arm pressed against the box")
        poses = [m for _, m in driver.commands("pose")]
        assert len(poses) >= 30
        assert_inside_original_limits(poses, [m for _, m in driver.commands("twist")])

        # Disarming is always allowed; arming again is not.
        assert all(r.successful for r in remote.set_parameters([("safety.armed", False)]))
        time.sleep(0.5)
        at_disarm = len(driver.commands("pose"))
        (rearm,) = remote.set_parameters([("safety.armed", True)])
        assert not rearm.successful and "arming" in rearm.reason
        dry_before = len(harness.dry_run)
        wait_for(lambda: len(harness.dry_run) >= dry_before + 10, 10, "dry-run commands after disarming")
        assert len(driver.commands("pose")) == at_disarm
        wait_for(lambda: remote.diagnostic("armed") == "false", 5, "/diagnostics armed=false")
    finally:
        remote.close()


def test_a_best_effort_estop_publisher_latches_the_estop(graph):
    driver, harness, start_bridge = graph
    harness.action_fn = random_actions(3)
    start_bridge(armed=True)
    wait_for(lambda: len(driver.commands("pose")) >= 10, 20, "moving commands")
    remote = RemoteClient()
    try:
        button = remote.node.create_publisher(
            Bool, "estop", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        wait_for(lambda: button.get_subscription_count() >= 1, 10, "the bridge matching a best-effort e-stop")
        for _ in range(3):  # what a button node does: repeat, since best effort may drop one
            button.publish(Bool(data=True))
            time.sleep(0.05)
        latched_at = time.monotonic()
        wait_for(lambda: remote.diagnostic("estop_latched") == "true", 5, "/diagnostics estop_latched=true")
        time.sleep(1.0)
        late = [m for t, m in driver.commands("twist") if t > latched_at + 0.05]
        assert len(late) >= 5 and all(not xyz(m.twist.linear).any() for m in late)
        assert remote.diagnostics[-1].level == DiagnosticStatus.ERROR
    finally:
        remote.close()


def test_poses_with_zero_or_nan_quaternions_are_counted_and_the_bridge_keeps_serving(graph):
    driver, harness, start_bridge = graph
    harness.action_fn = random_actions(4)
    process = start_bridge(armed=True)
    wait_for(lambda: len(driver.commands("pose")) >= 5, 20, "moving commands")
    remote = RemoteClient()
    try:
        bad = remote.node.create_publisher(PoseStamped, "eef_pose", qos.SENSOR_VIZ)
        wait_for(lambda: bad.get_subscription_count() >= 1, 10, "the bridge subscribing eef_pose")
        for i in range(20):
            msg = PoseStamped()
            msg.header.frame_id = "panda_link0"
            msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = 0.5, 0.0, 0.3
            if i % 2:  # all-zero quaternion (what an uninitialised driver message holds)
                msg.pose.orientation.w = 0.0
            else:
                msg.pose.orientation.x = float("nan")
            bad.publish(msg)
            time.sleep(0.02)
        sent_at = time.monotonic()
        wait_for(lambda: int(remote.diagnostic("rejected_eef_poses") or 0) >= 5, 10,
                 "/diagnostics counting rejected poses", process)
        wait_for(lambda: sum(t > sent_at for t, _ in driver.commands("pose")) >= 10, 15,
                 "driver commands after the bad poses", process)
        assert process.poll() is None, "franka_bridge died"
    finally:
        remote.close()


def test_the_gripper_widths_can_only_narrow_remotely(graph):
    driver, harness, start_bridge = graph
    harness.action_fn = lambda seq: np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0 if seq % 2 else -1.0])
    start_bridge(armed=True)
    remote = RemoteClient()
    try:
        for name, value in (("gripper_open_width_m", 0.2), ("gripper_closed_width_m", -0.05),
                            ("gripper_open_width_m", float("nan"))):
            (result,) = remote.set_parameters([(name, value)])
            assert not result.successful and name in result.reason, result.reason
        assert remote.get_parameters(["gripper_open_width_m"])["gripper_open_width_m"] == 0.08
        narrower = [("gripper_open_width_m", 0.06), ("gripper_closed_width_m", 0.01)]
        assert all(r.successful for r in remote.set_parameters(narrower))
        for name, value in (("gripper_open_width_m", 0.08), ("gripper_closed_width_m", 0.0)):
            (result,) = remote.set_parameters([(name, value)])  # back to the start-up values: looser
            assert not result.successful and "restarting the node" in result.reason
        wait_for(lambda: remote.diagnostic("refused_parameter_changes") == "3", 10,
                 "/diagnostics counting three loosenings (the invalid values are refused, not counted)")
        changed_at = time.monotonic()
        wait_for(lambda: {round(m.data, 3) for t, m in driver.commands("gripper") if t > changed_at + 0.3}
                 >= {0.06, 0.01}, 20, "gripper commands at the narrowed widths")
        widths = [m.data for _, m in driver.commands("gripper")]
        assert min(widths) >= 0.0 and max(widths) <= 0.08, "a gripper command left the start-up interval"
    finally:
        remote.close()


def test_a_remote_client_cannot_clear_the_estop_without_the_local_token(graph):
    driver, harness, start_bridge = graph
    harness.action_fn = random_actions(5)
    process = start_bridge(armed=True)
    wait_for(lambda: len(driver.commands("pose")) >= 5, 20, "moving commands")
    remote = RemoteClient()
    token = Path(os.environ["ROS_HOME"]) / "vla_rl_ros" / "franka_bridge" / "estop_reset"
    try:
        button = remote.node.create_publisher(Bool, "estop", qos.COMMAND)
        wait_for(lambda: button.get_subscription_count() >= 1, 10, "the bridge subscribing estop")
        token.touch()  # made before the latch: it does not count
        time.sleep(1.1)
        button.publish(Bool(data=True))
        wait_for(lambda: remote.diagnostic("estop_latched") == "true", 10, "/diagnostics estop_latched=true")
        refused = remote.call(Trigger, "estop_reset", Trigger.Request())
        assert not refused.success and "local act" in refused.message and str(token) in refused.message
        os.remove(token)
        assert not remote.call(Trigger, "estop_reset", Trigger.Request()).success  # no token at all
        latched_at = time.monotonic()
        time.sleep(0.5)
        late = [m for t, m in driver.commands("twist") if t > latched_at]
        assert late and all(not xyz(m.twist.linear).any() for m in late), "the arm moved while latched"
        wait_for(lambda: remote.diagnostic("refused_estop_resets") == "2", 10, "/diagnostics refused resets")
        token.touch()  # the operator, on the robot's machine
        reset = remote.call(Trigger, "estop_reset", Trigger.Request())
        assert reset.success and not token.exists(), "the token is used up by one reset"
        wait_for(lambda: remote.diagnostic("estop_latched") == "false", 10, "/diagnostics estop cleared")
        assert process.poll() is None
    finally:
        remote.close()
