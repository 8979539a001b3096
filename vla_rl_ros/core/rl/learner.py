"""The learning half of a training iteration, one for both routes.

``vla-rl train`` (core/rl/train_loop.py) collects episodes in-process; the learner node
(nodes/learner_node.py) rebuilds them from trajectory bags. Both then call the same
:class:`Learner`: what to roll out next (:meth:`Learner.plan`: curriculum task draws, a training
init state or fresh layout each, ``train.group_size`` episodes per context, solved contexts
skipped) and what to learn from what came back (:meth:`Learner.learn`: solved-context and
curriculum updates, dynamic sampling of informative groups, PRM scoring, rewards, group or
critic advantages, the PPO update). Its state (:meth:`Learner.state_dict`) is part of both
routes' one checkpoint format (core/rl/checkpoint.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from vla_rl_ros.core.envs.splits import is_held_out, training_layout
from vla_rl_ros.core.rl.buffer import build_batch, episode_rewards
from vla_rl_ros.core.rl.curriculum import TaskCurriculum
from vla_rl_ros.core.rl.groups import SolvedContexts, group_advantages, group_ids, informative_groups
from vla_rl_ros.core.rl.rollout import Episode

Gather = Callable[[list, str], list]
"""Every data-parallel rank's items concatenated in rank order (``what`` names them in errors)."""


def draw_contexts(count: int, tasks: list[int], rng: np.random.Generator, num_train_init_states: int,
                  fresh_fraction: float, solved: SolvedContexts, tries: int = 20) -> list[tuple[int, int]]:
    """``count`` training contexts for the tasks the curriculum drew (one per task draw).

    Each is a training init state or, with probability ``fresh_fraction``, a fresh training
    layout; a solved context is redrawn up to ``tries`` times. Never a held-out id.
    """
    contexts = []
    for task in tasks[:count]:
        for _ in range(tries):
            init = (training_layout(rng) if rng.random() < fresh_fraction
                    else int(rng.integers(0, num_train_init_states)))
            if not solved.skipped((task, init)):
                break
        if is_held_out(init, num_train_init_states):  # the split's one guarantee: never train on these
            raise AssertionError(f"drew held-out context {(task, init)}")
        contexts.append((int(task), int(init)))
    return contexts


@dataclass
class EpisodeSummary:
    """What every rank needs to know of an episode another rank collected."""

    task_id: int
    init_state_id: int
    success: bool
    aborted: bool
    length: int
    env_steps: int
    kept: bool = False
    """Its group passed the dynamic-sampling filter (or the critic estimator trains on every episode)."""

    @classmethod
    def of(cls, episode: Episode, kept: bool = False) -> "EpisodeSummary":
        """The summary of a finished episode."""
        return cls(int(episode.task_id), int(episode.init_state_id), bool(episode.success),
                   bool(episode.aborted), int(episode.length), int(episode.env_steps), bool(kept))


class Learner:
    """Plans rollouts and learns from finished episodes; the state both training routes share.

    ``trainer``: a PPOTrainer (or the learner node's LeaderTrainer, same interface). ``prm``
    scores the episodes that arrive without PRM progress (None: those get the outcome reward
    only). ``gather``: in a data-parallel ``vla-rl train`` every rank learns from the episodes it
    collected and the small per-episode summaries travel (None in one process).
    """

    def __init__(self, cfg: Any, policy: Any, trainer: Any, prm: Any = None,
                 gather: Gather | None = None) -> None:
        self.cfg, self.policy, self.trainer, self.prm = cfg, policy, trainer, prm
        seed = cfg.train.seed
        self.rng = np.random.default_rng(seed)
        """The plan's stream (every data-parallel rank draws the same plan)."""
        self.update_generator = torch.Generator().manual_seed(seed + 2)
        """Minibatch order of the PPO update (shared by the ranks)."""
        cur = cfg.curriculum
        self.curriculum = TaskCurriculum(cfg.env.task_ids, enabled=cur.enabled,
                                         target_success=cur.target_success,
                                         temperature=cur.temperature, floor=cur.floor, ema=cur.ema, seed=seed)
        self.solved = SolvedContexts(cfg.train.skip_solved_streak)
        self._gather = gather

    # ------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Trainer, curriculum and solved contexts (the random streams are saved with the run's)."""
        return {"trainer": self.trainer.state_dict(), "curriculum": self.curriculum.state_dict(),
                "solved_contexts": self.solved.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.trainer.load_state_dict(state["trainer"])
        self.curriculum.load_state_dict(state["curriculum"])
        self.solved.load_state_dict(state.get("solved_contexts", {}))

    def everyone(self, items: list[Any], what: str) -> list[Any]:
        """Every rank's ``items`` concatenated in rank order (``items`` itself in one process)."""
        return items if self._gather is None else self._gather(items, what)

    # ------------------------------------------------------------------------ planning
    def plan(self) -> list[tuple[int, int]]:
        """The next iteration's (task, init state) assignments: ``group_size`` episodes per context."""
        cfg = self.cfg.train
        size = min(cfg.group_size, cfg.episodes_per_iter)
        count = -(-cfg.episodes_per_iter // size)
        contexts = draw_contexts(count, self.curriculum.sample(count), self.rng,
                                 self.cfg.env.num_train_init_states, cfg.fresh_layout_fraction, self.solved)
        return [c for c in contexts for _ in range(size)][:cfg.episodes_per_iter]

    # ------------------------------------------------------------------------ learning
    def learn(self, episodes: list[Episode]) -> dict[str, Any]:
        """Curriculum, advantages and one PPO update from the finished ``episodes``; the metrics.

        Aborted and empty episodes only count. With group estimators, episodes are grouped by
        context (task, init state) and groups whose outcomes are all equal are dropped (no
        comparison, no gradient); when none is left there is no update (``ppo/no_update``), and
        callers keep their policy version. ``rollout/iteration_env_steps``: env steps of all ranks.
        """
        cfg = self.cfg
        usable = [e for e in episodes if not e.aborted and e.length > 0]
        if cfg.ppo.uses_critic:
            keep = np.ones(len(usable), dtype=bool)
        else:  # groups never span ranks, so the filter is local
            keep = informative_groups(np.array([e.success for e in usable]), group_ids(usable))
        if self._gather is None:
            everyone, usable_all, keep_all = episodes, usable, keep
        else:
            kept = {id(e): bool(k) for e, k in zip(usable, keep)}
            everyone = self.everyone([EpisodeSummary.of(e, kept.get(id(e), False)) for e in episodes],
                                     "episode summaries")
            usable_all = [e for e in everyone if not e.aborted and e.length > 0]
            keep_all = np.array([e.kept for e in usable_all], dtype=bool)
        metrics: dict[str, Any] = {"rollout/episodes": len(usable_all),
                                   "rollout/aborted": len(everyone) - len(usable_all),
                                   "rollout/iteration_env_steps": sum(e.env_steps for e in everyone),
                                   "rollout/decisions": sum(e.length for e in everyone)}
        if not usable_all:
            metrics["rollout/empty"] = 1.0
            return metrics
        groups = group_ids(usable_all)
        for group in np.unique(groups):
            members = [e for e, g in zip(usable_all, groups) if g == group]
            self.solved.update((members[0].task_id, members[0].init_state_id), [e.success for e in members])
        for e in usable_all:
            self.curriculum.update(e.task_id, e.success)
        metrics.update({"rollout/success_rate": float(np.mean([e.success for e in usable_all])),
                        "rollout/episode_length": float(np.mean([e.env_steps for e in usable_all])),
                        "rollout/solved_contexts": float(sum(map(self.solved.skipped, self.solved.runs)))})
        metrics.update(self.curriculum.metrics())
        train_on = [e for e, k in zip(usable, keep) if k]
        if cfg.ppo.uses_critic:
            self._bootstrap_values(train_on)
        else:
            metrics.update({"rollout/groups": float(len(np.unique(groups))),
                            "rollout/groups_kept": float(len(np.unique(groups[keep_all]))),
                            "rollout/episodes_kept": float(keep_all.sum())})
            if not keep_all.any():  # every group uniform: nothing to compare, no update (and no new version)
                metrics["ppo/no_update"] = 1.0
                return metrics
        if self.prm is not None:
            self.prm.score_episodes([e for e in train_on if e.progress is None])
        # An episode's PRM term counts only where a PRM scored every turn of it (the PRM node, or
        # this learner's copy); the others get the outcome reward alone.
        rewards = [episode_rewards(e, cfg.reward.success_weight,
                                   cfg.reward.prm_weight if e.progress is not None else 0.0)
                   for e in train_on]
        start = time.perf_counter()
        batch = build_batch(train_on, rewards, cfg.ppo.gamma, cfg.ppo.gae_lambda) if train_on else None
        if batch is not None and not cfg.ppo.uses_critic:
            returns = np.array([r.sum() for r in rewards])
            advantages = group_advantages(returns, group_ids(train_on), cfg.ppo.advantage_estimator)
            batch.advantages = torch.as_tensor(np.repeat(advantages, [e.length for e in train_on]),
                                               dtype=torch.float32)
        metrics.update(self.trainer.update(batch, self.update_generator))
        metrics["time/update_s"] = time.perf_counter() - start
        all_returns = self.everyone([float(r.sum()) for r in rewards], "returns")
        metrics["rollout/return"] = float(np.mean(all_returns))
        progress = [float(e.progress[-1]) for e in train_on if e.progress is not None]
        if self.prm is not None:  # the same on every rank, so the gather is collective
            progress = self.everyone(progress, "progress")
        if progress:
            metrics["rollout/prm_final_progress"] = float(np.mean(progress))
        return metrics

    def _bootstrap_values(self, episodes: list[Episode]) -> None:
        """Critic value of the final observation of time-limit truncations (bootstrap, not termination)."""
        truncated = [e for e in episodes if e.truncated]
        if not truncated:
            return
        out = self.policy.decode(np.stack([e.images[-1] for e in truncated]),
                                 [e.instruction for e in truncated],
                                 greedy=True, proprio=np.stack([e.proprio[-1] for e in truncated]))
        for episode, value in zip(truncated, torch.as_tensor(out.values).reshape(-1).tolist()):
            episode.final_value = float(value)
