"""Unit tests of the safety core's motion bounds (issue 26): what a controller that holds the last
twist does before the next command, and where every stop holds after the arm was moved."""
import numpy as np
import pytest

from vla_rl_ros.core.safety import EefPose, SafetyConfig, SafetyFilter, quat_from_axis_angle, rotation_angle

HOME = EefPose(np.array([0.5, 0.0, 0.3]), np.array([0.0, 0.0, 0.0, 1.0]))


def moved(pose: EefPose, offset, turn_z: float = 0.0) -> EefPose:
    return EefPose(pose.position + np.asarray(offset, np.float64),
                   quat_from_axis_angle([0.0, 0.0, turn_z]) if turn_z else pose.quaternion.copy())


@pytest.mark.parametrize("rate_hz, watchdog_s, fresh_for_s", [
    (20.0, 0.5, None),        # the defaults: one action at a time, fresh for the watchdog's timeout
    (10.0, 0.3, 0.2),         # an action of a chunk: fresh for two periods
    (50.0, 0.02, None),       # the tightest watchdog the config allows (one period)
])
def test_a_held_twist_moves_the_arm_at_most_its_step_however_late_the_next_command(rate_hz, watchdog_s,
                                                                                   fresh_for_s):
    safety = SafetyFilter(SafetyConfig(control_rate_hz=rate_hz, watchdog_timeout_s=watchdog_s))
    period = 1.0 / rate_hz
    safety.update_state(HOME, now=0.0)
    sent_at = 0.013  # arbitrary phase against the watchdog's ticks
    cmd = safety.filter_action([1.0, -1.0, 1.0, 0.0, 0.0, 1.0, 0.0], now=sent_at, fresh_for_s=fresh_for_s)
    step = cmd.target.position - HOME.position
    turn = rotation_angle(cmd.target.quaternion, HOME.quaternion)
    assert np.linalg.norm(step) > 0.5 * min(safety.config.max_translation_step_m,
                                            safety.config.max_linear_speed_m_s * period)
    # The twist points at the target and, held for the horizon, arrives there and no further.
    np.testing.assert_allclose(cmd.linear_velocity * safety.twist_horizon_s(), step, atol=1e-12)
    assert np.linalg.norm(cmd.angular_velocity) * safety.twist_horizon_s() == pytest.approx(turn, abs=1e-9)
    # No command comes; the watchdog ticks once a period (the pose keeps streaming).
    tick, stop = 0.0, None
    while stop is None:
        tick += period
        safety.update_state(HOME, now=tick)
        stop = safety.tick(tick)
    assert stop.stopped and stop.reason == "watchdog" and not stop.linear_velocity.any()
    held_s = tick + period - sent_at  # the zero twist a whole period late on top
    assert held_s <= safety.twist_horizon_s() + 1e-9
    assert np.linalg.norm(cmd.linear_velocity) * held_s <= np.linalg.norm(step) + 1e-12
    assert np.linalg.norm(cmd.linear_velocity) * held_s <= safety.config.max_translation_step_m + 1e-12
    assert np.linalg.norm(cmd.angular_velocity) * held_s <= safety.config.max_rotation_step_rad + 1e-12


def test_twists_stay_under_the_speed_limits():
    safety = SafetyFilter(SafetyConfig(watchdog_timeout_s=0.05))  # the shortest horizon at 20 Hz
    safety.update_state(HOME, now=0.0)
    cmd = safety.filter_action([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0], now=0.05)
    assert np.linalg.norm(cmd.linear_velocity) <= safety.config.max_linear_speed_m_s + 1e-12
    assert np.linalg.norm(cmd.angular_velocity) <= safety.config.max_angular_speed_rad_s + 1e-12


def test_a_moving_arm_whose_pose_stream_stops_is_stopped_at_the_next_tick():
    safety = SafetyFilter(SafetyConfig(state_timeout_s=0.25, watchdog_timeout_s=0.5))
    safety.update_state(HOME, now=0.0)
    assert not safety.filter_action([0.5, 0, 0, 0, 0, 0, 0], now=0.01).stopped
    assert safety.tick(0.2) is None  # pose 0.2 s old: still fresh
    stop = safety.tick(0.3)  # 0.3 s old, while the action is fresh until 0.51
    assert stop.stopped and stop.reason == "stale_state" and not stop.linear_velocity.any()
    assert safety.counters["stop_stale_state"] == 1 and safety.counters["stop_watchdog"] == 0
    np.testing.assert_allclose(stop.target.position, HOME.position)


def test_every_stop_holds_where_the_arm_is_and_follows_it_when_moved_away():
    cfg = SafetyConfig()
    safety = SafetyFilter(cfg)
    safety.update_state(HOME, now=0.0)
    cmd = safety.filter_action([1.0, 0, 0, 0, 0, 0, 1.0], now=0.01)
    arm = cmd.target
    safety.update_state(arm, now=0.05)
    stop = safety.tick(0.6)  # watchdog: holds the latest measured pose
    assert stop.reason == "watchdog"
    np.testing.assert_allclose(stop.target.position, arm.position)

    pushed = moved(arm, [0.005, 0.0, 0.0])  # a small push: the hold resists it (no creep)
    safety.update_state(pushed, now=0.65)
    np.testing.assert_allclose(safety.tick(0.65).target.position, arm.position)
    assert safety.counters["hold_reanchored"] == 0

    guided = moved(arm, [-0.2, 0.35, 0.25], turn_z=0.5)  # moved by hand, 0.47 m and 0.5 rad away
    safety.update_state(guided, now=0.7)
    follow = safety.tick(0.7)
    np.testing.assert_allclose(follow.target.position, guided.position)
    assert rotation_angle(follow.target.quaternion, guided.quaternion) < 1e-9
    assert safety.counters["hold_reanchored"] == 1 and follow.events[0].startswith("hold_reanchored")
    turned = moved(guided, [0.0, 0.0, 0.0], turn_z=0.5 + 2 * cfg.max_rotation_step_rad)  # turned only
    safety.update_state(turned, now=0.75)
    assert rotation_angle(safety.tick(0.75).target.quaternion, turned.quaternion) < 1e-9
    assert safety.counters["hold_reanchored"] == 2

    # A new stop while already stopped (episode end, e-stop) holds the latest pose, not the old hold.
    nudged = moved(turned, [0.0, 0.004, 0.0], turn_z=0.5 + 2 * cfg.max_rotation_step_rad)
    safety.update_state(nudged, now=0.8)
    np.testing.assert_allclose(safety.hold("episode ended").target.position, nudged.position)
    far = moved(HOME, [0.1, -0.3, -0.2])
    safety.update_state(far, now=0.85)
    safety.latch_estop("operator")
    np.testing.assert_allclose(safety.tick(0.85).target.position, far.position)
    safety.reset_estop()
    safety.update_state(far, now=0.9)
    resumed = safety.filter_action([1.0, 0, 0, 0, 0, 0, 0], now=0.9)  # moving again: from where it is
    assert np.linalg.norm(resumed.target.position - far.position) <= cfg.max_translation_step_m + 1e-12
