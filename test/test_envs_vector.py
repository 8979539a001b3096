"""Vectorised LIBERO workers: batched steps, crash and hang recovery, bad input."""
import os
import signal

import numpy as np
import pytest

from vla_rl_ros.core.envs import TaskError, make_vector_env
from vla_rl_ros.core.envs.config import EnvConfig
from vla_rl_ros.core.envs.vector import perturb_expert_action


@pytest.fixture(scope="module")
def vector_env():
    cfg = EnvConfig(suite="libero_object", task_ids=[0], num_envs=2, image_size=32, render=False,
                    step_timeout_s=20.0)
    envs = make_vector_env(cfg)
    yield envs
    envs.close()


def test_batched_reset_and_step(vector_env):
    observations = vector_env.reset([(0, 0), (0, 1)])
    assert [o.init_state_id for o in observations] == [0, 1]
    assert all(o.instruction == observations[0].instruction for o in observations)
    actions = np.zeros((2, 7), dtype=np.float32)
    actions[1] = np.nan
    results = vector_env.step(actions)
    assert [r.done for r in results] == [False, False]
    assert results[1].info["nonfinite_actions"] == 1 and results[0].info["nonfinite_actions"] == 0
    results = vector_env.step_expert()
    assert results[0].info["action"].shape == (7,) and np.all(np.abs(results[0].info["action"]) <= 1)
    with pytest.raises(ValueError, match=r"actions shape \(3, 7\)"):
        vector_env.step(np.zeros((3, 7)))


def test_killed_worker_aborts_its_episode_and_is_restarted(vector_env):
    vector_env.reset([(0, 2), (0, 3)])
    victim = vector_env.worker_pids[1]
    os.kill(victim, signal.SIGKILL)
    results = vector_env.step(np.zeros((2, 7)))
    assert not results[0].done and not results[0].aborted
    assert results[1].done and results[1].aborted and not results[1].success
    assert "died" in results[1].info["reason"]
    assert vector_env.restarts[1] >= 1 and vector_env.worker_pids[1] != victim
    # The aborted slot idles until reset; the healthy one keeps stepping.
    results = vector_env.step(np.zeros((2, 7)))
    assert not results[0].done and results[1].info.get("inactive")
    observation = vector_env.reset([(0, 4)], env_ids=[1])[0]
    assert observation.init_state_id == 4
    assert not any(r.done for r in vector_env.step(np.zeros((2, 7))))


def test_hung_worker_times_out_and_is_restarted(vector_env):
    vector_env.reset([(0, 5), (0, 6)])
    victim = vector_env.worker_pids[0]
    restarts = vector_env.restarts[0]
    vector_env.cfg.step_timeout_s = 3.0
    os.kill(victim, signal.SIGSTOP)  # alive but never answers
    try:
        results = vector_env.step(np.zeros((2, 7)))
    finally:
        vector_env.cfg.step_timeout_s = 20.0
    assert results[0].aborted and "hung" in results[0].info["reason"]
    assert not results[1].done
    assert vector_env.restarts[0] == restarts + 1


def test_bad_task_or_init_state_raises_in_the_caller(vector_env):
    with pytest.raises(TaskError, match="init state 77 does not exist"):
        vector_env.reset([(0, 0), (0, 77)])
    with pytest.raises(TaskError, match="task 40 does not exist"):
        vector_env.reset([(40, 0)], env_ids=[0])
    with pytest.raises(ValueError, match="2 assignments for 1 environments"):
        vector_env.reset([(0, 0), (0, 1)], env_ids=[0])


def test_expert_noise_perturbs_the_arm_only_and_is_reproducible():
    action = np.array([0.95, -0.2, 0.0, 0.1, 0.0, -0.1, 1.0], dtype=np.float32)
    original = action.copy()
    assert perturb_expert_action(action, 0.0, np.random.default_rng(0)) is action
    noisy = perturb_expert_action(action, 0.3, np.random.default_rng(0))
    again = perturb_expert_action(action, 0.3, np.random.default_rng(0))
    assert np.array_equal(noisy, again) and noisy[-1] == 1.0  # the gripper command is never noised
    assert not np.allclose(noisy[:-1], action[:-1]) and np.all(np.abs(noisy) <= 1.0)
    assert np.array_equal(action, original)  # the caller's array is not modified


def test_noisy_expert_steps_keep_clean_labels(vector_env):
    vector_env.reset([(0, 0), (0, 0)])
    clean, noisy = vector_env.step_expert(0.0), vector_env.step_expert(0.5)
    assert np.array_equal(clean[0].info["action"], clean[0].info["executed_action"])
    for result in noisy:
        label, executed = result.info["action"], result.info["executed_action"]
        assert not np.allclose(label[:6], executed[:6]) and label[6] == executed[6]
