"""The rule that a running safety layer may only be tightened (core, no ROS)."""
import dataclasses

import pytest

from vla_rl_ros.core.safety import SafetyConfig
from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.safety_lock import (TIGHTER_WHEN_SMALLER, check_gripper_widths, gripper_widths_loosened,
                                         loosened_fields)

BASE = SafetyConfig(armed=False, control_rate_hz=10.0, watchdog_timeout_s=0.3)


def changed(**values) -> SafetyConfig:
    return dataclasses.replace(BASE, **values)


@pytest.mark.parametrize("name", TIGHTER_WHEN_SMALLER)
def test_raising_any_limit_is_loosening_and_lowering_it_is_not(name):
    value = getattr(BASE, name)
    assert loosened_fields(BASE, changed(**{name: value * 1.5})) == \
        [f"safety.{name}: {value:g} -> {value * 1.5:g}"]
    assert loosened_fields(BASE, changed(**{name: value * 0.9})) == []


def test_workspace_may_shrink_but_not_grow_on_any_axis():
    lo, hi = BASE.workspace_min_m, BASE.workspace_max_m
    assert loosened_fields(BASE, changed(workspace_min_m=[lo[0] + 0.1, lo[1], lo[2] + 0.01],
                                         workspace_max_m=[hi[0] - 0.1, hi[1], hi[2]])) == []
    assert loosened_fields(BASE, changed(workspace_max_m=[10.0, 10.0, 10.0])) == \
        [f"safety.workspace_max_m: {hi} -> [10.0, 10.0, 10.0]"]
    # One axis out and one in is still a looser box.
    looser = loosened_fields(BASE, changed(workspace_min_m=[lo[0] + 0.1, lo[1] - 0.01, lo[2]]))
    assert len(looser) == 1 and looser[0].startswith("safety.workspace_min_m")


def test_arming_and_rate_changes_are_loosening_disarming_is_not():
    assert loosened_fields(BASE, changed(armed=True)) == ["safety.armed: arming"]
    assert loosened_fields(changed(armed=True), BASE) == []
    assert loosened_fields(BASE, changed(control_rate_hz=20.0)) == ["safety.control_rate_hz: 10 -> 20"]


def test_the_attack_of_issue_26_is_refused_on_every_count():
    attack = changed(armed=True, workspace_min_m=[-10.0, -10.0, -10.0], workspace_max_m=[10.0, 10.0, 10.0],
                     max_linear_speed_m_s=100.0, watchdog_timeout_s=1e9)
    names = {why.split(":")[0] for why in loosened_fields(BASE, attack)}
    assert names == {"safety.armed", "safety.workspace_min_m", "safety.workspace_max_m",
                     "safety.max_linear_speed_m_s", "safety.watchdog_timeout_s"}


def test_gripper_widths_may_only_narrow_inside_their_start_up_interval():
    start = (0.08, 0.0)  # (open, closed)
    assert gripper_widths_loosened(start, (0.06, 0.01)) == []  # opens less, squeezes less
    assert gripper_widths_loosened(start, (0.2, 0.0)) == ["gripper_open_width_m: 0.08 -> 0.2 (opens wider)"]
    assert gripper_widths_loosened((0.08, 0.01), (0.08, 0.0)) == \
        ["gripper_closed_width_m: 0.01 -> 0 (closes harder)"]
    for widths in ((0.08, -0.01), (0.01, 0.02), (float("nan"), 0.0), (1.0, 0.0)):
        with pytest.raises(ConfigError, match="gripper_open_width_m"):
            check_gripper_widths(*widths)
