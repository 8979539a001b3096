"""Trajectories for PRM training: recorded demonstration bags, toy-oracle demos, policy rollouts.

Everything becomes an :class:`Episode` whose ``tokens`` are the policy's own action tokens
(demonstration actions are tokenised with the policy's action tokenizer), so the PRM learns
on exactly the token ids it will score during RL.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vla_rl_ros.core.policy.policy import DecodeOutput
from vla_rl_ros.core.rl.rollout import Episode, collect_episodes, policy_decoder


def episode_from_record(record: Any, action_tokenizer: Any, chunk_size: int = 1) -> Episode:
    """Convert a demonstration ``EpisodeRecord`` (T images, T actions) into an Episode of turns.

    A turn starts every ``chunk_size`` steps, as the policy would decide: its observation is the
    frame at that step and its tokens the next ``chunk_size`` actions (the last action repeated
    past the end, as in the imitation labels). Bags store the observation before each action
    only; the final observation is taken to be the last one recorded (the PRM never scores the
    final observation itself).
    """
    actions = np.asarray(record.actions, dtype=np.float32)
    steps = len(actions)
    if steps == 0:
        raise ValueError(f"demonstration task {record.task_id} init {record.init_state_id} has no steps")
    starts = np.arange(0, steps, chunk_size)
    index = np.minimum(starts[:, None] + np.arange(chunk_size)[None, :], steps - 1)
    chunks = actions[index]  # [turns, K, 7]
    tokens = np.asarray(action_tokenizer.encode(chunks.reshape(-1, actions.shape[1])), dtype=np.int64)
    tokens = tokens.reshape(len(starts), -1)
    episode = Episode(task_id=int(record.task_id), init_state_id=int(record.init_state_id),
                      instruction=record.instruction)
    episode.images = [record.images[t] for t in starts] + [record.images[-1]]
    episode.proprio = [np.asarray(record.proprio[t], dtype=np.float32) for t in starts] + [
        np.asarray(record.proprio[-1], dtype=np.float32)]
    episode.tokens = list(tokens)
    episode.actions = list(chunks)
    episode.executed = [int(min(chunk_size, steps - t)) for t in starts]
    episode.log_probs = [np.zeros(tokens.shape[1], np.float32)] * len(starts)
    episode.values = [0.0] * len(starts)
    episode.env_rewards = [0.0] * (len(starts) - 1) + [float(record.success)]
    episode.success = bool(record.success)
    return episode


def load_demo_episodes(directory: str | Path, action_tokenizer: Any,
                       task_ids: Sequence[int] | None = None, chunk_size: int = 1) -> list[Episode]:
    """Every recorded episode (successful and failed) of a ``vla-rl demos`` directory.

    Episodes come in turns of ``chunk_size`` actions (see :func:`episode_from_record`).
    """
    from vla_rl_ros.core.data.episode_bag import read_episode_bag
    from vla_rl_ros.core.data.recording import load_index
    directory = Path(directory)
    entries = [e for e in load_index(directory).get("episodes", []) if e.get("bag")
               and (task_ids is None or e["task_id"] in task_ids)]
    if not entries:
        raise ValueError(f"no recorded episodes in {directory} "
                         f"(looked for bags in {directory / 'index.json'})")
    return [episode_from_record(read_episode_bag(directory / e["bag"]), action_tokenizer, chunk_size)
            for e in entries]


def toy_oracle_episodes(env: Any, action_tokenizer: Any, assignments: Sequence[tuple[int, int]],
                        noise: float = 0.0, seed: int = 0) -> list[Episode]:
    """Toy-env demonstrations: the oracle's actions (optionally noisy), tokenised like the policy's."""
    from vla_rl_ros.core.envs.toy import toy_oracle_actions
    rng = np.random.default_rng(seed)

    def oracle(observations: list) -> Any:
        actions = toy_oracle_actions(observations, env.step_size, env.tolerance, env.goal_radius)
        actions[:, :2] += noise * rng.standard_normal((len(actions), 2))
        tokens = torch.as_tensor(action_tokenizer.encode(np.clip(actions, -1.0, 1.0)), dtype=torch.long)
        return DecodeOutput(tokens=tokens, actions=action_tokenizer.decode(tokens.numpy()),
                            log_probs=torch.zeros(tokens.shape), values=torch.zeros(len(tokens)))

    oracle.wants_observations = True  # type: ignore[attr-defined]
    return collect_episodes(env, oracle, assignments)


def toy_sft_warm_start(policy: Any, env: Any, steps: int, lr: float = 2e-3, noise: float = 0.5,
                       seed: int = 0) -> None:
    """Full SFT on 16 noisy toy-oracle episodes of task 0, then freeze the base (RL trains LoRA).

    The toy experiments' stand-in for an SFT checkpoint: a fresh tiny model's near-uniform
    256-bin heads are too flat for LoRA alone to reshape, and the noise leaves the imitated
    policy short of the oracle, so RL has room to improve.
    """
    demos = toy_oracle_episodes(env, policy.action_tokenizer, [(0, i) for i in range(16)],
                                noise=noise, seed=seed)
    images = np.stack([im for e in demos for im in e.images[:-1]])
    texts = [e.instruction for e in demos for _ in range(e.length)]
    proprio = np.stack([p for e in demos for p in e.proprio[:-1]])
    tokens = torch.as_tensor(np.concatenate([np.stack(e.tokens) for e in demos]))
    optimizer = torch.optim.Adam(policy.sft_parameters(full=True), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(tokens), generator=gen)[:32].numpy()
        loss = policy.sft_loss(images[idx], [texts[i] for i in idx], tokens[idx], proprio=proprio[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.freeze_base()


def policy_rollouts(env: Any, policy: Any, assignments: Sequence[tuple[int, int]],
                    seed: int = 0) -> list[Episode]:
    """Sampled rollouts of ``policy`` (the failures and partial successes the PRM must rank)."""
    return collect_episodes(env, policy_decoder(policy, generator=torch.Generator().manual_seed(seed)),
                            assignments)


def split_held_out(episodes: Sequence[Episode], fraction: float, seed: int = 0
                   ) -> tuple[list[Episode], list[Episode]]:
    """Random (seeded) split into training and held-out trajectories, stratified by outcome."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for flag in (True, False):
        group = [e for e in episodes if e.success == flag]
        order = rng.permutation(len(group))
        cut = int(round(fraction * len(group)))
        held += [group[i] for i in order[:cut]]
        train += [group[i] for i in order[cut:]]
    return train, held
