"""The toy VLA-shaped environment: interface, oracle succeeds, random fails, bad input."""
import numpy as np
import pytest

from vla_rl_ros.core.envs.toy import (ToyVectorEnv, toy_goal, toy_instruction, toy_oracle_actions,
                                      toy_task_count)


def run_episodes(env, policy, tasks, seed=0):
    """One episode per env with the given action function; returns success flags."""
    rng = np.random.default_rng(seed)
    obs = env.reset([(t, i) for i, t in enumerate(tasks)])
    success = np.zeros(env.num_envs, dtype=bool)
    finished = np.zeros(env.num_envs, dtype=bool)
    while not finished.all():
        results = env.step(policy(obs, rng))
        obs = [r.observation for r in results]
        for i, r in enumerate(results):
            if r.done and not finished[i]:
                finished[i], success[i] = True, r.success
    return success


def test_observations_are_vla_shaped():
    env = ToyVectorEnv(num_envs=3, image_size=32)
    obs = env.reset([(0, 0), (1, 1), (2, 2)])
    assert len(obs) == 3
    assert obs[0].image.shape == (32, 32, 3) and obs[0].image.dtype == np.uint8
    assert obs[1].instruction == toy_instruction(1) and "green" in obs[1].instruction
    assert obs[2].proprio.shape == (8,) and obs[2].task_id == 2 and obs[2].init_state_id == 2
    assert not np.array_equal(obs[0].image, obs[1].image)  # the target colour/place differs


def test_oracle_succeeds_random_fails():
    env = ToyVectorEnv(num_envs=16, max_episode_steps=20)
    tasks = [i % toy_task_count() for i in range(16)]
    oracle = run_episodes(env, lambda obs, rng: toy_oracle_actions(obs), tasks)
    assert oracle.all()
    rates = [run_episodes(env, lambda obs, rng: rng.uniform(-1, 1, (16, 7)), tasks, seed=s).mean()
             for s in range(4)]
    assert np.mean(rates) < 0.2


def test_episode_ends_and_reports_truncation_and_success():
    env = ToyVectorEnv(num_envs=1, max_episode_steps=3)
    env.reset([(0, 0)])
    results = [env.step(np.zeros((1, 7), dtype=np.float32))[0] for _ in range(3)]
    assert [r.done for r in results] == [False, False, True]
    assert results[-1].truncated and not results[-1].success and results[-1].reward == 0.0
    idle = env.step(np.ones((1, 7), dtype=np.float32))[0]
    assert idle.done and idle.info["inactive"] and idle.reward == 0.0
    assert np.array_equal(idle.observation.proprio, results[-1].observation.proprio)
    env2 = ToyVectorEnv(num_envs=1, max_episode_steps=20)
    obs = env2.reset([(0, 1)])
    while True:
        result = env2.step(toy_oracle_actions(obs))[0]
        obs = [result.observation]
        if result.done:
            break
    assert result.success and not result.truncated and result.reward == 1.0
    assert np.linalg.norm(obs[0].proprio[:2] - toy_goal(0)) <= 0.2
    assert obs[0].proprio[6] == 0.0  # fingers closed


def test_bad_input_is_rejected_clearly():
    env = ToyVectorEnv(num_envs=2)
    with pytest.raises(ValueError, match="valid task ids"):
        env.reset([(99, 0), (0, 0)])
    with pytest.raises(ValueError, match="init state"):
        env.reset([(0, 50), (0, 0)])
    with pytest.raises(ValueError, match="2 envs"):
        env.reset([(0, 0)])
    env.reset([(0, 0), (1, 0)])
    with pytest.raises(ValueError, match=r"\[2, 7\]"):
        env.step(np.zeros((3, 7)))
    nan = np.full((2, 7), np.nan)
    results = env.step(nan)
    assert results[0].info["nonfinite_actions"] == 1
    assert np.all(np.isfinite(results[0].observation.proprio))
