"""Safety layer between a policy and a real arm: ROS-free, so every rule is unit-tested.

A policy action is LIBERO's OSC_POSE delta (xyz, axis-angle rotation, gripper) in [-1, 1].
:class:`SafetyFilter` turns it into an end-effector pose target and a twist that always respect:

- a workspace box (targets are clipped into it),
- per-step limits on translation and rotation,
- velocity limits (the step must be executable within one control period, and within the
  actual time since the previous command, at the configured maximum speeds),
- a twist that moves a controller holding it until the next command at most one step, however
  late that command comes (:meth:`SafetyFilter.twist_horizon_s` says why and how),
- NaN / inf / wrong-length actions, stale robot state and a latched e-stop: all mean *stop*
  (hold where the arm is, zero twist); a hold follows the arm when it is moved more than one
  step away from it (by hand, a push), so no command ever asks for a jump,
- a watchdog: no fresh action within ``watchdog_timeout_s`` (a chunk's action: less) means stop.

Every clamp and stop is counted under a stable name in :attr:`SafetyFilter.counters` and
reported as an event string, so nodes can log it and publish it in ``/diagnostics``.
Times are seconds from any monotonic clock the caller chooses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vla_rl_ros.core.config_io import check
# EefPose, the rotation helpers and proprio_from_state live in safety_pose (re-exported here).
from vla_rl_ros.core.safety_pose import (EefPose, axis_angle_from_quat, normalize_quat,  # noqa: F401
                                         proprio_from_state, quat_from_axis_angle, quat_multiply,
                                         rotation_angle)

ACTION_DIM = 7
COUNTER_NAMES = (
    "clamp_action_range", "clamp_translation_step", "clamp_rotation_step", "clamp_velocity",
    "clamp_workspace", "stop_invalid_action", "stop_watchdog", "stop_estop", "stop_stale_state",
    "ignored_action_estopped", "hold_reanchored",
)
"""Stable names of the counters (also the diagnostics keys)."""


@dataclass
class SafetyConfig:
    """Limits of the real-arm safety layer; units are metres, radians and seconds (base frame)."""

    armed: bool = False
    """False (default) = dry run: commands go only to the dry-run topics, never to the driver."""
    control_rate_hz: float = 20.0
    """Rate of the watchdog and of stop commands; a step must be executable within one period."""
    action_translation_scale_m: float = 0.05
    """Metres per unit of action[0:3] (LIBERO OSC_POSE: 1.0 -> 5 cm)."""
    action_rotation_scale_rad: float = 0.5
    """Radians per unit of action[3:6] (LIBERO OSC_POSE: 1.0 -> 0.5 rad)."""
    max_translation_step_m: float = 0.02
    """Largest end-effector displacement one command may ask for."""
    max_rotation_step_rad: float = 0.15
    """Largest end-effector rotation one command may ask for."""
    max_linear_speed_m_s: float = 0.25
    """Largest commanded linear speed (twist and step / period)."""
    max_angular_speed_rad_s: float = 1.0
    """Largest commanded angular speed."""
    workspace_min_m: list[float] = field(default_factory=lambda: [0.25, -0.40, 0.02])
    """Lower corner (x, y, z) of the allowed end-effector box in the robot base frame."""
    workspace_max_m: list[float] = field(default_factory=lambda: [0.75, 0.40, 0.60])
    """Upper corner (x, y, z) of the allowed end-effector box in the robot base frame."""
    watchdog_timeout_s: float = 0.5
    """No fresh action for this long -> stop (hold pose, zero twist)."""
    state_timeout_s: float = 0.25
    """End-effector pose older than this is stale -> stop."""

    def __post_init__(self) -> None:
        check(self.control_rate_hz > 0, "safety.control_rate_hz", self.control_rate_hz, "must be > 0")
        for name in ("action_translation_scale_m", "action_rotation_scale_rad", "max_translation_step_m",
                     "max_rotation_step_rad", "max_linear_speed_m_s", "max_angular_speed_rad_s",
                     "watchdog_timeout_s", "state_timeout_s"):
            value = getattr(self, name)
            check(math.isfinite(value) and value > 0, f"safety.{name}", value, "must be finite and > 0")
        for name in ("workspace_min_m", "workspace_max_m"):
            value = getattr(self, name)
            check(len(value) == 3 and all(math.isfinite(v) for v in value), f"safety.{name}", value,
                  "three finite numbers (x, y, z)")
        check(all(lo < hi for lo, hi in zip(self.workspace_min_m, self.workspace_max_m)),
              "safety.workspace_max_m", self.workspace_max_m, f"must exceed workspace_min_m "
              f"{self.workspace_min_m} on every axis")
        check(self.watchdog_timeout_s >= 1.0 / self.control_rate_hz, "safety.watchdog_timeout_s",
              self.watchdog_timeout_s, f"must be >= one control period ({1.0 / self.control_rate_hz:.3g} s)")

    @property
    def control_period_s(self) -> float:
        """Seconds between two watchdog checks."""
        return 1.0 / self.control_rate_hz


@dataclass
class SafeCommand:
    """What the bridge sends to the driver for one action or one watchdog tick."""

    target: EefPose | None
    """Cartesian pose target; None only while no robot pose has ever been received."""
    linear_velocity: np.ndarray
    """float64 [3] m/s twist: the step spread over the twist horizon (zero when stopped)."""
    angular_velocity: np.ndarray
    """float64 [3] rad/s twist: the rotation spread over the twist horizon (zero when stopped)."""
    gripper_closed: bool | None
    """Gripper command; None = leave the gripper as it is (stops never open the hand)."""
    stopped: bool
    """True for a stop (hold where the arm is, zero twist)."""
    reason: str = ""
    """Why it stopped: 'watchdog', 'estop', 'invalid_action: ...', 'stale_state', 'no_action_yet'."""
    events: list[str] = field(default_factory=list)
    """Human-readable clamp or stop events raised while building this command."""


def _clamp_norm(vector: np.ndarray, limit: float) -> tuple[np.ndarray, bool]:
    norm = float(np.linalg.norm(vector))
    if norm <= limit:
        return vector, False
    return vector * (limit / norm), True


class SafetyFilter:
    """Turns policy actions into commands that respect :class:`SafetyConfig`; counts every clamp."""

    def __init__(self, config: SafetyConfig) -> None:
        """Start stopped, with no robot state, no action and the e-stop released."""
        self.config = config
        self.counters: dict[str, int] = {name: 0 for name in COUNTER_NAMES}
        self.estop_latched = False
        self.estop_reason = ""
        self._lo = np.asarray(config.workspace_min_m, np.float64)
        self._hi = np.asarray(config.workspace_max_m, np.float64)
        self._pose: EefPose | None = None
        self._pose_time = -math.inf
        self._last_action_time = -math.inf
        self._fresh_for_s = config.watchdog_timeout_s
        self._last_command_time: float | None = None
        self._hold: EefPose | None = None
        self._gripper_closed: bool | None = None
        self.stopped = True
        self.stop_reason = "no_action_yet"

    # ------------------------------------------------------------------ inputs
    def update_state(self, pose: EefPose, now: float) -> None:
        """Record the measured end-effector pose; a non-finite pose is ignored (it goes stale)."""
        if pose.is_finite():
            self._pose = EefPose(np.asarray(pose.position, np.float64), normalize_quat(pose.quaternion))
            self._pose_time = now

    def latch_estop(self, reason: str = "estop topic") -> None:
        """Latch the e-stop: every later command is a stop until :meth:`reset_estop`."""
        if not self.estop_latched:
            self.counters["stop_estop"] += 1
            self._enter_stop(f"estop: {reason}")
        self.estop_latched = True
        self.estop_reason = reason

    def reset_estop(self) -> bool:
        """Clear a latched e-stop (explicit operator action); the arm stays stopped until a fresh action."""
        was = self.estop_latched
        self.estop_latched = False
        self.estop_reason = ""
        if was:
            self.stop_reason = "estop_reset: waiting for a fresh action"
        self._last_action_time = -math.inf  # require a new action after the reset
        return was

    # ------------------------------------------------------------------ commands
    def filter_action(self, action: np.ndarray, now: float, fresh_for_s: float | None = None) -> SafeCommand:
        """Safe command for a fresh policy action (LIBERO OSC_POSE delta, 7 values in [-1, 1]).

        Fresh for ``fresh_for_s`` (a chunk's action: till after the next is due), <= watchdog_timeout_s.
        """
        refused = self._refuse(now)
        if refused is not None:
            return refused
        action = np.asarray(action, dtype=np.float64).ravel()
        if action.size != ACTION_DIM or not np.isfinite(action).all():
            why = (f"{action.size} values, expected {ACTION_DIM}" if action.size != ACTION_DIM
                   else f"non-finite values {action.tolist()}")
            return self.reject_action(why)
        stale = self._stale_state(now)
        if stale is not None:
            return stale
        events: list[str] = []
        clipped = np.clip(action, -1.0, 1.0)
        if not np.array_equal(clipped, action):
            self.counters["clamp_action_range"] += 1
            events.append(f"clamp_action_range: {np.round(action, 4).tolist()} -> [-1, 1]")
        cfg = self.config
        return self._step(clipped[:3] * cfg.action_translation_scale_m, clipped[3:6] *
                          cfg.action_rotation_scale_rad, bool(clipped[6] > 0.0), now, events, fresh_for_s)

    def filter_target(self, target: EefPose, gripper_closed: bool | None, now: float) -> SafeCommand:
        """Safe command for an absolute pose target from any other source (teleop, another controller)."""
        refused = self._refuse(now)
        if refused is not None:
            return refused
        if not target.is_finite() or float(np.linalg.norm(target.quaternion)) < 1e-9:
            return self.reject_action(f"invalid target {np.asarray(target.position).tolist()} "
                                      f"{np.asarray(target.quaternion).tolist()}")
        stale = self._stale_state(now)
        if stale is not None:
            return stale
        current = self._pose
        relative = quat_multiply(normalize_quat(target.quaternion), current.quaternion * [-1, -1, -1, 1])
        closed = self._gripper_closed if gripper_closed is None else bool(gripper_closed)
        return self._step(np.asarray(target.position, np.float64) - current.position,
                          axis_angle_from_quat(relative), closed, now, [])

    def _refuse(self, now: float) -> SafeCommand | None:
        if self.estop_latched:
            self.counters["ignored_action_estopped"] += 1
            return self._stop_command(f"estop: {self.estop_reason}", ["action ignored: e-stop latched"])
        return None

    def _stale_state(self, now: float) -> SafeCommand | None:
        if self._pose is None or now - self._pose_time > self.config.state_timeout_s:
            self.counters["stop_stale_state"] += 1
            age = now - self._pose_time
            return self._stop_command("stale_state", [f"stop: end-effector pose stale ({age:.3g} s)"],
                                      new=True)
        return None

    def _step(self, delta_pos: np.ndarray, delta_rot: np.ndarray, gripper_closed: bool | None, now: float,
              events: list[str], fresh_for_s: float | None = None) -> SafeCommand:
        """Limit a wanted displacement (metres, rotation vector) from the measured pose; the shared core.

        The command is fresh for ``fresh_for_s`` (None: ``watchdog_timeout_s``, never longer).
        """
        cfg = self.config
        period = cfg.control_period_s
        since_last = period if self._last_command_time is None else max(now - self._last_command_time, 1e-3)
        window = min(period, since_last)
        delta_pos = self._limit("translation", delta_pos, cfg.max_translation_step_m,
                                cfg.max_linear_speed_m_s * window, events)
        delta_rot = self._limit("rotation", delta_rot, cfg.max_rotation_step_rad,
                                cfg.max_angular_speed_rad_s * window, events)
        current = self._pose
        wanted = current.position + delta_pos
        inside = np.clip(wanted, self._lo, self._hi)
        if not np.array_equal(inside, wanted):
            self.counters["clamp_workspace"] += 1
            events.append(f"clamp_workspace: {np.round(wanted, 4).tolist()} -> "
                          f"{np.round(inside, 4).tolist()}")
            # From outside the box, clipping can jump: re-apply the step bound (move towards the box).
            delta_pos, _ = _clamp_norm(inside - current.position,
                                       min(cfg.max_translation_step_m, cfg.max_linear_speed_m_s * window))
        target = EefPose(current.position + delta_pos,
                         normalize_quat(quat_multiply(quat_from_axis_angle(delta_rot), current.quaternion)))
        self._gripper_closed = gripper_closed
        self._last_action_time = now
        self._fresh_for_s = (cfg.watchdog_timeout_s if fresh_for_s is None
                             else min(float(fresh_for_s), cfg.watchdog_timeout_s))
        self._last_command_time = now
        self.stopped = False
        self.stop_reason = ""
        self._hold = None
        horizon = self.twist_horizon_s()
        return SafeCommand(target=target, linear_velocity=delta_pos / horizon,
                           angular_velocity=delta_rot / horizon,
                           gripper_closed=self._gripper_closed, stopped=False, events=events)

    def twist_horizon_s(self) -> float:
        """Seconds the last command's twist may stand: the step is spread over them.

        A Cartesian velocity controller executes a twist until the next one arrives, and the next
        one this filter can vouch for is the watchdog's zero twist: at most ``fresh_for_s`` after
        the command plus one control period (the watchdog checks once a period), plus one more
        period for a late timer or a late delivery (the slack the watchdog tests allow). A policy's
        next action may come sooner, never later. Spread over this horizon, a held twist moves the
        arm along the segment from the measured pose towards the target and never past it: at
        most one step, never out of the box, however late the next command. The pose target still
        carries the whole step; a controller that follows only the twist moves slower than the
        policy asks (period / horizon of each step when actions come every period), which is the
        price of not depending on command timing. Dividing by one period instead (issue 26) let
        such a controller move 27.9 mm between two commands (75 mm when the policy's reply came
        late), with a step limit of 20 mm.
        """
        return self._fresh_for_s + 2.0 * self.config.control_period_s

    def reject_action(self, why: str) -> SafeCommand:
        """Stop because an action was malformed (wrong length, NaN, inf, out of any sane range)."""
        self.counters["stop_invalid_action"] += 1
        return self._stop_command(f"invalid_action: {why}", [f"stop: invalid action ({why})"], new=True)

    def hold(self, reason: str) -> SafeCommand:
        """Stop on purpose (arming, new limits, episode end): hold where the arm is; not counted."""
        return self._stop_command(reason, [], new=True)

    def tick(self, now: float) -> SafeCommand | None:
        """Watchdog check, called every control period: a stop command, or None while actions are fresh."""
        if self.estop_latched:
            return self._stop_command(f"estop: {self.estop_reason}", [])
        if now - self._last_action_time > self._fresh_for_s:
            events = []
            if not self.stopped:
                self.counters["stop_watchdog"] += 1
                events.append(f"stop: watchdog, no fresh action for {now - self._last_action_time:.3g} s")
            reason = self.stop_reason if self.stopped and self.stop_reason else "watchdog"
            return self._stop_command(reason, events)
        if not self.stopped and now - self._pose_time > self.config.state_timeout_s:
            # A moving arm whose pose stream died stops now, not when the action goes stale: the
            # filter no longer knows where the arm is relative to its target.
            return self._stale_state(now)
        if self.stopped:  # an invalid action or stale state stopped us; keep holding until a good action
            return self._stop_command(self.stop_reason, [])
        return None

    # ------------------------------------------------------------------ internals
    def _limit(self, what: str, delta: np.ndarray, step_limit: float, speed_limit: float,
               events: list[str]) -> np.ndarray:
        limit = min(step_limit, speed_limit)
        limited, clamped = _clamp_norm(delta, limit)
        if clamped:
            key = f"clamp_{what}_step" if step_limit <= speed_limit else "clamp_velocity"
            self.counters[key] += 1
            events.append(f"{key}: |{what}| {np.linalg.norm(delta):.4g} -> {limit:.4g}")
        return limited

    def _enter_stop(self, reason: str) -> None:
        # Every stop holds where the arm is now (the latest measured pose), never a pose held
        # before: the arm may have been moved since (issue 26: a 0.49 m jump back after a hand move).
        self._hold = self._pose
        self.stopped = True
        self.stop_reason = reason
        self._last_command_time = None

    def _stop_command(self, reason: str, events: list[str], new: bool = False) -> SafeCommand:
        if new or not self.stopped:
            self._enter_stop(reason)
            self._last_action_time = -math.inf  # a stop needs a fresh good action to end
        events = self._follow_the_arm(list(events))
        zero = np.zeros(3)
        return SafeCommand(target=self._hold, linear_velocity=zero, angular_velocity=zero.copy(),
                           gripper_closed=self._gripper_closed, stopped=True, reason=reason, events=events)

    def _follow_the_arm(self, events: list[str]) -> list[str]:
        """Move the hold to the latest measured pose when the arm is more than one step from it.

        Within one step the hold stays where the stop began, so it resists drift and small pushes
        like any hold (re-targeting the measured pose every period would let a loaded arm creep);
        beyond it the arm was moved on purpose (by hand, in guiding mode, by a collision), and
        pulling it back would be a jump no moving command may make.
        """
        pose, cfg = self._pose, self.config
        if pose is None or self._hold is None:
            self._hold = pose
            return events
        off = float(np.linalg.norm(pose.position - self._hold.position))
        turned = rotation_angle(pose.quaternion, self._hold.quaternion)
        if off > cfg.max_translation_step_m or turned > cfg.max_rotation_step_rad:
            self.counters["hold_reanchored"] += 1
            events.append(f"hold_reanchored: the arm is {off:.3g} m, {turned:.3g} rad from the held pose "
                          "(moved externally): holding where it is")
            self._hold = pose
        return events
