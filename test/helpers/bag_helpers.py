"""Trajectory bags written in code for the learner and crash-safety tests: the toy set-up, its episodes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rclpy.serialization import serialize_message

from vla_rl_ros.core.config import load_config
from vla_rl_ros.core.envs.base import Observation
from vla_rl_ros.graph import topics
from vla_rl_ros.nodes import convert
from vla_rl_ros.nodes.trajectory_bags import TrajectoryBagWriter, typestore

TINY = {"env.backend": "toy", "env.image_size": 32, "env.task_ids": [0, 1], "env.num_envs": 2,
        "env.max_episode_steps": 3, "policy.size": "tiny", "policy.image_size": 32,
        "ppo.minibatch_size": 4, "ppo.critic_warmup_iters": 0, "train.torch_threads": 1,
        "ppo.advantage_estimator": "critic"}
"""Parameters of the tiny policy on the toy env, as node parameter overrides (the critic estimator:
the bags of these tests are not recorded in groups of one context)."""


def collect_toy_episodes():
    """Three episodes of the tiny policy on the toy env (K = 1), as the core's rollout collects them."""
    from vla_rl_ros.core.rl.rollout import collect_episodes, policy_decoder
    from vla_rl_ros.core.rl.train_loop import build_policy, make_env
    cfg = load_config(None, [f"{k}={v}".replace(" ", "") for k, v in TINY.items()])
    policy, env = build_policy(cfg), make_env(cfg.env)
    try:
        return collect_episodes(env, policy_decoder(policy), [(0, 1), (1, 2), (0, 3)])
    finally:
        env.close()


def write_bag(path: Path, episodes, token=None, log_prob=None, bridge="fuzz", incarnation=7) -> None:
    """The bag the recorder writes for ``episodes`` (core Episodes of K = 1), optionally poisoned."""
    writer = TrajectoryBagWriter(path, typestore())
    seq, stamp = 0, 0
    for number, episode in enumerate(episodes):
        for t in range(episode.length):
            seq, stamp = seq + 1, stamp + 10
            obs = Observation(image=episode.images[t], instruction=episode.instruction,
                              proprio=episode.proprio[t], task_id=episode.task_id, init_state_id=0, step=t)
            writer.write(topics.OBSERVATIONS, serialize_message(convert.observations_to_msg(
                bridge, seq, [0], [number], [obs], incarnation=incarnation)), stamp)
            tokens = episode.tokens[t][None] if token is None else np.full((1, 7), token)
            log_probs = episode.log_probs[t][None] if log_prob is None else np.full((1, 7), log_prob)
            writer.write(topics.ACTIONS, serialize_message(convert.actions_to_msg(
                bridge, seq, [0], 0, tokens, episode.actions[t][None], log_probs,
                np.array([episode.values[t]]), 1.0, incarnation=incarnation)), stamp + 1)
        final = Observation(image=episode.images[-1], instruction=episode.instruction,
                            proprio=episode.proprio[-1], task_id=episode.task_id, init_state_id=0)
        writer.write(topics.EPISODE_RESULTS, serialize_message(convert.episode_result_to_msg(
            bridge, 0, number, episode.task_id, 0, episode.env_steps, episode.success, episode.truncated,
            False, final_observation=final, num_decisions=episode.length, last_step_seq=seq,
            incarnation=incarnation)), stamp + 2)
    writer.close()
