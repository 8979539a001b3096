"""Rollout collection: N environments, one batched decode per decision, whole episodes.

The one episode loop of the package: training rollouts, held-out evaluation and best-of-N all
run through :func:`collect_episodes`. A decision (a conversation turn) is one decode of a chunk
of K actions per running environment; the environments execute the chunk and observe once, at
its end, so frames are rendered only where the policy reads them.

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
    """One finished trajectory of T decisions (turns); per-turn arrays have T rows, observations T+1.

    A turn is one decode: the observation, the K x 7 action tokens of its chunk, their log-probs,
    the critic's value, and the sparse reward collected while the chunk ran.
    """

    task_id: int
    init_state_id: int
    instruction: str
    images: list[np.ndarray] = field(default_factory=list)
    """Observations ``o_0..o_T`` (uint8 [H, W, 3]); ``o_T`` is the final one."""
    proprio: list[np.ndarray] = field(default_factory=list)
    """Proprio of ``o_0..o_T``."""
    tokens: list[np.ndarray] = field(default_factory=list)
    """Action tokens of each turn, int64 [K * 7]."""
    actions: list[np.ndarray] = field(default_factory=list)
    """Continuous actions each turn decoded, float32 [K, 7] (the first ``executed[t]`` ran)."""
    log_probs: list[np.ndarray] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    env_rewards: list[float] = field(default_factory=list)
    """Sparse reward of each turn (the sum over the actions its chunk executed)."""
    executed: list[int] = field(default_factory=list)
    """Environment steps each turn executed (K, fewer on the turn where the episode ended)."""
    seed: int = 0
    """Sampling stream the episode was decoded with (evaluation seeds; 0 in training)."""
    aborted_reason: str = ""
    success: bool = False
    truncated: bool = False
    aborted: bool = False
    final_value: float = 0.0
    """Critic value of ``o_T``: the bootstrap of a time-limit truncation (0 otherwise)."""
    progress: np.ndarray | None = None
    """PRM progress of ``o_0..o_T`` when a PRM scored the episode."""

    @property
    def length(self) -> int:
        """Number of decisions (turns) T."""
        return len(self.tokens)

    @property
    def env_steps(self) -> int:
        """Environment steps executed (the sum of ``executed``)."""
        return int(sum(self.executed))


def step_inputs(episodes: Sequence[Episode]) -> tuple[np.ndarray, list[str], np.ndarray, torch.Tensor]:
    """What the policy saw and chose at every turn, episode-major (each episode's turns together).

    ``(images [N,H,W,3], instructions [N], proprio [N,P] float32, tokens [N,K*7] long)`` for the
    observations ``o_0..o_{T-1}`` and chunks ``a_0..a_{T-1}`` of each episode; episodes without a
    turn add nothing.
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
a callable with ``wants_observations = True`` is called with the list of Observations instead.
``.actions`` is [B, K, 7] (a chunk per observation) or [B, 7] (one action: K = 1)."""


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


def chunk_of(actions: Any, rows: int) -> np.ndarray:
    """A decoder's ``.actions`` as float32 [rows, K, 7] ([rows, 7] is K = 1)."""
    chunk = np.asarray(actions, dtype=np.float32)
    if chunk.ndim == 2:
        chunk = chunk[:, None, :]
    if chunk.ndim != 3 or chunk.shape[0] != rows or chunk.shape[2] != ACTION_DIM:
        raise ValueError(f"decoder returned actions of shape {list(chunk.shape)}, expected "
                         f"[{rows}, K, {ACTION_DIM}] or [{rows}, {ACTION_DIM}]")
    return chunk


def step_chunks(env: VectorEnvLike, chunks: np.ndarray) -> list[Any]:
    """``env.step_chunk`` when the environment has it; one ``env.step`` for K = 1 otherwise."""
    if hasattr(env, "step_chunk"):
        return env.step_chunk(chunks)
    if chunks.shape[1] != 1:
        raise ValueError(f"{type(env).__name__} has no step_chunk: it can only run chunks of 1 action")
    results = env.step(chunks[:, 0])
    for result in results:
        if not result.info.get("inactive"):
            result.info.setdefault("executed", 1)
    return results


def collect_episodes(env: VectorEnvLike, decode: DecodeFn, assignments: Sequence[tuple[int, int]],
                     max_steps: int = 10_000, keep_observations: bool = True, seed: int = 0,
                     on_episode: Callable[[Episode], None] | None = None) -> list[Episode]:
    """Run one episode per assignment (in any order) and return them finished.

    ``decode`` is called once per decision on the observations of the environments that run an
    episode (batched decoding); idle environments get zero actions, which the vector API answers
    with ``done=True, info['inactive']``. ``max_steps`` bounds the decisions, against an
    environment that never ends an episode. ``keep_observations=False`` keeps only each episode's
    first and final observation (evaluation: no memory for frames nobody trains on). ``seed`` is
    written into every episode; ``on_episode`` is called as each one finishes (progress bars).
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
        slots[i] = _start(assignment, obs, seed)
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
        decoded = chunk_of(out.actions, len(active))
        chunks = np.zeros((count,) + decoded.shape[1:], dtype=np.float32)
        chunks[active] = decoded
        results = step_chunks(env, chunks)
        resets: list[tuple[int, tuple[int, int]]] = []
        for row, i in enumerate(active):
            result, episode = results[i], slots[i]
            observations[i] = result.observation
            _record(episode, result, tokens[row], chunks[i], log_probs[row], values[row], keep_observations)
            if result.done:
                finished.append(episode)
                if on_episode is not None:
                    on_episode(episode)
                slots[i] = None
                if pending:
                    resets.append((i, _next_assignment(pending, result.observation.task_id)))
        if resets:
            new_obs = env.reset([a for _, a in resets], [i for i, _ in resets])
            for (i, assignment), obs in zip(resets, new_obs):
                observations[i] = obs
                slots[i] = _start(assignment, obs, seed)
    raise RuntimeError(f"rollout: episodes still running after max_steps={max_steps} decisions")


def _start(assignment: tuple[int, int], obs: Observation, seed: int) -> Episode:
    episode = Episode(task_id=assignment[0], init_state_id=assignment[1], instruction=obs.instruction,
                      seed=seed)
    episode.images.append(obs.image)
    episode.proprio.append(np.asarray(obs.proprio, dtype=np.float32))
    return episode


def _record(episode: Episode, result: Any, tokens: np.ndarray, chunk: np.ndarray, log_probs: np.ndarray,
            value: float, keep_observations: bool) -> None:
    episode.tokens.append(tokens)
    episode.actions.append(np.asarray(chunk, dtype=np.float32))
    episode.log_probs.append(log_probs)
    episode.values.append(float(value))
    episode.env_rewards.append(float(result.reward))
    episode.executed.append(int(result.info.get("executed", len(chunk))))
    if not keep_observations and len(episode.images) > 1:
        episode.images.pop()
        episode.proprio.pop()
    episode.images.append(result.observation.image)
    episode.proprio.append(np.asarray(result.observation.proprio, dtype=np.float32))
    if result.done:
        episode.success, episode.truncated = bool(result.success), bool(result.truncated)
        episode.aborted = bool(result.aborted)
        episode.aborted_reason = str(result.info.get("reason", "")) if result.aborted else ""


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
    return np.asarray(value)
