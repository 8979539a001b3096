"""From finished episodes to PPO training data: rewards, time-major GAE, flat transitions.

Episodes of different lengths are padded into time-major ``[T, E]`` tensors (E = episodes)
with a validity mask; GAE runs on those, then the valid steps are flattened into the
``[M, ...]`` transitions that minibatches draw from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from vla_rl_ros.core.rl.ppo_math import generalized_advantage_estimate
from vla_rl_ros.core.rl.rollout import EmptyRolloutError, Episode, step_inputs


def episode_rewards(episode: Episode, success_weight: float, prm_weight: float) -> np.ndarray:
    """Per-step reward ``[T]``: weighted sparse success plus weighted PRM progress increments.

    The dense part ``prm_weight * (progress[t+1] - progress[t])`` is a potential-based shaping
    term: it sums to the progress gained over the episode, so it cannot be farmed by dithering.
    """
    rewards = success_weight * np.asarray(episode.env_rewards, dtype=np.float64)
    if prm_weight > 0 and episode.progress is not None:
        progress = np.asarray(episode.progress, dtype=np.float64)
        if progress.shape != (episode.length + 1,):
            raise ValueError(f"PRM progress must have T+1={episode.length + 1} entries, got {progress.shape}")
        rewards = rewards + prm_weight * np.diff(progress)
    return rewards


@dataclass
class RolloutBatch:
    """Time-major ``[T, E]`` tensors plus the flattened valid transitions ``[M, ...]``."""

    rewards: torch.Tensor
    values: torch.Tensor
    next_values: torch.Tensor
    done: torch.Tensor
    terminated: torch.Tensor
    mask: torch.Tensor
    advantages_tm: torch.Tensor
    images: np.ndarray
    instructions: list[str]
    proprio: np.ndarray
    """Proprio ``[M, D]`` of each step's observation (what a state-reading policy's prompt needs)."""
    tokens: torch.Tensor
    log_probs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    @property
    def size(self) -> int:
        """Number of valid transitions M."""
        return int(self.tokens.shape[0])


def build_batch(episodes: Sequence[Episode], rewards: Sequence[np.ndarray], gamma: float,
                gae_lambda: float) -> RolloutBatch:
    """Pad episodes time-major, run GAE, flatten valid steps (column by column, in time order)."""
    episodes = [e for e in episodes if e.length > 0]
    if not episodes:
        raise EmptyRolloutError("no episode with at least one step to learn from")
    horizon, count = max(e.length for e in episodes), len(episodes)
    shape = (horizon, count)
    reward_tm, values_tm, next_tm = torch.zeros(shape), torch.zeros(shape), torch.zeros(shape)
    done_tm, term_tm = torch.ones(shape), torch.ones(shape)
    mask = torch.zeros(shape, dtype=torch.bool)
    for column, (episode, reward) in enumerate(zip(episodes, rewards)):
        steps = episode.length
        values = torch.tensor(episode.values, dtype=torch.float32)
        reward_tm[:steps, column] = torch.as_tensor(np.asarray(reward), dtype=torch.float32)
        values_tm[:steps, column] = values
        next_tm[:steps - 1, column] = values[1:]
        next_tm[steps - 1, column] = float(episode.final_value) if episode.truncated else 0.0
        done_tm[:steps - 1, column] = 0.0
        term_tm[:steps, column] = 0.0
        term_tm[steps - 1, column] = 0.0 if episode.truncated else 1.0
        mask[:steps, column] = True
    advantages_tm, returns_tm = generalized_advantage_estimate(
        gamma, gae_lambda, values_tm, next_tm, reward_tm, done_tm, term_tm)
    columns = mask.t()  # episode-major flattening keeps each episode's steps together
    images, instructions, proprio, tokens = step_inputs(episodes)
    log_probs = torch.as_tensor(np.concatenate([np.stack(e.log_probs) for e in episodes]),
                                dtype=torch.float32)
    return RolloutBatch(rewards=reward_tm, values=values_tm, next_values=next_tm, done=done_tm,
                        terminated=term_tm, mask=mask, advantages_tm=advantages_tm, images=images,
                        instructions=instructions, proprio=proprio, tokens=tokens, log_probs=log_probs,
                        old_values=values_tm.t()[columns], advantages=advantages_tm.t()[columns],
                        returns=returns_tm.t()[columns])
