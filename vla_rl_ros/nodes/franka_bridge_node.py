"""franka_bridge: the real-arm counterpart of sim_bridge, with the safety layer built in.

Toward the policy it behaves like sim_bridge with one environment: it publishes an
ObservationBatch (N = 1) built from the latest camera image, joint states and end-effector pose,
and applies the matching ActionBatch. Toward the driver (franka_ros2 / ros2_control) it sends
standard messages: a Cartesian pose target, a twist and a gripper width. Every action goes
through :class:`vla_rl_ros.core.safety.SafetyFilter`; until ``safety.armed`` is true the
commands go only to ``dry_run/command/*`` (the driver topics do not even have a publisher).
docs/franka.md lists every topic, type, QoS and parameter.
"""
from __future__ import annotations

import collections
import time

import numpy as np
import rclpy
from PIL import Image as PILImage
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, Header, String
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray

from vla_rl_ros.core.config import ExperimentConfig
from vla_rl_ros.core.envs.base import Observation
from vla_rl_ros.core.safety import EefPose, SafeCommand, SafetyFilter, proprio_from_state
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, EpisodeResult, ObservationBatch, StepRewardBatch
from vla_rl_ros.nodes import convert, markers, qos
from vla_rl_ros.nodes.params import ExperimentParameters

NODE_NAME = "franka_bridge"
COMMAND_TOPICS = ("command/pose", "command/twist", "command/gripper")
DRY_RUN_PREFIX = "dry_run/"
EXTRA_PARAMETERS = {
    "bridge_id": ("franka", "Bridge id echoed by the policy's ActionBatch (one per arm)."),
    "instruction": ("", "Task instruction; the latched 'instruction' topic (std_msgs/String) overrides it."),
    "task_id": (0, "Task index reported in observations."),
    "base_frame": ("panda_link0", "Frame of end-effector poses, commands and markers."),
    "finger_joint_names": (["panda_finger_joint1", "panda_finger_joint2"],
                           "JointState names of the two gripper fingers (proprio)."),
    "gripper_open_width_m": (0.08, "Gripper width commanded for action[6] <= 0 (open)."),
    "gripper_closed_width_m": (0.0, "Gripper width commanded for action[6] > 0 (close, grasp)."),
    "path_length": (300, "End-effector positions kept for the path marker."),
}


def pose_from_msg(msg: PoseStamped) -> EefPose:
    """End-effector pose of a PoseStamped (quaternion x, y, z, w)."""
    p, q = msg.pose.position, msg.pose.orientation
    return EefPose(np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w]))


def camera_frame(msg: Image, size: int) -> np.ndarray:
    """uint8 [size, size, 3] RGB of an rgb8 or bgr8 camera image: centre square crop, then resize.

    The policy takes square RGB frames of ``env.image_size`` (as LIBERO renders them); real
    cameras give wider BGR or RGB frames.
    """
    bgr = msg.encoding == "bgr8"
    if bgr:
        msg = Image(header=msg.header, height=msg.height, width=msg.width, encoding="rgb8",
                    is_bigendian=msg.is_bigendian, step=msg.step, data=msg.data)
    image = convert.image_from_msg(msg, what="camera")
    if bgr:
        image = image[:, :, ::-1]
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = np.ascontiguousarray(image[top:top + side, left:left + side])
    if side == size:
        return square
    return np.asarray(PILImage.fromarray(square).resize((size, size), PILImage.BILINEAR))


def command_messages(cmd: SafeCommand, header: Header, open_width: float, closed_width: float):
    """(PoseStamped | None, TwistStamped, Float64 | None) for one safe command."""
    pose = None
    if cmd.target is not None:
        pose = PoseStamped(header=header)
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = map(float, cmd.target.position)
        q = cmd.target.quaternion
        pose.pose.orientation.x, pose.pose.orientation.y = float(q[0]), float(q[1])
        pose.pose.orientation.z, pose.pose.orientation.w = float(q[2]), float(q[3])
    twist = TwistStamped(header=header)
    twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z = map(float, cmd.linear_velocity)
    twist.twist.angular.x, twist.twist.angular.y, twist.twist.angular.z = map(float, cmd.angular_velocity)
    gripper = None
    if cmd.gripper_closed is not None:
        gripper = Float64(data=float(closed_width if cmd.gripper_closed else open_width))
    return pose, twist, gripper


class FrankaBridgeNode(Node):
    """Observation publisher, action applier and safety layer for one Franka arm."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.params = ExperimentParameters(self, EXTRA_PARAMETERS, on_change=self._on_parameters)
        self.extra = self.params.extra_values
        cfg: ExperimentConfig = self.params.config
        self.safety = SafetyFilter(cfg.safety)
        self.instruction = str(self.extra["instruction"])
        self.image: Image | None = None
        self.fingers = np.zeros(2)
        self.pose: EefPose | None = None
        self.path: collections.deque = collections.deque(maxlen=max(2, int(self.extra["path_length"])))
        self.progress: float | None = None
        self.policy_version: int | None = None
        self.last_command: SafeCommand | None = None
        self.step_seq = 0
        self.episode_id = 0
        self.step_index = 0
        self.pending_seq: int | None = None
        self.pending_since = 0.0
        self.pending_stamp = None
        self.events_total = 0
        self.last_events: collections.deque = collections.deque(maxlen=5)

        self.create_subscription(Image, "camera/image_raw", self._on_image, qos.SENSOR_VIZ)
        self.create_subscription(JointState, "joint_states", self._on_joints, qos.SENSOR_VIZ)
        self.create_subscription(PoseStamped, "eef_pose", self._on_pose, qos.SENSOR_VIZ)
        self.create_subscription(ActionBatch, topics.ACTIONS, self._on_actions, qos.BATCH)
        self.create_subscription(StepRewardBatch, topics.STEP_REWARDS, self._on_rewards, qos.BATCH)
        self.create_subscription(String, "instruction", self._on_instruction, qos.LATCHED)
        self.create_subscription(Bool, "estop", self._on_estop, qos.COMMAND)
        self.create_service(Trigger, "estop_reset", self._on_estop_reset)
        self.create_service(SetBool, "end_episode", self._on_end_episode)
        self.obs_pub = self.create_publisher(ObservationBatch, topics.OBSERVATIONS, qos.BATCH)
        self.episode_pub = self.create_publisher(EpisodeResult, topics.EPISODE_RESULTS, qos.BATCH)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos.COMMAND)
        self.marker_pub = self.create_publisher(MarkerArray, "markers", qos.COMMAND)
        self.dry_run_pubs = self._command_publishers(DRY_RUN_PREFIX)
        self.driver_pubs: tuple | None = None
        self._apply_arming(cfg.safety.armed)
        self.create_timer(cfg.safety.control_period_s, self._on_control_tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.create_timer(1.0 / cfg.graph.viz_rate_hz, self._publish_markers)
        self.get_logger().info(f"franka_bridge '{self.extra['bridge_id']}' up: "
                               f"{'ARMED' if cfg.safety.armed else 'dry run'}, "
                               f"control {cfg.safety.control_rate_hz:g} Hz, "
                               f"watchdog {cfg.safety.watchdog_timeout_s:g} s")

    # ------------------------------------------------------------------ arming
    def _command_publishers(self, prefix: str) -> tuple:
        return (self.create_publisher(PoseStamped, prefix + COMMAND_TOPICS[0], qos.COMMAND),
                self.create_publisher(TwistStamped, prefix + COMMAND_TOPICS[1], qos.COMMAND),
                self.create_publisher(Float64, prefix + COMMAND_TOPICS[2], qos.COMMAND))

    def _apply_arming(self, armed: bool) -> None:
        if armed and self.driver_pubs is None:
            self.driver_pubs = self._command_publishers("")
            self.get_logger().warning("ARMED: safe commands now go to the driver topics")
        elif not armed and self.driver_pubs is not None:
            for pub in self.driver_pubs:
                self.destroy_publisher(pub)
            self.driver_pubs = None
            self.get_logger().warning("disarmed: commands go to dry_run/ topics only")

    def _on_parameters(self, cfg: ExperimentConfig, changed: list[str]) -> None:
        self.extra = self.params.extra_values
        if "instruction" in changed:
            self.instruction = str(self.extra["instruction"])
        if "safety.armed" in changed:
            if cfg.safety.armed:  # arming starts from a stop: the next fresh action moves the arm
                self._publish_command(self.safety.hold("armed: holding until the next fresh action"))
            self._apply_arming(cfg.safety.armed)
        limits = [c for c in changed if c.startswith("safety.") and c != "safety.armed"]
        if limits:
            old = self.safety
            self.safety = SafetyFilter(cfg.safety)  # starts stopped: the next fresh action moves the arm
            self.safety.counters = old.counters
            self.safety.estop_latched, self.safety.estop_reason = old.estop_latched, old.estop_reason
            self.get_logger().warning(f"safety limits changed ({', '.join(limits)}): "
                                      "stopped until the next action")

    # ------------------------------------------------------------------ inputs
    def _on_image(self, msg: Image) -> None:
        self.image = msg

    def _on_joints(self, msg: JointState) -> None:
        names = list(self.extra["finger_joint_names"])
        index = {name: i for i, name in enumerate(msg.name)}
        if all(n in index and index[n] < len(msg.position) for n in names):
            self.fingers = np.array([msg.position[index[n]] for n in names])

    def _on_pose(self, msg: PoseStamped) -> None:
        pose = pose_from_msg(msg)
        if not pose.is_finite():
            self._record(["ignored non-finite end-effector pose"])
            return
        self.pose = pose
        self.safety.update_state(pose, time.monotonic())
        if not self.path or np.linalg.norm(self.path[-1] - pose.position) > 1e-3:
            self.path.append(pose.position.copy())

    def _on_instruction(self, msg: String) -> None:
        self.instruction = msg.data

    def _on_rewards(self, msg: StepRewardBatch) -> None:
        if msg.bridge_id == self.extra["bridge_id"] and len(msg.progress):
            self.progress = float(msg.progress[0])

    def _on_estop(self, msg: Bool) -> None:
        if msg.data:
            first = not self.safety.estop_latched
            self.safety.latch_estop("estop topic")
            if first:
                self.get_logger().error("E-STOP latched: holding pose until 'estop_reset' is called")
            self._publish_command(self.safety.tick(time.monotonic()))
            self._publish_diagnostics()

    def _on_estop_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success = self.safety.reset_estop()
        response.message = ("e-stop cleared; the arm moves again on the next fresh action" if response.success
                            else "e-stop was not latched")
        self.get_logger().warning(response.message)
        return response

    def _on_end_episode(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        """Operator verdict (data = success): publish the EpisodeResult and start the next episode."""
        try:
            final = self._observation()
        except convert.MessageError:
            final = None
        self.episode_pub.publish(convert.episode_result_to_msg(
            str(self.extra["bridge_id"]), 0, self.episode_id, int(self.extra["task_id"]), 0,
            self.step_index, bool(request.data), False, False, "", self._header(), final_observation=final))
        response.success, response.message = True, f"episode {self.episode_id} ended, success={request.data}"
        self.episode_id += 1
        self.step_index = 0
        self.path.clear()
        return response

    def _on_actions(self, msg: ActionBatch) -> None:
        if msg.bridge_id != self.extra["bridge_id"]:
            return
        if self.pending_seq is None or msg.step_seq != self.pending_seq:
            self._record([f"ignored stale action step_seq={msg.step_seq} (waiting for {self.pending_seq})"])
            return
        self.pending_seq = None
        self.step_index += 1
        self.policy_version = int(msg.policy_version)
        now = time.monotonic()
        try:
            action = convert.actions_from_msg(msg, expected_env_ids=[0]).actions[0]
            command = self.safety.filter_action(action, now)
        except convert.MessageError as err:
            command = self.safety.reject_action(str(err))
        # Stamped with the observation it answers, so any listener can measure observation-to-command latency.
        self._publish_command(command, self.pending_stamp)

    # ------------------------------------------------------------------ outputs
    def _observation(self) -> Observation | None:
        """The current observation (None until a camera frame and a pose have arrived)."""
        if self.image is None or self.pose is None:
            return None
        return Observation(image=camera_frame(self.image, self.params.config.env.image_size),
                           instruction=self.instruction or "do the task",
                           proprio=proprio_from_state(self.pose, self.fingers),
                           task_id=int(self.extra["task_id"]), init_state_id=0, step=self.step_index)

    def _header(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg(), frame_id=str(self.extra["base_frame"]))

    def _record(self, events: list[str]) -> None:
        for event in events:
            self.events_total += 1
            self.last_events.append(event)
            self.get_logger().warning(f"safety: {event}")

    def _publish_command(self, command: SafeCommand | None, stamp=None) -> None:
        if command is None:
            return
        self._record(command.events)
        self.last_command = command
        header = self._header()
        if stamp is not None:
            header.stamp = stamp
        pose, twist, gripper = command_messages(command, header,
                                                float(self.extra["gripper_open_width_m"]),
                                                float(self.extra["gripper_closed_width_m"]))
        pubs = self.driver_pubs if self.driver_pubs is not None else self.dry_run_pubs
        if pose is not None:
            pubs[0].publish(pose)
        pubs[1].publish(twist)
        if gripper is not None:
            pubs[2].publish(gripper)

    def _on_control_tick(self) -> None:
        now = time.monotonic()
        self._publish_command(self.safety.tick(now))
        timeout = max(self.params.config.safety.watchdog_timeout_s, self.params.config.graph.action_timeout_s)
        if self.pending_seq is not None and now - self.pending_since < timeout:
            return  # lockstep: the next observation waits for the action of this one
        try:
            observation = self._observation()
        except convert.MessageError as err:
            self._record([f"camera image dropped: {err}"])
            return
        if observation is None:
            return
        self.step_seq += 1
        header = self._header()
        self.obs_pub.publish(convert.observations_to_msg(
            str(self.extra["bridge_id"]), self.step_seq, [0], [self.episode_id], [observation], header))
        self.pending_seq, self.pending_since, self.pending_stamp = self.step_seq, now, header.stamp

    def _status(self) -> tuple[bytes, str]:
        armed = self.driver_pubs is not None
        if self.safety.estop_latched:
            return DiagnosticStatus.ERROR, f"E-STOP latched ({self.safety.estop_reason})"
        mode = "armed" if armed else "dry run"
        if self.safety.stopped:
            return DiagnosticStatus.WARN, f"{mode}, stopped: {self.safety.stop_reason}"
        return (DiagnosticStatus.OK if armed else DiagnosticStatus.WARN), f"{mode}, moving"

    def _publish_diagnostics(self) -> None:
        level, message = self._status()
        values = [KeyValue(key=k, value=str(v)) for k, v in self.safety.counters.items()]
        values += [KeyValue(key="armed", value=str(self.driver_pubs is not None).lower()),
                   KeyValue(key="estop_latched", value=str(self.safety.estop_latched).lower()),
                   KeyValue(key="events_total", value=str(self.events_total)),
                   KeyValue(key="last_events", value=" | ".join(self.last_events))]
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: safety", message=message,
                                  hardware_id=str(self.extra["bridge_id"]), values=values)
        self.diag_pub.publish(DiagnosticArray(header=self._header(), status=[status]))

    def _publish_markers(self) -> None:
        cfg = self.params.config.safety
        target = None
        if self.last_command is not None and self.last_command.target is not None:
            target = self.last_command.target.position
        self.marker_pub.publish(markers.bridge_markers(
            self._header(), [p.tolist() for p in self.path], target, self.safety.stopped, self.instruction,
            self.progress, self._status()[1], (cfg.workspace_min_m, cfg.workspace_max_m),
            self.policy_version))


def main(args: list[str] | None = None) -> None:
    """Entry point of the franka_bridge node (``vla-rl-franka-bridge`` / ``ros2 run``)."""
    rclpy.init(args=args)
    node = None
    try:
        node = FrankaBridgeNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
