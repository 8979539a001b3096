"""Task segmentation (gripper events, eef stops) and pseudo progress labels."""
import numpy as np
import pytest

from vla_rl_ros.core.rl.segmentation import (eef_stop_events, gripper_closed_from_actions,
                                             gripper_closed_from_proprio, gripper_events,
                                             progress_labels, segment_boundaries, segment_trajectory,
                                             typical_segment_count)


def pick_and_place(approach=8, rest=4, carry=8):
    """Synthetic eef path: move, rest + close, carry, rest + open. Returns (eef [T+1,3], actions [T,7])."""
    path = [np.zeros(3)]
    grip = []
    for _ in range(approach):
        path.append(path[-1] + [0.01, 0, 0])
        grip.append(-1.0)
    for _ in range(rest):
        path.append(path[-1].copy())
        grip.append(1.0)
    for _ in range(carry):
        path.append(path[-1] + [0, 0.01, 0])
        grip.append(1.0)
    for _ in range(rest):
        path.append(path[-1].copy())
        grip.append(-1.0)
    actions = np.zeros((len(grip), 7), dtype=np.float32)
    actions[:, 6] = grip
    return np.array(path), actions


def test_gripper_events_from_actions_and_proprio():
    _, actions = pick_and_place()
    closed = gripper_closed_from_actions(actions)
    assert gripper_events(closed) == [8, 20]
    proprio = np.zeros((5, 8))
    proprio[:, 6] = [0.04, 0.04, 0.01, 0.01, 0.04]
    proprio[:, 7] = -proprio[:, 6]
    assert gripper_events(gripper_closed_from_proprio(proprio)) == [2, 4]
    assert not gripper_closed_from_proprio(np.zeros((4, 8))).any()
    with pytest.raises(ValueError, match="actions"):
        gripper_closed_from_actions(np.zeros((3, 2)))


def test_eef_stop_events():
    eef, _ = pick_and_place()
    # rest starts after 8 moves (o_8) and after 8 + 4 + 8 = 20 displacements (o_20)
    assert eef_stop_events(eef) == [8, 20]
    # a stop too short to count
    eef_short, _ = pick_and_place(rest=1)
    assert eef_stop_events(eef_short) == []
    with pytest.raises(ValueError, match="eef_pos"):
        eef_stop_events(np.zeros((4, 2)))


def test_segment_boundaries_merge_and_range():
    assert segment_boundaries(30, [8, 9, 20, 0, 29, 30], min_gap=3) == [8, 20, 29]
    eef, actions = pick_and_place()
    closed = gripper_closed_from_actions(actions)
    # gripper events at actions 8, 20 coincide with the stops at o_8, o_20: merged, not doubled
    assert segment_trajectory(len(eef), closed, eef) == [8, 20]


def test_progress_labels_success_rises_to_one():
    labels = progress_labels(7, [3], success=True)
    assert np.allclose(labels, [0, 1 / 6, 2 / 6, 0.5, 4 / 6, 5 / 6, 1.0])
    assert labels[-1] == 1.0
    assert np.all(np.diff(labels) >= 0)


def test_progress_labels_failure_stalls_and_never_finishes():
    labels = progress_labels(7, [3], success=False, num_segments=3)
    assert np.allclose(labels, [0, 1 / 9, 2 / 9, 1 / 3, 1 / 3, 1 / 3, 1 / 3])
    # a failure that shows as many events as the task has segments still misses the last one
    labels = progress_labels(7, [2, 4], success=False, num_segments=2)
    assert labels.max() == pytest.approx(0.5)
    assert progress_labels(5, [], success=False).max() == 0.0
    with pytest.raises(ValueError, match="2 observations"):
        progress_labels(1, [], True)


def test_success_beats_failure_at_the_end():
    success = progress_labels(25, [8, 20], success=True)
    failure = progress_labels(25, [8], success=False, num_segments=3)
    assert success[-1] == 1.0 and failure[-1] < 0.5


def test_typical_segment_count():
    assert typical_segment_count([[8, 20], [5, 9], [4]], [25, 12, 10]) == 3
    assert typical_segment_count([], []) is None
