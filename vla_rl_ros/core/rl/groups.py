"""Group-relative advantages: G rollouts per context, each episode judged against its group.

A context is a task and a layout (fixed init state or seeded fresh layout). With a sparse 0/1
reward, the only comparison that carries signal in a small batch is between rollouts of the
same context, so each iteration draws a few contexts and runs every one G times. Pure functions
over numpy arrays plus one small stateful class (which contexts are solved), so each rule can be
checked by hand.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

ESTIMATORS = ("loo", "grpo")
"""``loo``: leave-one-out baseline, A_i = R_i - mean_{j != i} R_j (RIPT-VLA's LOOP).
``grpo``: (R_i - mean R) / (std R + eps), the group-normalised advantage (SimpleVLA-RL, RLinf)."""


def group_advantages(returns: np.ndarray, groups: np.ndarray, estimator: str = "loo",
                     eps: float = 1e-6) -> np.ndarray:
    """Advantage of each episode from the returns of its group ([E] -> [E], float64).

    A group of one episode has no baseline and gets advantage 0.
    """
    returns = np.asarray(returns, dtype=np.float64)
    groups = np.asarray(groups)
    if returns.shape != groups.shape or returns.ndim != 1:
        raise ValueError(f"returns {returns.shape} and groups {groups.shape} must be equal 1-D shapes")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown group estimator {estimator!r}; expected one of {ESTIMATORS}")
    if not np.all(np.isfinite(returns)):
        raise ValueError("group_advantages: non-finite return")
    advantages = np.zeros_like(returns)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        size = len(members)
        if size < 2:
            continue
        values = returns[members]
        if estimator == "loo":
            others = (values.sum() - values) / (size - 1)
            advantages[members] = values - others
        else:
            advantages[members] = (values - values.mean()) / (values.std() + eps)
    return advantages


def informative_groups(successes: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mask [E] of episodes whose group has mixed outcomes (dynamic sampling).

    A group that all succeeded or all failed says nothing about which behaviour is better: its
    sparse advantages are all zero, and only noise would remain from dense shaping. Such groups
    are dropped (all three reference frameworks do this).
    """
    successes = np.asarray(successes, dtype=bool)
    groups = np.asarray(groups)
    keep = np.zeros(len(successes), dtype=bool)
    for group in np.unique(groups):
        members = groups == group
        wins = int(successes[members].sum())
        keep[members] = 0 < wins < int(members.sum())
    return keep


class SolvedContexts:
    """Contexts solved by every rollout of their last ``streak`` groups are skipped (RIPT-VLA).

    Re-running a context the policy always solves costs a whole group and, its outcomes being
    uniform, is then dropped anyway. A group with any failure resets the context's streak.
    ``streak`` 0 disables skipping.
    """

    def __init__(self, streak: int = 2) -> None:
        """No context is solved yet."""
        if streak < 0:
            raise ValueError(f"streak must be >= 0, got {streak}")
        self.streak = streak
        self.runs: dict[tuple[int, int], int] = defaultdict(int)

    def update(self, context: tuple[int, int], successes: Sequence[bool]) -> None:
        """Record a finished group of ``context``."""
        key = (int(context[0]), int(context[1]))
        self.runs[key] = self.runs[key] + 1 if successes and all(successes) else 0

    def skipped(self, context: tuple[int, int]) -> bool:
        """True when ``context`` should not be drawn again."""
        return self.streak > 0 and self.runs.get((int(context[0]), int(context[1])), 0) >= self.streak

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state (for exact resume)."""
        return {"streak": self.streak, "runs": [[t, i, n] for (t, i), n in sorted(self.runs.items()) if n]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.runs = defaultdict(int, {(int(t), int(i)): int(n) for t, i, n in state.get("runs", [])})


def group_ids(episodes: Sequence[Any]) -> np.ndarray:
    """Group index of each episode: episodes of the same (task, init state) form one group."""
    index: dict[tuple[int, int], int] = {}
    return np.array([index.setdefault((e.task_id, e.init_state_id), len(index)) for e in episodes],
                    dtype=np.int64)
