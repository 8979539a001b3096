"""safety_filter: the same safety layer as franka_bridge, for commands from any other source.

Puts the workspace box, step and velocity limits, watchdog, latched e-stop and dry run in front
of a driver for commands that do not come from the VLA policy (teleoperation, a scripted
controller, another policy runtime): absolute pose targets on ``command_in/pose``
(geometry_msgs/PoseStamped in the base frame) and gripper widths on ``command_in/gripper``
(std_msgs/Float64, metres) come out limited on ``command/*`` (armed) or ``dry_run/command/*``.
Parameters: the ``safety.*`` section (``config/franka.yaml``) plus ``base_frame`` and the gripper
widths (tighten-only at runtime, like ``safety.*``). docs/franka.md lists the topics.
"""
from __future__ import annotations

import sys
import time

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from std_msgs.msg import Float64

from vla_rl_ros.core.config import ExperimentConfig
from vla_rl_ros.nodes import qos
from vla_rl_ros.nodes.params import ExperimentParameters
from vla_rl_ros.nodes.runner import run_node
from vla_rl_ros.nodes.safety_io import SafetyLayer, pose_from_msg

NODE_NAME = "safety_filter"
EXTRA_PARAMETERS = {
    "base_frame": ("panda_link0", "Frame of the incoming targets and of the commands."),
    "gripper_open_width_m": (0.08, "Width published while the gripper should be open."),
    "gripper_closed_width_m": (0.0, "Width published while the gripper should be closed."),
}


class SafetyFilterNode(Node):
    """Limits externally produced pose targets and gripper commands before they reach the driver."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.params = ExperimentParameters(self, EXTRA_PARAMETERS, on_change=self._on_parameters)
        extra = self.params.extra_values
        cfg: ExperimentConfig = self.params.config
        self.safety = SafetyLayer(self, cfg.safety, NODE_NAME, str(extra["base_frame"]), self._widths())
        self.gripper_closed: bool | None = None
        self.create_subscription(PoseStamped, "command_in/pose", self._on_target, qos.COMMAND)
        self.create_subscription(Float64, "command_in/gripper", self._on_gripper, qos.COMMAND)
        self.get_logger().info(f"safety_filter up: {'ARMED' if cfg.safety.armed else 'dry run'}")

    def _widths(self) -> tuple[float, float]:
        extra = self.params.extra_values
        return float(extra["gripper_open_width_m"]), float(extra["gripper_closed_width_m"])

    def destroy_node(self) -> None:
        """Send a final stop (hold pose, zero twist) before the node goes away."""
        self.safety.final_stop()
        super().destroy_node()

    def _on_parameters(self, cfg: ExperimentConfig, changed: list[str]) -> None:
        self.safety.gripper_widths_m = self._widths()
        if any(c.startswith("safety.") and c != "safety.armed" for c in changed):
            self.safety.set_limits(cfg.safety)
        if "safety.armed" in changed:
            self.safety.set_armed(cfg.safety.armed)

    def _on_gripper(self, msg: Float64) -> None:
        open_width, closed_width = self.safety.gripper_widths_m
        # Nearer the closed width means "close"; NaN keeps the previous state.
        if msg.data == msg.data:
            self.gripper_closed = abs(msg.data - closed_width) < abs(msg.data - open_width)

    def _on_target(self, msg: PoseStamped) -> None:
        if msg.header.frame_id and msg.header.frame_id != self.safety.frame_id:
            self.safety.publish(self.safety.filter.reject_action(
                f"target in frame {msg.header.frame_id!r}, expected {self.safety.frame_id!r}"))
            return
        command = self.safety.filter.filter_target(pose_from_msg(msg), self.gripper_closed, time.monotonic())
        stamped = msg.header.stamp.sec or msg.header.stamp.nanosec
        self.safety.publish(command, msg.header.stamp if stamped else None)


def main(args: list[str] | None = None) -> int:
    """Entry point (``ros2 run vla_rl_ros safety_filter``); returns the exit code."""
    return run_node(SafetyFilterNode, args)


if __name__ == "__main__":
    sys.exit(main())
