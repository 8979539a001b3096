"""Rollout collection: N environments, one batched decode per control step, whole episodes.

Each environment runs episodes back to back from a queue of ``(task_id, init_state_id)``
assignments (an environment prefers the next assignment of the task it already has loaded,
because a LIBERO scene rebuild costs seconds). Only running environments are decoded; once
the queue is empty, finished environments idle (they get a zero action, and the vector API
answers ``done=True, info['inactive']`` without touching the simulator).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vla_rl_ros.core.envs.base import ACTION_DIM, Observation, VectorEnvLike


class EmptyRolloutError(RuntimeError):
    """A rollout produced no usable episode (nothing to learn from)."""


@dataclass
class Episode:
    """One finished trajectory; per-step arrays have T rows, observation arrays T+1."""

    task_id: int
    init_state_id: int
    instruction: str
    images: list[np.ndarray] = field(default_factory=list)
    """Observations ``o_0..o_T`` (uint8 [H, W, 3]); ``o_T`` is the final one."""
    proprio: list[np.ndarray] = field(default_factory=list)
    """Proprio of ``o_0..o_T``."""
    tokens: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    log_probs: list[np.ndarray] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    env_rewards: list[float] = field(default_factory=list)
    success: bool = False
    truncated: bool = False
    aborted: bool = False
    final_value: float = 0.0
    """Critic value of ``o_T``: the bootstrap of a time-limit truncation (0 otherwise)."""
    progress: np.ndarray | None = None
    """PRM progress of ``o_0..o_T`` when a PRM scored the episode."""

    @property
    def length(self) -> int:
        """Number of actions taken (T)."""
        return len(self.tokens)


def step_inputs(episodes: Sequence[Episode]) -> tuple[np.ndarray, list[str], np.ndarray, torch.Tensor]:
    """What the policy saw and chose at every action step, episode-major (each episode's steps together).

    ``(images [N,H,W,3], instructions [N], proprio [N,P] float32, tokens [N,7] long)`` for the
    observations ``o_0..o_{T-1}`` and actions ``a_0..a_{T-1}`` of each episode; episodes without a
    step add nothing.
    """
    episodes = [e for e in episodes if e.length > 0]
    if not episodes:
        raise ValueError("no episode has a step")
    images = np.stack([image for e in episodes for image in e.images[:e.length]])
    instructions = [e.instruction for e in episodes for _ in range(e.length)]
    proprio = np.stack([row for e in episodes for row in e.proprio[:e.length]]).astype(np.float32)
    tokens = torch.as_tensor(np.concatenate([np.stack(e.tokens) for e in episodes]), dtype=torch.long)
    return images, instructions, proprio, tokens


DecodeFn = Callable[..., Any]
"""``(images [B,H,W,3], instructions) -> object with .tokens, .actions, .log_probs, .values``;
a callable with ``wants_observations = True`` is called with the list of Observations instead."""


def policy_decoder(policy: Any, greedy: bool = False, generator: torch.Generator | None = None) -> DecodeFn:
    """Build the rollout decode of a ``VLAPolicy``.

    One batched decode of the running environments' observations, with their proprio (which a
    state-reading policy's prompt needs).
    """
    def decode(observations: list[Observation]) -> Any:
        return policy.decode(np.stack([o.image for o in observations]), [o.instruction for o in observations],
                             greedy=greedy, generator=generator,
                             proprio=np.stack([o.proprio for o in observations]))
    decode.wants_observations = True  # type: ignore[attr-defined]
    return decode


def _next_assignment(pending: list[tuple[int, int]], current_task: int | None) -> tuple[int, int]:
    for index, (task, _) in enumerate(pending):
        if task == current_task:
            return pending.pop(index)
    return pending.pop(0)


def collect_episodes(env: VectorEnvLike, decode: DecodeFn, assignments: Sequence[tuple[int, int]],
                     max_steps: int = 10_000) -> list[Episode]:
    """Run one episode per assignment (in any order) and return them finished.

    ``decode`` is called once per control step on the observations of the environments that
    run an episode (batched decoding); idle environments get a zero action, which the
    vector API answers with ``done=True, info['inactive']``. ``max_steps`` guards against
    an environment that never ends an episode.
    """
    pending = [(int(t), int(i)) for t, i in assignments]
    if not pending:
        return []
    count = env.num_envs
    slots: list[Episode | None] = [None] * count
    first = [pending.pop(0) for _ in range(min(count, len(pending)))]
    observations: list[Observation | None] = [None] * count
    for i, (assignment, obs) in enumerate(zip(first, env.reset(first, list(range(len(first)))))):
        observations[i] = obs
        slots[i] = _start(assignment, obs)
    finished: list[Episode] = []
    for _ in range(max_steps):
        active = [i for i in range(count) if slots[i] is not None]
        if not active:
            return finished
        batch = [observations[i] for i in active]
        if getattr(decode, "wants_observations", False):  # experts and state-reading policies need proprio
            out = decode(batch)
        else:
            out = decode(np.stack([o.image for o in batch]), [o.instruction for o in batch])
        tokens, log_probs = _numpy(out.tokens), _numpy(out.log_probs)
        values = _numpy(out.values).reshape(-1)
        actions = np.zeros((count, ACTION_DIM), dtype=np.float32)
        actions[active] = np.asarray(out.actions, dtype=np.float32)
        results = env.step(actions)
        resets: list[tuple[int, tuple[int, int]]] = []
        for row, i in enumerate(active):
            result, episode = results[i], slots[i]
            observations[i] = result.observation
            _record(episode, result, tokens[row], actions[i], log_probs[row], values[row])
            if result.done:
                finished.append(episode)
                slots[i] = None
                if pending:
                    resets.append((i, _next_assignment(pending, result.observation.task_id)))
        if resets:
            new_obs = env.reset([a for _, a in resets], [i for i, _ in resets])
            for (i, assignment), obs in zip(resets, new_obs):
                observations[i] = obs
                slots[i] = _start(assignment, obs)
    raise RuntimeError(f"rollout: episodes still running after max_steps={max_steps}")


def _start(assignment: tuple[int, int], obs: Observation) -> Episode:
    episode = Episode(task_id=assignment[0], init_state_id=assignment[1], instruction=obs.instruction)
    episode.images.append(obs.image)
    episode.proprio.append(np.asarray(obs.proprio, dtype=np.float32))
    return episode


def _record(episode: Episode, result: Any, tokens: np.ndarray, action: Any, log_probs: np.ndarray,
            value: float) -> None:
    episode.tokens.append(tokens)
    episode.actions.append(np.asarray(action, dtype=np.float32))
    episode.log_probs.append(log_probs)
    episode.values.append(float(value))
    episode.env_rewards.append(float(result.reward))
    episode.images.append(result.observation.image)
    episode.proprio.append(np.asarray(result.observation.proprio, dtype=np.float32))
    if result.done:
        episode.success, episode.truncated = bool(result.success), bool(result.truncated)
        episode.aborted = bool(result.aborted)


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
    return np.asarray(value)
