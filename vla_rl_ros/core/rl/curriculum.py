"""Curriculum selection: sample training tasks by their running success rate.

Tasks whose running (EMA) success is near ``target_success`` are the most informative for
PPO (their returns vary); solved and hopeless tasks give near-zero advantages. Every task
keeps at least ``floor`` of the sampling probability so none starves and its estimate can
recover. The sampler owns its random generator so a resumed run samples the same tasks.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class TaskCurriculum:
    """Running success per task and a sampler that favours tasks near the target success."""

    def __init__(self, task_ids: Sequence[int], *, enabled: bool = True, target_success: float = 0.5,
                 temperature: float = 0.2, floor: float = 0.05, ema: float = 0.2, seed: int = 0) -> None:
        """Start every task's estimate at ``target_success`` (unknown tasks are worth trying)."""
        if len(task_ids) == 0 or len(set(task_ids)) != len(task_ids):
            raise ValueError(f"curriculum needs distinct task ids, got {list(task_ids)}")
        if temperature <= 0 or not 0 <= floor < 1 or not 0 < ema <= 1:
            raise ValueError(f"curriculum: temperature={temperature} must be > 0, floor={floor} in [0, 1), "
                             f"ema={ema} in (0, 1]")
        self.task_ids = [int(t) for t in task_ids]
        self.enabled = enabled
        self.target_success = target_success
        self.temperature = temperature
        self.floor = floor
        self.ema = ema
        self.success = np.full(len(self.task_ids), float(target_success))
        self.episodes = np.zeros(len(self.task_ids), dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def probabilities(self) -> np.ndarray:
        """Sampling probability of each task (order of ``task_ids``); sums to 1."""
        count = len(self.task_ids)
        if not self.enabled:
            return np.full(count, 1.0 / count)
        weights = np.exp(-np.abs(self.success - self.target_success) / self.temperature)
        preference = weights / weights.sum()
        floor = min(self.floor, 1.0 / count)
        return floor + (1.0 - floor * count) * preference

    def sample(self, count: int) -> list[int]:
        """``count`` task ids drawn independently from :meth:`probabilities`."""
        picks = self.rng.choice(len(self.task_ids), size=count, p=self.probabilities())
        return [self.task_ids[i] for i in picks]

    def update(self, task_id: int, success: bool) -> None:
        """Fold one finished episode into the task's running success rate."""
        try:
            index = self.task_ids.index(int(task_id))
        except ValueError:
            raise ValueError(f"curriculum: unknown task id {task_id} (tasks {self.task_ids})") from None
        self.success[index] = (1.0 - self.ema) * self.success[index] + self.ema * float(success)
        self.episodes[index] += 1

    def metrics(self) -> dict[str, float]:
        """``curriculum/success_<task>`` and ``curriculum/prob_<task>`` for logging."""
        out: dict[str, float] = {}
        for task, rate, prob in zip(self.task_ids, self.success, self.probabilities()):
            out[f"curriculum/success_{task}"] = float(rate)
            out[f"curriculum/prob_{task}"] = float(prob)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue sampling exactly (estimates, counts, RNG state)."""
        return {"task_ids": list(self.task_ids), "success": self.success.tolist(),
                "episodes": self.episodes.tolist(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the task list must be the same."""
        if list(state["task_ids"]) != self.task_ids:
            raise ValueError(f"curriculum state is for tasks {state['task_ids']}, "
                             f"this run has {self.task_ids}")
        self.success = np.asarray(state["success"], dtype=np.float64)
        self.episodes = np.asarray(state["episodes"], dtype=np.int64)
        self.rng.bit_generator.state = state["rng"]
