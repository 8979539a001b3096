"""A tiny VLA-shaped environment: image + instruction in, 7-dof action out, sparse success.

Task ``k`` asks the gripper to reach a coloured target and close there. The state is the
gripper's 2-D position; the image (uint8, square) shows the target as a coloured square
and the gripper as a white (open) or grey (closed) dot, so the task is visible only through
pixels and words, as in LIBERO. Action dims 0 and 1 move the gripper (scaled by
``step_size``), dims 2-5 are ignored, dim 6 > 0 closes the gripper. Success = the gripper
is closed within ``tolerance`` of the target. An oracle (:func:`toy_oracle_actions`)
always succeeds; uniformly random actions rarely do. Runs in microseconds per step, so
"PPO raises the success rate" is a real test without a simulator.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from vla_rl_ros.core.envs.base import ACTION_DIM, Observation, StepResult
from vla_rl_ros.core.envs.splits import check_init_state_id

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 230), "yellow": (230, 210, 40),
           "magenta": (210, 50, 200), "cyan": (40, 210, 210), "orange": (240, 140, 30),
           "purple": (130, 60, 200)}
OPEN_FINGER = 0.04


def toy_task_count() -> int:
    """Number of distinct toy tasks (one per target colour)."""
    return len(COLOURS)


def toy_goal(task_id: int, radius: float = 0.6) -> np.ndarray:
    """Target position of ``task_id``: evenly spread on a circle (task 0 is to the right)."""
    check_task(task_id)
    angle = 2.0 * math.pi * task_id / toy_task_count()
    return np.array([radius * math.cos(angle), radius * math.sin(angle)], dtype=np.float64)


def toy_instruction(task_id: int) -> str:
    """Natural-language instruction of ``task_id``."""
    check_task(task_id)
    return f"move the gripper to the {list(COLOURS)[task_id]} square and close it"


def check_task(task_id: int) -> None:
    """Raise ValueError naming the valid range for an unknown task id."""
    if not 0 <= int(task_id) < toy_task_count():
        raise ValueError(f"toy task {task_id} does not exist: valid task ids are 0..{toy_task_count() - 1}")


def toy_start(task_id: int, init_state_id: int, spread: float = 0.15) -> np.ndarray:
    """Deterministic start position of an init state (a small offset around the centre)."""
    check_task(task_id)
    # The same ids as LIBERO (fixed init states and fresh layouts), so one split serves both.
    check_init_state_id(init_state_id)
    rng = np.random.default_rng([task_id, init_state_id, 7])
    return rng.uniform(-spread, spread, size=2)


def render(position: np.ndarray, goal: np.ndarray, closed: bool, colour: tuple[int, int, int],
           size: int) -> np.ndarray:
    """uint8 [size, size, 3] image: grey floor, coloured target square, gripper dot."""
    image = np.full((size, size, 3), 60, dtype=np.uint8)

    def pixel(xy: np.ndarray) -> tuple[int, int]:
        col = int(round((xy[0] + 1.0) / 2.0 * (size - 1)))
        row = int(round((1.0 - (xy[1] + 1.0) / 2.0) * (size - 1)))
        return min(max(row, 0), size - 1), min(max(col, 0), size - 1)

    half = max(size // 10, 1)
    row, col = pixel(goal)
    image[max(row - half, 0):row + half + 1, max(col - half, 0):col + half + 1] = colour
    dot = max(size // 16, 1)
    row, col = pixel(position)
    image[max(row - dot, 0):row + dot + 1, max(col - dot, 0):col + dot + 1] = 140 if closed else 255
    return image


class ToyVectorEnv:
    """``num_envs`` toy environments stepped together (implements ``VectorEnvLike``)."""

    def __init__(self, num_envs: int = 2, image_size: int = 32, max_episode_steps: int = 20,
                 step_size: float = 0.1, tolerance: float = 0.2, goal_radius: float = 0.6,
                 require_close: bool = True) -> None:
        """Environments start finished; call :meth:`reset` before stepping.

        ``require_close=False`` makes reaching the target enough (an easier variant for
        learning tests); the gripper still moves and shows in images and proprio.
        """
        if num_envs < 1 or image_size < 8 or max_episode_steps < 1:
            raise ValueError(f"toy env: num_envs={num_envs} >= 1, image_size={image_size} >= 8, "
                             f"max_episode_steps={max_episode_steps} >= 1 required")
        self.num_envs = num_envs
        self.image_size = image_size
        self.max_episode_steps = max_episode_steps
        self.step_size = step_size
        self.tolerance = tolerance
        self.goal_radius = goal_radius
        self.require_close = require_close
        self.position = np.zeros((num_envs, 2))
        self.closed = np.zeros(num_envs, dtype=bool)
        self.task_ids = np.zeros(num_envs, dtype=np.int64)
        self.init_ids = np.zeros(num_envs, dtype=np.int64)
        self.steps = np.zeros(num_envs, dtype=np.int64)
        self.done = np.ones(num_envs, dtype=bool)

    def _observation(self, i: int) -> Observation:
        task = int(self.task_ids[i])
        finger = 0.0 if self.closed[i] else OPEN_FINGER
        proprio = np.array([*self.position[i], 0.0, 0.0, 0.0, 0.0, finger, -finger], dtype=np.float32)
        image = render(self.position[i], toy_goal(task, self.goal_radius), bool(self.closed[i]),
                       list(COLOURS.values())[task],
                       self.image_size)
        return Observation(image=image, instruction=toy_instruction(task), proprio=proprio, task_id=task,
                           init_state_id=int(self.init_ids[i]), step=int(self.steps[i]))

    def reset(self, assignments: Sequence[tuple[int, int]],
              env_ids: Sequence[int] | None = None) -> list[Observation]:
        """Reset envs ``env_ids`` (default all) to ``(task_id, init_state_id)`` each."""
        env_ids = list(range(self.num_envs)) if env_ids is None else list(env_ids)
        if len(assignments) != len(env_ids):
            raise ValueError(f"toy env reset: {len(assignments)} assignments for {len(env_ids)} envs")
        for i, (task, init) in zip(env_ids, assignments):
            if not 0 <= i < self.num_envs:
                raise ValueError(f"toy env reset: env id {i} out of range 0..{self.num_envs - 1}")
            self.position[i] = toy_start(int(task), int(init))
            self.task_ids[i], self.init_ids[i] = int(task), int(init)
            self.closed[i], self.steps[i], self.done[i] = False, 0, False
        return [self._observation(i) for i in env_ids]

    def step(self, actions: np.ndarray) -> list[StepResult]:
        """Apply ``actions`` float32 [num_envs, 7]; non-finite actions act as no-ops.

        Finished (or never reset) envs do not move and answer ``done=True, info['inactive']``.
        """
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, ACTION_DIM):
            raise ValueError(f"toy env step: actions must be [{self.num_envs}, {ACTION_DIM}], "
                             f"got {actions.shape}")
        results = []
        for i in range(self.num_envs):
            if self.done[i]:  # like VectorEnv: a finished env idles until it is reset
                results.append(StepResult(observation=self._observation(i), reward=0.0, done=True,
                                          info={"inactive": True}))
                continue
            action = actions[i]
            nonfinite = not np.all(np.isfinite(action))
            action = np.zeros(ACTION_DIM) if nonfinite else np.clip(action, -1.0, 1.0)
            self.position[i] = np.clip(self.position[i] + self.step_size * action[:2], -1.0, 1.0)
            self.closed[i] = action[6] > 0
            self.steps[i] += 1
            goal = toy_goal(int(self.task_ids[i]), self.goal_radius)
            near = np.linalg.norm(self.position[i] - goal) <= self.tolerance
            success = bool(near and (self.closed[i] or not self.require_close))
            truncated = not success and self.steps[i] >= self.max_episode_steps
            self.done[i] = success or truncated
            results.append(StepResult(observation=self._observation(i), reward=float(success),
                                      done=bool(self.done[i]), success=success, truncated=truncated,
                                      info={"nonfinite_actions": int(nonfinite)}))
        return results

    def step_chunk(self, chunks: np.ndarray) -> list[StepResult]:
        """Apply ``chunks`` [num_envs, K, 7], each env stopping at the end of its episode.

        Same contract as ``VectorEnv.step_chunk``: one result per env, ``info['executed']``.
        """
        chunks = np.asarray(chunks, dtype=np.float64)
        if chunks.ndim != 3 or chunks.shape[0] != self.num_envs or chunks.shape[2] != ACTION_DIM:
            raise ValueError(f"toy env step_chunk: chunks must be [{self.num_envs}, K, {ACTION_DIM}], "
                             f"got {chunks.shape}")
        was_done = self.done.copy()
        executed = np.zeros(self.num_envs, dtype=np.int64)
        last: list[StepResult | None] = [None] * self.num_envs
        nonfinite = np.zeros(self.num_envs, dtype=np.int64)
        for k in range(chunks.shape[1]):
            running = ~self.done
            if not running.any():
                break
            results = self.step(np.where(running[:, None], chunks[:, k], 0.0))
            for i in np.flatnonzero(running):
                last[i], executed[i] = results[i], executed[i] + 1
                nonfinite[i] += results[i].info.get("nonfinite_actions", 0)
        out = []
        for i in range(self.num_envs):
            if was_done[i] or last[i] is None:
                out.append(StepResult(observation=self._observation(i), reward=0.0, done=True,
                                      info={"inactive": True}))
                continue
            result = last[i]
            result.info = {"executed": int(executed[i]), "nonfinite_actions": int(nonfinite[i])}
            out.append(result)
        return out

    def close(self) -> None:
        """Nothing to free (kept for the interface)."""


def toy_oracle_actions(observations: Sequence[Observation], step_size: float = 0.1,
                       tolerance: float = 0.2, goal_radius: float = 0.6) -> np.ndarray:
    """Expert actions [B, 7]: head straight for the target, close the gripper once there."""
    actions = np.zeros((len(observations), ACTION_DIM), dtype=np.float32)
    for i, obs in enumerate(observations):
        offset = toy_goal(obs.task_id, goal_radius) - obs.proprio[:2]
        distance = float(np.linalg.norm(offset))
        move = offset / max(distance, 1e-9) * min(distance / step_size, 1.0)
        actions[i, :2] = move
        reaches = distance - step_size * float(np.linalg.norm(move)) <= tolerance * 0.9
        actions[i, 6] = 1.0 if reaches else -1.0
    return actions


DEFAULT_TOY_EPISODE_STEPS = 20


def make_toy_vector_env(cfg) -> ToyVectorEnv:
    """Toy environments from an ``EnvConfig`` (``max_episode_steps`` 0 = 20 steps)."""
    for task in cfg.task_ids:
        check_task(task)
    return ToyVectorEnv(num_envs=cfg.num_envs, image_size=cfg.image_size,
                        max_episode_steps=cfg.max_episode_steps or DEFAULT_TOY_EPISODE_STEPS,
                        step_size=cfg.toy_step_size, require_close=not cfg.toy_reach_only)


class ToyProgressOracle:
    """Ground-truth progress of toy episodes (distance to the target), with the PRM's scoring API.

    ``progress = 1 - distance / start_distance`` (clipped to [0, 1]; 1 on success). It stands
    in for a learned PRM where a test must isolate PPO from PRM quality.
    """

    def __init__(self, goal_radius: float = 0.6) -> None:
        """Targets are placed as in :class:`ToyVectorEnv` with the same ``goal_radius``."""
        self.goal_radius = goal_radius

    def score_episodes(self, episodes: Sequence) -> None:
        """Set ``episode.progress`` ``[T+1]`` from the proprio positions of ``o_0..o_T``."""
        for episode in episodes:
            goal = toy_goal(episode.task_id, self.goal_radius)
            positions = np.stack(episode.proprio)[:, :2].astype(np.float64)
            distance = np.linalg.norm(positions - goal, axis=-1)
            progress = np.clip(1.0 - distance / max(distance[0], 1e-9), 0.0, 1.0)
            progress[0] = 0.0
            if episode.success:
                progress[-1] = 1.0
            episode.progress = progress
