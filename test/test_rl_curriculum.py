"""Curriculum: favours tasks near the target success, keeps a floor, resumes exactly."""
import numpy as np
import pytest

from vla_rl_ros.core.rl.curriculum import TaskCurriculum


def trained(**kw):
    cur = TaskCurriculum([3, 5, 7], **kw)
    for _ in range(30):
        cur.update(3, True)      # solved
        cur.update(5, False)     # hopeless
    for i in range(30):
        cur.update(7, i % 2 == 0)  # about 50 %
    return cur


def test_prefers_tasks_near_target_and_respects_floor():
    cur = trained(floor=0.05, temperature=0.1)
    probs = cur.probabilities()
    assert probs.sum() == pytest.approx(1.0)
    assert probs[2] > 0.8
    assert probs.min() >= 0.05 - 1e-12
    counts = np.bincount([cur.task_ids.index(t) for t in cur.sample(2000)], minlength=3)
    assert counts[2] > counts[0] and counts[2] > counts[1]
    assert counts.min() > 40  # no starving task


def test_estimates_follow_ema():
    cur = TaskCurriculum([0], ema=0.5, target_success=0.5)
    cur.update(0, True)
    assert cur.success[0] == pytest.approx(0.75)
    cur.update(0, False)
    assert cur.success[0] == pytest.approx(0.375)
    assert cur.metrics()["curriculum/success_0"] == pytest.approx(0.375)
    with pytest.raises(ValueError, match="unknown task"):
        cur.update(9, True)


def test_disabled_is_uniform():
    cur = trained(enabled=False)
    assert np.allclose(cur.probabilities(), 1.0 / 3)


def test_floor_larger_than_uniform_falls_back_to_uniform():
    cur = TaskCurriculum([0, 1, 2, 3], floor=0.5)
    cur.update(0, True)
    assert np.allclose(cur.probabilities(), 0.25)


def test_state_dict_round_trip_samples_identically():
    cur = trained(seed=4)
    cur.sample(5)
    state = cur.state_dict()
    expected = cur.sample(20)
    other = TaskCurriculum([3, 5, 7], seed=99)
    other.load_state_dict(state)
    assert other.sample(20) == expected
    assert np.allclose(other.success, cur.success)
    with pytest.raises(ValueError, match="tasks"):
        TaskCurriculum([1, 2]).load_state_dict(state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="distinct"):
        TaskCurriculum([1, 1])
    with pytest.raises(ValueError, match="temperature"):
        TaskCurriculum([1], temperature=0)
