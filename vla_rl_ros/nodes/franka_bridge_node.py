"""franka_bridge: the real-arm counterpart of sim_bridge, with the safety layer built in.

Toward the policy it behaves like sim_bridge with one environment: it publishes an
ObservationBatch (N = 1) built from the latest camera image, joint states and end-effector pose,
and applies the matching ActionBatch. Toward the driver (franka_ros2 / ros2_control) it sends
standard messages: a Cartesian pose target, a twist and a gripper width. Every action goes
through :class:`vla_rl_ros.core.safety.SafetyFilter`; until ``safety.armed`` is true the
commands go only to ``dry_run/command/*`` (the driver topics do not even have a publisher).
Arming happens only at start-up, and at runtime the safety parameters can only be tightened
(:mod:`vla_rl_ros.nodes.safety_io` says why).

Action chunks (``policy.chunk_size`` K > 1): the first action of a chunk is commanded when the
chunk arrives, the others one per control period after it, each through the safety filter; each
is fresh for two periods, so the watchdog stops the arm at most two periods after the chunk's
last action has run (the chunk is fresh for K periods). When the chunk is spent the bridge holds
the pose and publishes the next observation (the decision point). A stop inside a chunk (e-stop,
stale state) drops the rest of it. K = 1 keeps OpenVLA's loop: each action is commanded on
arrival and stays fresh for ``safety.watchdog_timeout_s`` while the next one is computed.
Inputs are checked before use: a malformed camera frame, non-finite finger positions, an empty or
over-long instruction and non-finite PRM progress are counted (``rejected_*`` in ``/diagnostics``)
and ignored; an exception no check foresaw in a callback is counted too, and holds the arm.
Like sim_bridge, every run has its own ``incarnation`` (start time in ns) in its observations and
episode results. docs/franka.md lists every topic, type, QoS and parameter.
"""
from __future__ import annotations

import sys
import collections
import time
from collections import deque

import numpy as np
from PIL import Image as PILImage
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray

from vla_rl_ros.core.config import ExperimentConfig
from vla_rl_ros.core.envs.base import Observation
from vla_rl_ros.core.safety import proprio_from_state
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, EpisodeResult, ObservationBatch, StepRewardBatch
from vla_rl_ros.nodes import convert, markers, qos
from vla_rl_ros.nodes.params import ExperimentParameters
from vla_rl_ros.nodes.runner import run_node
from vla_rl_ros.nodes.safety_io import SafetyLayer

NODE_NAME = "franka_bridge"
EXTRA_PARAMETERS = {
    "bridge_id": ("franka", "Bridge id echoed by the policy's ActionBatch (one per arm)."),
    "instruction": ("", "Task instruction; the latched 'instruction' topic (std_msgs/String) overrides it."),
    "task_id": (-1, "Task index reported in observations; -1 = the first of env.task_ids (the policy "
                    "refuses tasks outside env.task_ids)."),
    "base_frame": ("panda_link0", "Frame of end-effector poses, commands and markers."),
    "finger_joint_names": (["panda_finger_joint1", "panda_finger_joint2"],
                           "JointState names of the two gripper fingers (proprio)."),
    "gripper_open_width_m": (0.08, "Gripper width commanded for action[6] <= 0 (open)."),
    "gripper_closed_width_m": (0.0, "Gripper width commanded for action[6] > 0 (close, grasp)."),
    "path_length": (300, "End-effector positions kept for the path marker."),
    "min_observation_subscribers": (1, "Publish observations only once this many nodes subscribe "
                                       "(policy, recorder, prm), so the first steps are not lost."),
}


def camera_pixels(msg: Image) -> np.ndarray:
    """uint8 [H, W, 3] RGB view of an rgb8 or bgr8 camera image; MessageError when malformed."""
    bgr = msg.encoding == "bgr8"
    if bgr:
        msg = Image(header=msg.header, height=msg.height, width=msg.width, encoding="rgb8",
                    is_bigendian=msg.is_bigendian, step=msg.step, data=msg.data)
    image = convert.image_from_msg(msg, what="camera")
    return image[:, :, ::-1] if bgr else image


def camera_frame(msg: Image, size: int) -> np.ndarray:
    """uint8 [size, size, 3] RGB of an rgb8 or bgr8 camera image: centre square crop, then resize.

    The policy takes square RGB frames of ``env.image_size`` (as LIBERO renders them); real
    cameras give wider BGR or RGB frames.
    """
    image = camera_pixels(msg)
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = np.ascontiguousarray(image[top:top + side, left:left + side])
    if side == size:
        return square
    return np.asarray(PILImage.fromarray(square).resize((size, size), PILImage.BILINEAR))


class FrankaBridgeNode(Node):
    """Observation publisher and action applier for one Franka arm, behind the safety layer."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.params = ExperimentParameters(self, EXTRA_PARAMETERS, on_change=self._on_parameters)
        self.extra = self.params.extra_values
        cfg: ExperimentConfig = self.params.config
        self.safety = SafetyLayer(self, cfg.safety, str(self.extra["bridge_id"]),
                                  str(self.extra["base_frame"]), self._gripper_widths())
        self.instruction = str(self.extra["instruction"])
        self.image: Image | None = None
        self.fingers = np.zeros(2)
        self.path: collections.deque = collections.deque(maxlen=max(2, int(self.extra["path_length"])))
        self.progress: float | None = None
        self.policy_version: int | None = None
        self.step_seq = 0
        self.episode_id = 0
        self.step_index = 0
        """Actions executed in this episode (the next observation's step index)."""
        self.decisions = 0
        """Chunks of this episode that began to run."""
        self.last_seq = 0
        """step_seq of the last of them."""
        self.chunk_size = int(cfg.policy.chunk_size)
        self.chunk: deque = deque()
        """Actions of the running chunk still to command, one per control period."""
        self.chunk_running = False
        self.pending_seq: int | None = None
        self.pending_since = 0.0
        self.pending_stamp = None
        self.paused = False
        self.incarnation = time.time_ns()
        self.rejections = self.safety.rejections

        def subscribe(msg_type, topic, kind, callback, profile):
            self.create_subscription(msg_type, topic, self.rejections.guard(
                kind, callback, on_error=self._hold_after_error), profile)
        subscribe(Image, "camera/image_raw", "camera_images", self._on_image, qos.SENSOR_VIZ)
        subscribe(JointState, "joint_states", "joint_states", self._on_joints, qos.SENSOR_VIZ)
        subscribe(ActionBatch, topics.ACTIONS, "actions", self._on_actions, qos.BATCH)
        subscribe(StepRewardBatch, topics.STEP_REWARDS, "step_rewards", self._on_rewards, qos.BATCH)
        subscribe(String, "instruction", "instructions", self._on_instruction, qos.LATCHED)
        self.create_service(SetBool, "end_episode", self._on_end_episode)
        self.create_service(Trigger, "start_episode", self._on_start_episode)
        self.obs_pub = self.create_publisher(ObservationBatch, topics.OBSERVATIONS, qos.BATCH)
        self.episode_pub = self.create_publisher(EpisodeResult, topics.EPISODE_RESULTS, qos.BATCH)
        self.marker_pub = self.create_publisher(MarkerArray, "markers", qos.COMMAND)
        self.control_timer = self.create_timer(cfg.safety.control_period_s, self.rejections.guard(
            "control_ticks", self._on_control_tick, on_error=self._hold_after_error))
        self.create_timer(1.0 / cfg.graph.viz_rate_hz, self._publish_markers)
        self.get_logger().info(f"franka_bridge '{self.extra['bridge_id']}' up: "
                               f"{'ARMED' if cfg.safety.armed else 'dry run'}, "
                               f"control {cfg.safety.control_rate_hz:g} Hz, chunks of {self.chunk_size}, "
                               f"watchdog {cfg.safety.watchdog_timeout_s:g} s")

    def _gripper_widths(self) -> tuple[float, float]:
        return float(self.extra["gripper_open_width_m"]), float(self.extra["gripper_closed_width_m"])

    def _hold_after_error(self, err: Exception) -> None:
        self.chunk.clear()
        self.safety.publish(self.safety.filter.hold(f"internal error ({type(err).__name__}): holding"))

    def destroy_node(self) -> None:
        """Send a final stop (hold pose, zero twist) before the node goes away."""
        self.safety.final_stop()
        super().destroy_node()

    def _on_parameters(self, cfg: ExperimentConfig, changed: list[str]) -> None:
        self.extra = self.params.extra_values
        self.safety.gripper_widths_m = self._gripper_widths()
        if "instruction" in changed:
            self.instruction = str(self.extra["instruction"])
        if any(c.startswith("safety.") and c != "safety.armed" for c in changed):
            self.safety.set_limits(cfg.safety)
        if "safety.armed" in changed:
            self.safety.set_armed(cfg.safety.armed)

    # ------------------------------------------------------------------ inputs
    def _on_image(self, msg: Image) -> None:
        try:
            camera_pixels(msg)  # checked on arrival: a bad frame never replaces the last good one
        except convert.MessageError as err:
            self.rejections("camera_images", str(err))
            return
        self.image = msg

    def _on_joints(self, msg: JointState) -> None:
        names = list(self.extra["finger_joint_names"])
        index = {name: i for i, name in enumerate(msg.name)}
        if all(n in index and index[n] < len(msg.position) for n in names):
            fingers = np.array([msg.position[index[n]] for n in names], np.float64)
            if not (np.isfinite(fingers).all() and np.abs(fingers).max() <= 1.0):
                self.rejections("joint_states", f"finger positions {fingers.tolist()} (NaN, inf or > 1 m)")
                return
            self.fingers = fingers

    def _on_instruction(self, msg: String) -> None:
        if not msg.data.strip() or len(msg.data) > convert.MAX_INSTRUCTION_CHARS:
            self.rejections("instructions", f"{len(msg.data)} characters: empty or more than "
                                            f"{convert.MAX_INSTRUCTION_CHARS}")
            return
        self.instruction = msg.data

    def _on_rewards(self, msg: StepRewardBatch) -> None:
        if msg.bridge_id == self.extra["bridge_id"] and len(msg.progress):
            if not np.isfinite(msg.progress[0]):
                self.rejections("step_rewards", f"progress {msg.progress[0]}")
                return
            self.progress = float(msg.progress[0])

    def _on_end_episode(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        """Operator verdict (data = success): publish the EpisodeResult, hold until ``start_episode``."""
        ended = self._end_episode(success=bool(request.data), truncated=False)
        response.success, response.message = True, f"episode {ended} ended, success={request.data}"
        return response

    def _on_start_episode(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """The scene is reset: observations (and so motion) resume with step 0 of the next episode."""
        response.success = self.paused
        response.message = (f"episode {self.episode_id} started" if self.paused
                            else f"episode {self.episode_id} is already running")
        self.paused = False
        return response

    def _end_episode(self, success: bool, truncated: bool) -> int:
        """Publish the EpisodeResult with the final observation, then hold the arm; returns its id."""
        try:
            final = self._observation()
        except convert.MessageError:
            final = None
        self.episode_pub.publish(convert.episode_result_to_msg(
            str(self.extra["bridge_id"]), 0, self.episode_id, self._task_id(), 0,
            self.step_index, success, truncated, False, "", self.safety.header(), final_observation=final,
            num_decisions=self.decisions, last_step_seq=self.last_seq, incarnation=self.incarnation))
        self.safety.publish(self.safety.filter.hold(f"episode {self.episode_id} ended: "
                                                    "waiting for start_episode"))
        self.get_logger().info(f"episode {self.episode_id} ended after {self.step_index} steps "
                               f"(success={success}, truncated={truncated}); call start_episode to go on")
        ended = self.episode_id
        self.episode_id += 1
        self.step_index = self.decisions = self.last_seq = 0
        self.chunk.clear()
        self.chunk_running = False
        self.path.clear()
        self.paused = True
        self.pending_seq = None
        return ended

    def _on_actions(self, msg: ActionBatch) -> None:
        if msg.bridge_id != self.extra["bridge_id"]:
            return
        if (self.pending_seq is None or msg.step_seq != self.pending_seq
                or msg.incarnation != self.incarnation):
            self.safety.record([f"ignored stale action step_seq={msg.step_seq} "
                                f"(waiting for {self.pending_seq})"])
            return
        self.pending_seq = None
        self.policy_version = int(msg.policy_version)
        try:
            chunk = convert.actions_from_msg(msg, [0], self.chunk_size).actions[0]
        except convert.MessageError as err:  # a bad chunk stops the arm; the next tick observes again
            self.safety.publish(self.safety.filter.reject_action(str(err)), self.pending_stamp)
            return
        self.decisions += 1
        self.last_seq = int(msg.step_seq)
        self.chunk = deque(chunk)
        self.chunk_running = self.chunk_size > 1
        # Stamped with the observation it answers, so any listener can measure observation-to-command latency.
        self._command_next(time.monotonic(), self.pending_stamp)
        if self.chunk:
            self.control_timer.reset()  # the chunk's next action one full control period after this one

    def _command_next(self, now: float, stamp=None) -> None:
        """Send the chunk's next action through the safety filter; end the episode at its step limit."""
        period = self.params.config.safety.control_period_s
        fresh = 2.0 * period if self.chunk_size > 1 else None  # K = 1: safety.watchdog_timeout_s
        command = self.safety.filter.filter_action(self.chunk.popleft(), now, fresh)
        self.safety.publish(command, stamp)
        self.step_index += 1
        if command.stopped and self.chunk:
            self.safety.record([f"dropped the last {len(self.chunk)} action(s) of the chunk after a stop "
                                f"({command.reason})"])
            self.chunk.clear()
        limit = self.params.config.env.max_episode_steps
        if limit and self.step_index >= limit:
            self._end_episode(success=False, truncated=True)

    # ------------------------------------------------------------------ outputs
    def _observation(self) -> Observation | None:
        """The current observation (None until a camera frame and a pose have arrived)."""
        pose = self.safety.pose
        if self.image is None or pose is None:
            return None
        if not self.path or np.linalg.norm(self.path[-1] - pose.position) > 1e-3:
            self.path.append(pose.position.copy())
        return Observation(image=camera_frame(self.image, self.params.config.env.image_size),
                           instruction=self.instruction or "do the task",
                           proprio=proprio_from_state(pose, self.fingers),
                           task_id=self._task_id(), init_state_id=0, step=self.step_index)

    def _task_id(self) -> int:
        chosen = int(self.extra["task_id"])
        return chosen if chosen >= 0 else int(self.params.config.env.task_ids[0])

    def _on_control_tick(self) -> None:
        now = time.monotonic()
        if self.paused:
            return  # between episodes: the arm holds (watchdog) until start_episode
        if self.chunk:
            self._command_next(now)
            return
        if self.chunk_running:  # the chunk's last action has had its period: hold, then observe
            self.chunk_running = False
            if not self.safety.filter.stopped:
                self.safety.publish(self.safety.filter.hold("chunk executed: holding for the next chunk"))
        timeout = max(self.params.config.safety.watchdog_timeout_s, self.params.config.graph.action_timeout_s)
        if self.pending_seq is not None and now - self.pending_since < timeout:
            return  # lockstep: the next observation waits for the action of this one
        try:
            observation = self._observation()
        except convert.MessageError as err:
            self.rejections("camera_images", str(err))
            return
        if observation is None or self.obs_pub.get_subscription_count() < int(
                self.extra["min_observation_subscribers"]):
            return
        self.step_seq += 1
        header = self.safety.header()
        self.obs_pub.publish(convert.observations_to_msg(
            str(self.extra["bridge_id"]), self.step_seq, [0], [self.episode_id], [observation], header,
            self.incarnation))
        self.pending_seq, self.pending_since, self.pending_stamp = self.step_seq, now, header.stamp

    def _publish_markers(self) -> None:
        cfg = self.params.config.safety
        last = self.safety.last_command
        target = last.target.position if last is not None and last.target is not None else None
        self.marker_pub.publish(markers.bridge_markers(
            self.safety.header(), [p.tolist() for p in self.path], target, self.safety.filter.stopped,
            self.instruction, self.progress, self.safety.status()[1],
            (cfg.workspace_min_m, cfg.workspace_max_m), self.policy_version))


def main(args: list[str] | None = None) -> int:
    """Entry point (``ros2 run vla_rl_ros franka_bridge``); returns the exit code."""
    return run_node(FrankaBridgeNode, args)


if __name__ == "__main__":
    sys.exit(main())
