"""A fake Franka driver that honours exactly the interfaces documented in docs/franka.md.

It publishes what a franka_ros2 / ros2_control setup (plus a camera driver) publishes:
``camera/image_raw`` (sensor_msgs/Image rgb8), ``joint_states`` (sensor_msgs/JointState, the
seven Panda joints and two fingers) and ``eef_pose`` (geometry_msgs/PoseStamped); and it obeys
``command/pose`` (the end-effector goes to the target), ``command/twist`` and
``command/gripper`` (std_msgs/Float64 width in metres). Every received command is recorded with
its arrival time so tests can check what reached the driver, and every pose target with the
arm's pose when it arrived (how far that command asked the arm to jump). :meth:`guide_to` plays
an operator moving the arm by hand (Franka's guiding mode): the arm goes where it is pushed and
does not follow pose targets until :meth:`release`. This is the only fake in the Franka tests:
there is no arm here.
"""
from __future__ import annotations

import threading
import time

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64

from vla_rl_ros.nodes import qos

PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]
START_POSITION = (0.5, 0.0, 0.3)


class FakeFrankaDriver(Node):
    """Simulated arm: the end effector jumps to each pose target; sensors stream at ``rate_hz``."""

    def __init__(self, rate_hz: float = 50.0, image_size: int = 32, context=None) -> None:
        super().__init__("fake_franka_driver", context=context)
        self.lock = threading.Lock()
        self.position = np.array(START_POSITION)
        self.quaternion = np.array([1.0, 0.0, 0.0, 0.0])  # gripper pointing down: 180 deg about x
        self.finger_width = 0.08
        self.received: dict[str, list] = {"pose": [], "twist": [], "gripper": []}
        self.arm_at_pose_command: list[tuple[np.ndarray, np.ndarray]] = []
        """(position, quaternion) of the arm when each ``received["pose"]`` entry arrived."""
        self.guided = False
        self.image = np.zeros((image_size, image_size, 3), np.uint8)
        self.image[:, : image_size // 2] = (200, 30, 30)
        self.image_pub = self.create_publisher(Image, "camera/image_raw", qos.SENSOR_VIZ)
        self.joint_pub = self.create_publisher(JointState, "joint_states", qos.SENSOR_VIZ)
        self.pose_pub = self.create_publisher(PoseStamped, "eef_pose", qos.SENSOR_VIZ)
        self.create_subscription(PoseStamped, "command/pose", self._on_pose, qos.COMMAND)
        self.create_subscription(TwistStamped, "command/twist", self._on_twist, qos.COMMAND)
        self.create_subscription(Float64, "command/gripper", self._on_gripper, qos.COMMAND)
        self.create_timer(1.0 / rate_hz, self._publish_state)

    def _on_pose(self, msg: PoseStamped) -> None:
        with self.lock:
            self.received["pose"].append((time.monotonic(), msg))
            self.arm_at_pose_command.append((self.position.copy(), self.quaternion.copy()))
            if self.guided:
                return  # held by the operator's hand: the controller's target is not followed
            p, q = msg.pose.position, msg.pose.orientation
            self.position = np.array([p.x, p.y, p.z])
            self.quaternion = np.array([q.x, q.y, q.z, q.w])
        self._publish_state()  # a real driver streams state at 1 kHz: the new pose is seen at once

    def _on_twist(self, msg: TwistStamped) -> None:
        with self.lock:
            self.received["twist"].append((time.monotonic(), msg))

    def _on_gripper(self, msg: Float64) -> None:
        with self.lock:
            self.received["gripper"].append((time.monotonic(), msg))
            self.finger_width = float(np.clip(msg.data, 0.0, 0.08))

    def _publish_state(self) -> None:
        stamp = self.get_clock().now().to_msg()
        with self.lock:
            position, quaternion, width = self.position.copy(), self.quaternion.copy(), self.finger_width
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, "panda_link0"
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = map(float, position)
        (pose.pose.orientation.x, pose.pose.orientation.y,
         pose.pose.orientation.z, pose.pose.orientation.w) = map(float, quaternion)
        self.pose_pub.publish(pose)
        joints = JointState(name=PANDA_JOINTS + FINGERS,
                            position=[0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, width / 2, width / 2])
        joints.header.stamp = stamp
        self.joint_pub.publish(joints)
        image = Image(height=self.image.shape[0], width=self.image.shape[1], encoding="rgb8",
                      step=self.image.shape[1] * 3, data=self.image.tobytes())
        image.header.stamp, image.header.frame_id = stamp, "camera"
        self.image_pub.publish(image)

    def guide_to(self, position, quaternion) -> None:
        """The operator takes the arm and moves it to ``position``, ``quaternion`` (it stays guided)."""
        with self.lock:
            self.guided = True
            self.position = np.asarray(position, np.float64).copy()
            self.quaternion = np.asarray(quaternion, np.float64).copy()
        self._publish_state()

    def release(self) -> None:
        """The operator lets go: pose targets move the arm again."""
        with self.lock:
            self.guided = False

    def pose_commands_with_arm(self) -> list:
        """``(arrival_time, msg, arm_position, arm_quaternion)`` of every pose target so far."""
        with self.lock:
            return [(t, m, p, q) for (t, m), (p, q) in zip(self.received["pose"], self.arm_at_pose_command)]

    def commands(self, kind: str) -> list:
        """Copy of the ``(arrival_time, msg)`` list of one command kind: pose, twist or gripper."""
        with self.lock:
            return list(self.received[kind])
