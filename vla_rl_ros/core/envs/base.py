"""The environment interface every backend honours (LIBERO, the toy env, a real-arm bridge).

Observations and step results are plain dataclasses of numpy arrays so that the same values
cross process pipes (vectorised workers) and ROS messages (nodes) without conversion logic
in the learning code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

PROPRIO_DIM = 8
"""LIBERO's proprio layout, which every bridge follows: eef position (3, m), eef axis-angle (3),
gripper finger positions (2, m; LIBERO's sign convention: finger 1 negative, so the opening is
finger 0 minus finger 1)."""
ACTION_DIM = 7
"""End-effector delta position (3), delta rotation as axis-angle (3), gripper (-1 open, +1 close)."""


@dataclass
class Observation:
    """What the policy sees at one control step of one environment."""

    image: np.ndarray
    """Agentview camera, uint8 [H, W, 3], upright."""
    instruction: str
    """Natural-language task instruction."""
    proprio: np.ndarray
    """float32 [D]: eef position (3), eef axis-angle (3), gripper joint positions (2), ..."""
    task_id: int
    """Task index within the suite."""
    init_state_id: int
    """Which of the task's init states this episode started from."""
    step: int = 0
    """Control step within the episode (0 = first step after the settle steps)."""
    wrist_image: np.ndarray | None = None
    """Wrist camera uint8 [H, W, 3], when rendered."""


@dataclass
class StepResult:
    """The outcome of applying one action in one environment."""

    observation: Observation
    """Observation after the action (the final one when ``done``)."""
    reward: float
    """Sparse task reward: 1.0 on the step where the task succeeds, else 0.0."""
    done: bool
    """The episode ended (success, time limit or abort); the env must be reset before stepping."""
    success: bool = False
    """The simulator's success verdict."""
    truncated: bool = False
    """Ended by the time limit (bootstrap the value; not a termination)."""
    aborted: bool = False
    """Ended by a fault (crashed or hung worker); neither success nor failure for learning."""
    info: dict = field(default_factory=dict)
    """Backend extras, e.g. ``{"clipped_actions": 1, "reason": "..."}``."""


class VectorEnvLike(Protocol):
    """N environments stepped together: what the rollout loop and the sim bridge drive."""

    num_envs: int

    def reset(self, assignments: Sequence[tuple[int, int]],
              env_ids: Sequence[int] | None = None) -> list[Observation]:
        """Reset envs ``env_ids`` (default all) to ``(task_id, init_state_id)`` each."""

    def step(self, actions: np.ndarray) -> list[StepResult]:
        """Apply ``actions`` float32 [num_envs, 7] and return one result per environment."""

    def step_chunk(self, chunks: np.ndarray) -> list[StepResult]:
        """Apply ``chunks`` float32 [num_envs, K, 7], one chunk per environment.

        Each env runs its K actions (fewer if its episode ends) and observes once, after the last;
        ``info['executed']`` counts them.
        """

    def close(self) -> None:
        """Stop workers and free simulator resources."""
