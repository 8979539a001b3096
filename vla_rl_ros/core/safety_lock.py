"""The tighten-only rule of a running safety layer: what counts as loosening its limits.

A running layer may disarm, shrink its workspace box, lower its limits and scales, shorten its
timeouts and narrow its gripper widths; anything else (arming above all) needs a restart on the
robot's machine (``nodes/safety_io.py`` says why). ROS-free, so the rule is unit-tested
(test/test_safety_lock.py).
"""
from __future__ import annotations

import math

from vla_rl_ros.core.config_io import check
from vla_rl_ros.core.safety import SafetyConfig

TIGHTER_WHEN_SMALLER = ("action_translation_scale_m", "action_rotation_scale_rad", "max_translation_step_m",
                        "max_rotation_step_rad", "max_linear_speed_m_s", "max_angular_speed_rad_s",
                        "watchdog_timeout_s", "state_timeout_s")
"""Limits a running layer may only lower (a larger scale turns the same action into more motion)."""


def loosened_fields(current: SafetyConfig, proposed: SafetyConfig) -> list[str]:
    """Why ``proposed`` is looser than ``current`` (empty when every limit is the same or tighter).

    Arming and any change of the control rate count as loosening: a running safety layer may
    only disarm, shrink its box, lower its limits and shorten its timeouts.
    """
    why = []
    if proposed.armed and not current.armed:
        why.append("safety.armed: arming")
    if proposed.control_rate_hz != current.control_rate_hz:
        why.append(f"safety.control_rate_hz: {current.control_rate_hz:g} -> {proposed.control_rate_hz:g}")
    for name in TIGHTER_WHEN_SMALLER:
        old, new = getattr(current, name), getattr(proposed, name)
        if new > old:
            why.append(f"safety.{name}: {old:g} -> {new:g}")
    for name, grows in (("workspace_min_m", False), ("workspace_max_m", True)):
        old, new = getattr(current, name), getattr(proposed, name)
        if any((n > o) if grows else (n < o) for o, n in zip(old, new)):
            why.append(f"safety.{name}: {list(old)} -> {list(new)}")
    return why


GRIPPER_WIDTH_LIMIT_M = 0.25
"""No parallel gripper this layer drives opens wider (the Franka hand: 0.08 m)."""


def check_gripper_widths(open_m: float, closed_m: float) -> None:
    """ConfigError unless 0 <= closed <= open <= GRIPPER_WIDTH_LIMIT_M (finite)."""
    finite = math.isfinite(open_m) and math.isfinite(closed_m)
    check(finite and 0.0 <= closed_m <= open_m <= GRIPPER_WIDTH_LIMIT_M,
          "gripper_open_width_m / gripper_closed_width_m", [open_m, closed_m],
          f"must satisfy 0 <= closed <= open <= {GRIPPER_WIDTH_LIMIT_M} m")


def gripper_widths_loosened(current: tuple[float, float], proposed: tuple[float, float]) -> list[str]:
    """Why the (open, closed) widths ``proposed`` are looser than ``current``.

    Tighter keeps the commanded widths inside the start-up interval: the open width may only
    shrink (less travel) and the closed width only grow (a grasp squeezes less).
    """
    (open_now, closed_now), (open_new, closed_new) = current, proposed
    why = []
    if open_new > open_now:
        why.append(f"gripper_open_width_m: {open_now:g} -> {open_new:g} (opens wider)")
    if closed_new < closed_now:
        why.append(f"gripper_closed_width_m: {closed_now:g} -> {closed_new:g} (closes harder)")
    return why
