"""Unit tests of the ROS-free safety core: every limit, every stop, the counters and the config."""
import math

import numpy as np
import pytest

from vla_rl_ros.core.config_io import ConfigError, from_dict
from vla_rl_ros.core.safety import (COUNTER_NAMES, EefPose, SafetyConfig, SafetyFilter, axis_angle_from_quat,
                                    proprio_from_state, quat_from_axis_angle, quat_multiply)

IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])
HOME = EefPose(np.array([0.5, 0.0, 0.3]), IDENTITY)


def rotation_angle_between(q1, q2):
    """Angle in radians of the rotation taking q1 to q2."""
    return 2.0 * math.acos(min(1.0, abs(float(np.dot(q1, q2)))))


def make_filter(**overrides):
    safety = SafetyFilter(SafetyConfig(**overrides))
    safety.update_state(HOME, now=0.0)
    return safety


def assert_within_limits(cfg, cmd, start):
    lo, hi = np.array(cfg.workspace_min_m), np.array(cfg.workspace_max_m)
    assert np.isfinite(cmd.target.position).all() and np.isfinite(cmd.target.quaternion).all()
    assert (cmd.target.position >= lo - 1e-12).all() and (cmd.target.position <= hi + 1e-12).all()
    assert np.linalg.norm(cmd.target.position - start.position) <= cfg.max_translation_step_m + 1e-9
    assert rotation_angle_between(cmd.target.quaternion, start.quaternion) <= cfg.max_rotation_step_rad + 1e-6
    assert np.linalg.norm(cmd.linear_velocity) <= cfg.max_linear_speed_m_s + 1e-9
    assert np.linalg.norm(cmd.angular_velocity) <= cfg.max_angular_speed_rad_s + 1e-9


def test_small_action_passes_unchanged_with_libero_scaling():
    safety = make_filter()
    cmd = safety.filter_action([0.1, -0.1, 0.0, 0.0, 0.0, 0.1, 1.0], now=0.01)
    assert not cmd.stopped and cmd.events == []
    np.testing.assert_allclose(cmd.target.position, [0.505, -0.005, 0.3])
    assert rotation_angle_between(cmd.target.quaternion, IDENTITY) == pytest.approx(0.05, abs=1e-6)
    assert cmd.gripper_closed is True
    # The 5 mm step spread over the twist horizon: the watchdog (0.5 s) plus two 50 ms periods.
    np.testing.assert_allclose(cmd.linear_velocity, np.array([0.005, -0.005, 0.0]) / 0.6)


def test_huge_action_is_clamped_to_range_step_and_velocity():
    safety = make_filter()
    cmd = safety.filter_action([1e6, 0, 0, 0, 0, -1e6, -5], now=0.01)
    assert not cmd.stopped and cmd.gripper_closed is False
    assert safety.counters["clamp_action_range"] == 1
    # 0.05 m asked; the step limit is min(0.02 m, 0.25 m/s * 0.05 s) = 0.0125 m -> a velocity clamp.
    assert np.linalg.norm(cmd.target.position - HOME.position) == pytest.approx(0.0125)
    assert safety.counters["clamp_velocity"] >= 1
    assert_within_limits(safety.config, cmd, HOME)


def test_step_limit_wins_when_it_is_tighter_than_velocity():
    safety = make_filter(max_translation_step_m=0.005, max_rotation_step_rad=0.01)
    cmd = safety.filter_action([1, 0, 0, 1, 0, 0, 0], now=0.01)
    assert np.linalg.norm(cmd.target.position - HOME.position) == pytest.approx(0.005)
    assert rotation_angle_between(cmd.target.quaternion, IDENTITY) == pytest.approx(0.01, abs=1e-6)
    assert safety.counters["clamp_translation_step"] == 1 and safety.counters["clamp_rotation_step"] == 1


def test_actions_arriving_faster_than_the_period_get_proportionally_smaller_steps():
    safety = make_filter()
    safety.filter_action([0, 0, 0, 0, 0, 0, 0], now=0.010)
    safety.update_state(HOME, now=0.011)
    cmd = safety.filter_action([1, 0, 0, 0, 0, 0, 0], now=0.020)  # 10 ms later: 0.25 m/s * 10 ms
    assert np.linalg.norm(cmd.target.position - HOME.position) == pytest.approx(0.0025)


def test_workspace_box_clips_the_target():
    safety = SafetyFilter(SafetyConfig())
    corner = EefPose(np.array([0.75, 0.40, 0.02]), IDENTITY)
    safety.update_state(corner, now=0.0)
    cmd = safety.filter_action([1, 1, -1, 0, 0, 0, 0], now=0.01)
    np.testing.assert_allclose(cmd.target.position, corner.position)
    assert safety.counters["clamp_workspace"] == 1


def test_from_outside_the_box_the_arm_moves_towards_it_without_jumping():
    safety = SafetyFilter(SafetyConfig())
    outside = EefPose(np.array([0.9, 0.0, 0.3]), IDENTITY)
    safety.update_state(outside, now=0.0)
    cmd = safety.filter_action([0, 0, 0, 0, 0, 0, 0], now=0.01)
    assert cmd.target.position[0] < 0.9
    assert np.linalg.norm(cmd.target.position - outside.position) <= safety.config.max_translation_step_m


@pytest.mark.parametrize("bad", [[math.nan] * 7, [0, 0, math.inf, 0, 0, 0, 0], [0.1] * 6, [0.1] * 8, []])
def test_invalid_actions_stop_and_hold_the_pose(bad):
    safety = make_filter()
    moved = safety.filter_action([0.5, 0, 0, 0, 0, 0, 1], now=0.01)
    safety.update_state(moved.target, now=0.02)
    cmd = safety.filter_action(bad, now=0.03)
    assert cmd.stopped and cmd.reason.startswith("invalid_action")
    np.testing.assert_allclose(cmd.target.position, moved.target.position)
    assert not cmd.linear_velocity.any() and not cmd.angular_velocity.any()
    assert cmd.gripper_closed is True  # a stop never opens the hand
    assert safety.counters["stop_invalid_action"] == 1
    assert safety.tick(0.04).stopped  # stays stopped until a good action


def test_adversarial_random_actions_never_leave_limits():
    rng = np.random.default_rng(0)
    safety = make_filter()
    pose, now = HOME, 0.0
    for _ in range(2000):
        now += rng.uniform(0.001, 0.2)
        safety.update_state(pose, now)
        kind = rng.integers(4)
        action = {0: rng.uniform(-1, 1, 7), 1: rng.normal(0, 1e4, 7),
                  2: np.where(rng.random(7) < 0.3, np.nan, 1.0), 3: rng.uniform(-3, 3, 7)}[int(kind)]
        cmd = safety.filter_action(action, now)
        if not cmd.stopped:
            assert_within_limits(safety.config, cmd, pose)
            pose = cmd.target  # the arm reaches its target
        else:
            assert cmd.target is pose or np.allclose(cmd.target.position, pose.position)
    assert safety.counters["stop_invalid_action"] > 0 and safety.counters["clamp_workspace"] > 0


def test_watchdog_stops_after_timeout_and_counts_once():
    safety = make_filter(watchdog_timeout_s=0.2)
    assert safety.tick(0.0).reason == "no_action_yet"
    safety.filter_action([1, 0, 0, 0, 0, 0, 0], now=0.05)
    assert safety.tick(0.10) is None and safety.tick(0.25) is None
    cmd = safety.tick(0.30)
    assert cmd.stopped and cmd.reason == "watchdog" and cmd.events
    np.testing.assert_allclose(cmd.target.position, HOME.position)  # holds the measured pose
    assert not cmd.linear_velocity.any()
    safety.tick(0.35)
    assert safety.counters["stop_watchdog"] == 1
    assert not safety.filter_action([0] * 7, now=0.21).stopped  # a fresh action resumes
    safety.update_state(HOME, now=0.4)
    assert safety.filter_action([0] * 7, now=0.9).reason == "stale_state"  # pose from t=0.4 is too old


def test_an_action_of_a_chunk_is_fresh_for_what_the_caller_says_never_longer_than_the_watchdog():
    period = 0.05
    safety = make_filter(watchdog_timeout_s=0.5, control_rate_hz=1 / period)
    for k in range(4):  # a chunk of 4, one action per period, each fresh for two periods
        safety.update_state(HOME, now=k * period)
        command = safety.filter_action([0.2, 0, 0, 0, 0, 0, 0], now=k * period, fresh_for_s=2 * period)
        assert not command.stopped
        assert safety.tick(k * period + 0.5 * period) is None
    last = 3 * period
    assert safety.tick(last + 2 * period - 1e-6) is None
    cmd = safety.tick(last + 2 * period + 1e-6)  # at most one watchdog period later: <= 3 periods
    assert cmd.stopped and cmd.reason == "watchdog" and safety.counters["stop_watchdog"] == 1
    # A longer freshness cannot loosen the watchdog, and a plain action gets the full timeout again.
    safety.update_state(HOME, now=1.0)
    safety.filter_action([0.2, 0, 0, 0, 0, 0, 0], now=1.0, fresh_for_s=60.0)
    safety.update_state(HOME, now=1.4)  # the pose keeps streaming: only the action goes stale
    assert safety.tick(1.49) is None and safety.tick(1.51).stopped
    safety.update_state(HOME, now=2.0)
    safety.filter_action([0.2, 0, 0, 0, 0, 0, 0], now=2.0)
    safety.update_state(HOME, now=2.4)
    assert safety.tick(2.49) is None and safety.tick(2.51).stopped


def test_stale_state_stops():
    safety = make_filter(state_timeout_s=0.1)
    cmd = safety.filter_action([0.1] * 7, now=0.5)
    assert cmd.stopped and cmd.reason == "stale_state"
    assert safety.counters["stop_stale_state"] == 1
    assert SafetyFilter(SafetyConfig()).filter_action([0] * 7, now=0.0).target is None  # never had a pose


def test_estop_latches_until_explicit_reset():
    safety = make_filter()
    safety.filter_action([0.2, 0, 0, 0, 0, 0, 0], now=0.01)
    safety.latch_estop("operator")
    for t in (0.02, 0.03):
        cmd = safety.filter_action([0.5] * 7, now=t)
        assert cmd.stopped and cmd.reason.startswith("estop")
        assert safety.tick(t).stopped
    assert safety.counters["stop_estop"] == 1 and safety.counters["ignored_action_estopped"] == 2
    assert safety.reset_estop() is True
    assert safety.tick(0.04).stopped  # still stopped until a fresh action
    safety.update_state(HOME, now=0.05)
    assert not safety.filter_action([0.1] * 7, now=0.06).stopped
    assert safety.reset_estop() is False


def test_counters_have_stable_names():
    assert set(SafetyFilter(SafetyConfig()).counters) == set(COUNTER_NAMES)


def test_rotation_helpers_round_trip():
    rotvec = np.array([0.3, -0.2, 0.1])
    np.testing.assert_allclose(axis_angle_from_quat(quat_from_axis_angle(rotvec)), rotvec, atol=1e-12)
    double = quat_multiply(quat_from_axis_angle(rotvec), quat_from_axis_angle(rotvec))
    np.testing.assert_allclose(axis_angle_from_quat(double), 2 * rotvec, atol=1e-12)
    np.testing.assert_allclose(axis_angle_from_quat(-quat_from_axis_angle(rotvec)), rotvec, atol=1e-12)
    pose = EefPose(np.array([1.0, 2.0, 3.0]), quat_from_axis_angle(rotvec))
    proprio = proprio_from_state(pose, [0.04, 0.04])
    assert proprio.dtype == np.float32 and proprio.shape == (8,)
    np.testing.assert_allclose(proprio[3:6], rotvec, atol=1e-6)
    # LIBERO's sign convention: the opening (finger 0 - finger 1) is 8 cm for a fully open Franka hand.
    assert proprio[6] - proprio[7] == pytest.approx(0.08)


def test_default_is_dry_run_and_config_errors_name_field_and_value():
    assert SafetyConfig().armed is False
    with pytest.raises(ConfigError, match=r"safety.max_translation_step_m=-0.1"):
        SafetyConfig(max_translation_step_m=-0.1)
    with pytest.raises(ConfigError, match=r"safety.workspace_max_m"):
        SafetyConfig(workspace_min_m=[0, 0, 0], workspace_max_m=[1, -1, 1])
    with pytest.raises(ConfigError, match=r"safety.workspace_min_m"):
        SafetyConfig(workspace_min_m=[0, 0])
    with pytest.raises(ConfigError, match=r"safety.watchdog_timeout_s"):
        SafetyConfig(control_rate_hz=10, watchdog_timeout_s=0.05)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(SafetyConfig, {"armd": True})
    assert from_dict(SafetyConfig, {"armed": "true", "workspace_min_m": [0, 0, 0]}).armed is True


def test_absolute_targets_from_other_sources_get_the_same_limits():
    safety = make_filter()
    far = EefPose(np.array([2.0, 0.0, 0.3]), quat_from_axis_angle([0.0, 0.0, 1.0]))
    cmd = safety.filter_target(far, gripper_closed=None, now=0.01)
    assert not cmd.stopped and cmd.gripper_closed is None
    assert_within_limits(safety.config, cmd, HOME)
    assert cmd.target.position[0] > HOME.position[0]  # towards the target, one bounded step
    near = EefPose(np.array([0.505, 0.0, 0.3]), quat_from_axis_angle([0.0, 0.0, 0.02]))
    safety.update_state(HOME, now=0.1)
    cmd = safety.filter_target(near, gripper_closed=True, now=0.11)
    np.testing.assert_allclose(cmd.target.position, near.position, atol=1e-12)
    assert rotation_angle_between(cmd.target.quaternion, near.quaternion) < 1e-6 and cmd.gripper_closed
    bad = safety.filter_target(EefPose(np.array([0.5, 0, math.nan]), IDENTITY), None, now=0.12)
    assert bad.stopped and safety.counters["stop_invalid_action"] == 1
    zero_quat = safety.filter_target(EefPose(np.array([0.5, 0, 0.3]), np.zeros(4)), None, now=0.13)
    assert zero_quat.stopped and safety.counters["stop_invalid_action"] == 2
