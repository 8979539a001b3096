"""The rule that a running safety layer may only be tightened (core, no ROS)."""
import dataclasses

import pytest

from vla_rl_ros.core.safety import TIGHTER_WHEN_SMALLER, SafetyConfig, loosened_fields

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
