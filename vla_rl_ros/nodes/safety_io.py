"""The ROS side of the safety layer, shared by ``franka_bridge`` and ``safety_filter``.

:class:`SafetyLayer` owns the ROS-free :class:`~vla_rl_ros.core.safety.SafetyFilter` and wires it
to a node: the e-stop topic and reset service, the watchdog timer, the command publishers (dry
run or driver: the driver topics get a publisher only while armed), the measured end-effector
pose, logging of every clamp and stop, and ``/diagnostics``. docs/franka.md lists the topics.

Runtime parameter changes may only tighten the layer: disarm, shrink the workspace box, lower a
step or speed limit, shorten a timeout, narrow the gripper widths. Arming, any loosening, a new
control rate and switching ``use_sim_time`` are refused (counted, logged, in ``/diagnostics``).
The parameter services answer any DDS participant that can reach the node, and ROS 2 without
SROS2 access control has no notion of who the caller is; so the one act that proves an operator
at the robot is starting the process there, and arming is ``safety.armed:=true`` on its command
line or params file (``ros2 launch ... armed:=true``). Disarming stays a remote action, because
it is always safe. For the same reason clearing a latched e-stop needs a local act as well as the
``estop_reset`` call: a token file that the operator creates on the robot's machine (see
:func:`estop_reset_token`), which no DDS participant can write.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import stat
import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Float64, Header
from std_srvs.srv import Trigger

from vla_rl_ros.core.config_io import ConfigError, from_dict, to_dict
from vla_rl_ros.core.safety import EefPose, SafeCommand, SafetyConfig, SafetyFilter
from vla_rl_ros.core.safety_lock import check_gripper_widths, gripper_widths_loosened, loosened_fields
from vla_rl_ros.nodes import qos
from vla_rl_ros.nodes.rejections import Rejections

COMMAND_TOPICS = ("command/pose", "command/twist", "command/gripper")
DRY_RUN_PREFIX = "dry_run/"
SAFETY_PREFIX = "safety."
ESTOP_ANY_PUBLISHER = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                                 reliability=ReliabilityPolicy.BEST_EFFORT,
                                 durability=DurabilityPolicy.VOLATILE)
"""Matches reliable and best-effort, volatile and transient-local e-stop publishers alike: a
QoS-incompatible e-stop button is only a warning at discovery, while the arm keeps moving."""
GRIPPER_PARAMETERS = ("gripper_open_width_m", "gripper_closed_width_m")
"""Node parameters of the commanded gripper widths (tighten-only, like ``safety.*``)."""
ESTOP_RESET_TOKEN_S = 60.0
"""A reset token older than this (or older than the latch) does not clear the e-stop."""


def estop_reset_token(node: Node) -> Path:
    """The file whose fresh creation on the robot's machine lets ``estop_reset`` clear the e-stop.

    ``$ROS_HOME/vla_rl_ros/<node's fully qualified name>/estop_reset`` (``ROS_HOME`` defaults to
    ``~/.ros``), in a directory only the node's user may write: creating it (``touch``) proves a
    person or program on that machine, as that user, asked for the reset. Its path comes from the
    environment the process was started with, not from a parameter, so no remote caller can move it.
    """
    home = Path(os.environ.get("ROS_HOME") or Path.home() / ".ros")
    name = node.get_fully_qualified_name().strip("/").replace("/", ".")
    return home / "vla_rl_ros" / name / "estop_reset"


def fresh_local_token(path: Path, since: float, now: float) -> str:
    """'' when ``path`` is a regular file of this user created in [since, now], else why not."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return f"no reset token {path}"
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        return f"{path} is not a regular file of this user"
    if not since - 1.0 <= info.st_mtime <= now + 1.0 or now - info.st_mtime > ESTOP_RESET_TOKEN_S:
        return f"{path} was not created after the latch and within {ESTOP_RESET_TOKEN_S:g} s"
    return ""


def _plain(value):
    """Parameter arrays come back as array.array or tuples; the config wants lists."""
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "array" else value


def pose_from_msg(msg: PoseStamped) -> EefPose:
    """End-effector pose of a PoseStamped (quaternion x, y, z, w)."""
    p, q = msg.pose.position, msg.pose.orientation
    return EefPose(np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w]))


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


class SafetyLayer:
    """Safety filter + its topics on ``node``; call :meth:`publish` with every command to send."""

    def __init__(self, node: Node, config: SafetyConfig, hardware_id: str,
                 frame_id: str = "panda_link0", gripper_widths_m: tuple[float, float] = (0.08, 0.0)) -> None:
        self.node = node
        self.filter = SafetyFilter(config)
        self.hardware_id = hardware_id
        self.frame_id = frame_id
        check_gripper_widths(*gripper_widths_m)
        self.gripper_widths_m = gripper_widths_m
        """(open, closed) widths published for action[6] <= 0 and > 0."""
        self.rejections = Rejections(node, diagnostics=False)  # in this node's own status
        """Inputs the node refused (malformed camera frames, joint states...): ``rejected_*`` diagnostics."""
        self.reset_token = estop_reset_token(node)
        self.reset_token.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.reset_token.parent, 0o700)
        self.estop_latched_at = 0.0
        self.refused_estop_resets = 0
        self.pose: EefPose | None = None
        self.last_command: SafeCommand | None = None
        self.events_total = 0
        self.refused_parameter_changes = 0
        self.rejected_poses = 0
        self.last_events: collections.deque = collections.deque(maxlen=5)
        node.create_subscription(PoseStamped, "eef_pose", self.rejections.guard("eef_poses", self._on_pose),
                                 qos.SENSOR_VIZ)
        # A best-effort subscription matches every publisher, but it would also take a reliable
        # publisher's messages best-effort; the reliable one keeps those reliable. A message from
        # a reliable publisher then arrives twice, which a latch does not mind.
        node.create_subscription(Bool, "estop", self._on_estop, qos.COMMAND)
        node.create_subscription(Bool, "estop", self._on_estop, ESTOP_ANY_PUBLISHER)
        node.create_service(Trigger, "estop_reset", self._on_estop_reset)
        self.diag_pub = node.create_publisher(DiagnosticArray, "/diagnostics", qos.COMMAND)
        self.dry_run_pubs = self._command_publishers(DRY_RUN_PREFIX)
        self.driver_pubs: tuple | None = None
        self.set_armed(config.armed)
        node.create_timer(config.control_period_s, self._on_watchdog_tick)
        node.create_timer(1.0, self.publish_diagnostics)
        node.add_on_set_parameters_callback(self._refuse_loosening)

    def _refuse_loosening(self, parameters) -> SetParametersResult:
        """Let a runtime parameter change only tighten the layer (see the module docstring)."""
        current = self._current_config()
        changes = {p.name[len(SAFETY_PREFIX):]: _plain(p.value) for p in parameters
                   if p.name.startswith(SAFETY_PREFIX)}
        widths = {p.name: p.value for p in parameters if p.name in GRIPPER_PARAMETERS}
        why = [f"{p.name}: the watchdog and control timers run on this clock (sim time without "
               "/clock stops them)" for p in parameters if p.name == "use_sim_time"
               and bool(p.value) != bool(self.node.get_parameter("use_sim_time").value)]
        if changes:
            try:
                proposed = from_dict(SafetyConfig, {**to_dict(current), **changes})
            except ConfigError as err:
                return SetParametersResult(successful=False, reason=str(err))
            why += loosened_fields(current, proposed)
        if widths:
            try:
                proposed_widths = tuple(float(widths.get(n, w)) for n, w in zip(GRIPPER_PARAMETERS,
                                                                                self.gripper_widths_m))
                check_gripper_widths(*proposed_widths)
            except (ConfigError, TypeError, ValueError) as err:
                return SetParametersResult(successful=False, reason=str(err))
            why += gripper_widths_loosened(self.gripper_widths_m, proposed_widths)
        if not why:
            return SetParametersResult(successful=True)
        self.refused_parameter_changes += 1
        reason = (f"refused: a running safety layer can only be tightened ({'; '.join(why)}); arm or loosen "
                  "it by restarting the node with the new values, on the robot's machine")
        self.record([f"refused parameter change #{self.refused_parameter_changes}: {'; '.join(why)}"])
        self.publish_diagnostics()
        return SetParametersResult(successful=False, reason=reason)

    def _current_config(self) -> SafetyConfig:
        names = [f.name for f in dataclasses.fields(SafetyConfig)]
        return from_dict(SafetyConfig, {n: _plain(self.node.get_parameter(SAFETY_PREFIX + n).value)
                                        for n in names})

    @property
    def armed(self) -> bool:
        """True while commands go to the driver topics."""
        return self.driver_pubs is not None

    def header(self) -> Header:
        """Header stamped now in the base frame."""
        return Header(stamp=self.node.get_clock().now().to_msg(), frame_id=self.frame_id)

    # ------------------------------------------------------------------ configuration
    def _command_publishers(self, prefix: str) -> tuple:
        return (self.node.create_publisher(PoseStamped, prefix + COMMAND_TOPICS[0], qos.COMMAND),
                self.node.create_publisher(TwistStamped, prefix + COMMAND_TOPICS[1], qos.COMMAND),
                self.node.create_publisher(Float64, prefix + COMMAND_TOPICS[2], qos.COMMAND))

    def set_armed(self, armed: bool) -> None:
        """Arm (driver publishers created, starting from a hold) or disarm (driver publishers destroyed)."""
        if armed and self.driver_pubs is None:
            self.driver_pubs = self._command_publishers("")
            self.publish(self.filter.hold("armed: holding until the next fresh command"))
            self.node.get_logger().warning("ARMED: safe commands now go to the driver topics")
        elif not armed and self.driver_pubs is not None:
            for pub in self.driver_pubs:
                self.node.destroy_publisher(pub)
            self.driver_pubs = None
            self.node.get_logger().warning("disarmed: commands go to dry_run/ topics only")

    def set_limits(self, config: SafetyConfig) -> None:
        """New limits: a fresh filter (stopped until the next command); counters and e-stop latch kept."""
        old = self.filter
        self.filter = SafetyFilter(config)
        self.filter.counters = old.counters
        self.filter.estop_latched, self.filter.estop_reason = old.estop_latched, old.estop_reason
        if self.pose is not None:
            self.filter.update_state(self.pose, time.monotonic())
        self.node.get_logger().warning("safety limits changed: stopped until the next command")

    # ------------------------------------------------------------------ inputs
    def _on_pose(self, msg: PoseStamped) -> None:
        pose = pose_from_msg(msg)
        if not pose.is_finite() or not np.linalg.norm(pose.quaternion) > 1e-9:
            # Ignored, so the last good pose goes stale and the filter stops; a driver streaming
            # bad poses at 1 kHz is logged once a second, counted every time.
            self.rejected_poses += 1
            self.events_total += 1
            self.last_events.append(f"ignored end-effector pose {pose.position.tolist()} "
                                    f"{pose.quaternion.tolist()} (non-finite or zero quaternion)")
            self.node.get_logger().warning(f"safety: {self.last_events[-1]}; {self.rejected_poses} so far",
                                           throttle_duration_sec=1.0)
            return
        self.pose = pose
        self.filter.update_state(pose, time.monotonic())

    def _on_estop(self, msg: Bool) -> None:
        if not msg.data:
            return  # releasing the button never clears the latch: only estop_reset does
        if not self.filter.estop_latched:
            self.estop_latched_at = time.time()
            self.node.get_logger().error(f"E-STOP latched: holding pose until 'estop_reset' is called after "
                                         f"`touch {self.reset_token}` on this machine")
        self.filter.latch_estop("estop topic")
        self.publish(self.filter.tick(time.monotonic()))
        self.publish_diagnostics()

    def _on_estop_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Clear a latched e-stop, only with a fresh local token (module docstring); consumes it."""
        if not self.filter.estop_latched:
            response.success, response.message = False, "e-stop was not latched"
            return response
        why = fresh_local_token(self.reset_token, self.estop_latched_at, time.time())
        if why:
            self.refused_estop_resets += 1
            response.success = False
            response.message = (f"refused: clearing a latched e-stop needs a local act: on the robot's "
                                f"machine, as the node's user, `touch {self.reset_token}`, then call "
                                f"estop_reset within {ESTOP_RESET_TOKEN_S:g} s ({why})")
            self.record([f"refused estop_reset #{self.refused_estop_resets}: {why}"])
            self.publish_diagnostics()
            return response
        self.reset_token.unlink(missing_ok=True)  # one token, one reset
        response.success = self.filter.reset_estop()
        response.message = "e-stop cleared; the arm moves again on the next fresh command"
        self.node.get_logger().warning(response.message)
        return response

    def _on_watchdog_tick(self) -> None:
        self.publish(self.filter.tick(time.monotonic()))

    # ------------------------------------------------------------------ outputs
    def record(self, events: list[str]) -> None:
        """Log and keep every clamp or stop event (the counters live in the filter)."""
        for event in events:
            self.events_total += 1
            self.last_events.append(event)
            self.node.get_logger().warning(f"safety: {event}")

    def publish(self, command: SafeCommand | None, stamp=None) -> None:
        """Send ``command`` to the driver (armed) or the dry-run topics; ``stamp`` overrides the header's."""
        if command is None:
            return
        self.record(command.events)
        self.last_command = command
        header = self.header()
        if stamp is not None:
            header.stamp = stamp
        pose, twist, gripper = command_messages(command, header, *self.gripper_widths_m)
        pubs = self.driver_pubs if self.driver_pubs is not None else self.dry_run_pubs
        if pose is not None:
            pubs[0].publish(pose)
        pubs[1].publish(twist)
        if gripper is not None:
            pubs[2].publish(gripper)

    def final_stop(self) -> None:
        """Hold the pose and zero the twist on the way out, so no controller keeps the last command."""
        try:
            self.publish(self.filter.hold("node shutting down"))
        except Exception as err:  # the context may already be gone; nothing else can be done then
            self.node.get_logger().error(f"could not send the final stop: {err}")

    def status(self) -> tuple[bytes, str]:
        """Diagnostic level and message: ERROR e-stop latched, WARN dry run or stopped, OK armed, moving."""
        if self.filter.estop_latched:
            return DiagnosticStatus.ERROR, f"E-STOP latched ({self.filter.estop_reason})"
        mode = "armed" if self.armed else "dry run"
        if self.filter.stopped:
            return DiagnosticStatus.WARN, f"{mode}, stopped: {self.filter.stop_reason}"
        return (DiagnosticStatus.OK if self.armed else DiagnosticStatus.WARN), f"{mode}, moving"

    def publish_diagnostics(self) -> None:
        """One DiagnosticStatus with every counter, the mode and the last events on /diagnostics."""
        level, message = self.status()
        values = [KeyValue(key=k, value=str(v)) for k, v in self.filter.counters.items()]
        values += [KeyValue(key="armed", value=str(self.armed).lower()),
                   KeyValue(key="estop_latched", value=str(self.filter.estop_latched).lower()),
                   KeyValue(key="events_total", value=str(self.events_total)),
                   KeyValue(key="refused_parameter_changes", value=str(self.refused_parameter_changes)),
                   KeyValue(key="rejected_eef_poses", value=str(self.rejected_poses)),
                   KeyValue(key="refused_estop_resets", value=str(self.refused_estop_resets)),
                   *[KeyValue(key=f"rejected_{k}", value=str(v))
                     for k, v in sorted(self.rejections.counts.items())],
                   KeyValue(key="last_events", value=" | ".join(self.last_events))]
        status = DiagnosticStatus(level=level, name=f"{self.node.get_name()}: safety", message=message,
                                  hardware_id=self.hardware_id, values=values)
        self.diag_pub.publish(DiagnosticArray(header=self.header(), status=[status]))
