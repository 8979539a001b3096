"""``vla-rl train`` in-process: rollouts, PRM scoring, PPO, held-out evaluation, checkpoints.

One iteration = draw contexts (task by the curriculum, then a training init state or fresh
layout, skipping contexts solved every recent time), run each ``train.group_size`` times with
batched decoding of action chunks, score the episodes with the PRM, compute advantages (group
leave-one-out / GRPO, or critic + GAE), run PPO, update the curriculum, write a checkpoint.
Held-out evaluation (init states and layouts never trained on) runs every
``train.eval_every`` iterations and at the end.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from vla_rl_ros.core.config_io import to_dict
from vla_rl_ros.core.rl import checkpoint as ckpt
from vla_rl_ros.core.rl.buffer import build_batch, episode_rewards
from vla_rl_ros.core.envs.splits import held_out_contexts, is_held_out, training_layout
from vla_rl_ros.core.rl.curriculum import TaskCurriculum
from vla_rl_ros.core.rl.groups import SolvedContexts, group_advantages, group_ids, informative_groups
from vla_rl_ros.core.rl.ppo_trainer import PPOTrainer
from vla_rl_ros.core.rl.results import wilson_interval, write_results
from vla_rl_ros.core.rl.rollout import Episode, collect_episodes, policy_decoder

EVAL_SEED_OFFSET = 7_919
"""Sampled held-out evaluations draw from ``train.seed + EVAL_SEED_OFFSET``, apart from the rollouts'."""


def make_env(env_cfg: Any) -> Any:
    """The vectorised environment of ``env.backend`` ('toy' here, 'libero' from core.envs)."""
    if env_cfg.backend == "toy":
        from vla_rl_ros.core.envs.toy import make_toy_vector_env
        return make_toy_vector_env(env_cfg)
    from vla_rl_ros.core.envs import make_vector_env
    return make_vector_env(env_cfg)


def build_policy(cfg: Any) -> Any:
    """The policy to train: ``policy.model_path`` (e.g. the SFT checkpoint) or a new model."""
    from vla_rl_ros.core.policy import VLAPolicy
    if cfg.env.backend == "toy" and not cfg.policy.model_path:
        from vla_rl_ros.core.envs.toy import toy_instruction, toy_task_count
        instructions = [toy_instruction(i) for i in range(toy_task_count())]
        return VLAPolicy.create(cfg.policy, instructions=instructions)
    return VLAPolicy.from_config(cfg.policy)


def load_prm(cfg: Any, policy: Any) -> Any | None:
    """The PRM of ``reward.prm_path`` checked against the policy; None when unused (ablation)."""
    if not cfg.reward.prm_path or cfg.reward.prm_weight == 0:
        return None
    from vla_rl_ros.core.rl.prm import ProcessRewardModel
    prm = ProcessRewardModel.load(cfg.reward.prm_path, cfg.policy)
    prm.check_compatible(policy)
    return prm


def eval_protocol(cfg: Any) -> str:
    """How the held-out evaluation decodes: ``greedy`` or ``sampled T=<policy.temperature>``."""
    return f"sampled T={cfg.policy.temperature:g}" if cfg.train.eval_sample else "greedy"


def eval_assignments(task_ids: list[int], count: int, num_train_init_states: int) -> list[tuple[int, int]]:
    """``count`` held-out (task, init state) pairs: held-out init states, then held-out layouts."""
    return held_out_contexts(list(task_ids), count, num_train_init_states)


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


class TrainingRun:
    """A resumable training run in ``cfg.train.output_dir``; call :meth:`run`."""

    def __init__(self, cfg: Any, policy: Any = None, env: Any = None, prm: Any = None,
                 progress_bar: bool = True, tensorboard: bool = True) -> None:
        """Build (or take) the policy, environment and PRM; nothing runs until :meth:`run`."""
        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        if cfg.train.torch_threads:
            torch.set_num_threads(cfg.train.torch_threads)
        seed = cfg.train.seed
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        self.policy = policy if policy is not None else build_policy(cfg)
        self.prm = prm if prm is not None else load_prm(cfg, self.policy)
        self.env = env
        self.progress_bar = progress_bar
        self.tensorboard = tensorboard
        self.rng = np.random.default_rng(seed)
        self.generators = {"decode": torch.Generator().manual_seed(seed + 1),
                           "update": torch.Generator().manual_seed(seed + 2)}
        cur = cfg.curriculum
        self.curriculum = TaskCurriculum(cfg.env.task_ids, enabled=cur.enabled,
                                         target_success=cur.target_success,
                                         temperature=cur.temperature, floor=cur.floor, ema=cur.ema, seed=seed)
        self.trainer = PPOTrainer(self.policy, cfg.ppo)
        self.solved = SolvedContexts(cfg.train.skip_solved_streak)
        self.iteration = 0
        self.env_steps = 0
        self.wall_s = 0.0
        """Wall time spent in :meth:`run` by this run so far, earlier (resumed) invocations included."""
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`resume` needs for an exact continuation."""
        return {"iteration": self.iteration, "env_steps": self.env_steps, "wall_s": self.wall_s,
                "config": to_dict(self.cfg),
                "trainable": ckpt.trainable_tensors(self.policy), "trainer": self.trainer.state_dict(),
                "curriculum": self.curriculum.state_dict(), "rng": ckpt.rng_state(self.generators, self.rng),
                "solved_contexts": self.solved.state_dict(),
                "history": self.history, "evals": self.evals}

    def resume(self) -> bool:
        """Load the latest checkpoint of the output dir if there is one (config must match)."""
        state = ckpt.load_checkpoint(self.out)
        if state is None:
            return False
        ckpt.check_resume_config(state["config"], to_dict(self.cfg))
        ckpt.load_trainable_tensors(self.policy, state["trainable"])
        self.trainer.load_state_dict(state["trainer"])
        self.curriculum.load_state_dict(state["curriculum"])
        self.solved.load_state_dict(state.get("solved_contexts", {}))
        ckpt.restore_rng_state(state["rng"], self.generators, self.rng)
        self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])
        self.wall_s = float(state.get("wall_s", 0.0))
        self.history, self.evals = list(state["history"]), list(state["evals"])
        return True

    # ------------------------------------------------------------------------ pieces
    def _bootstrap_values(self, episodes: list[Episode]) -> None:
        truncated = [e for e in episodes if e.truncated]
        if not truncated:
            return
        out = self.policy.decode(np.stack([e.images[-1] for e in truncated]),
                                 [e.instruction for e in truncated],
                                 greedy=True, proprio=np.stack([e.proprio[-1] for e in truncated]))
        for episode, value in zip(truncated, torch.as_tensor(out.values).reshape(-1).tolist()):
            episode.final_value = float(value)

    def rollout_plan(self) -> list[tuple[int, int]]:
        """This iteration's assignments: ``episodes_per_iter`` episodes, ``group_size`` per context."""
        cfg = self.cfg.train
        size = min(cfg.group_size, cfg.episodes_per_iter)
        count = -(-cfg.episodes_per_iter // size)
        contexts = draw_contexts(count, self.curriculum.sample(count), self.rng,
                                 self.cfg.env.num_train_init_states, cfg.fresh_layout_fraction, self.solved)
        return [c for c in contexts for _ in range(size)][:cfg.episodes_per_iter]

    def train_iteration(self) -> dict[str, Any]:
        """Rollouts, advantages, PPO update and curriculum update of one iteration; returns metrics."""
        cfg = self.cfg
        start = time.perf_counter()
        decode = policy_decoder(self.policy, generator=self.generators["decode"])
        episodes = collect_episodes(self.env, decode, self.rollout_plan())
        rollout_s = time.perf_counter() - start
        usable = [e for e in episodes if not e.aborted and e.length > 0]
        steps = sum(e.env_steps for e in episodes)
        self.env_steps += steps
        metrics: dict[str, Any] = {"rollout/episodes": len(usable),
                                   "rollout/aborted": len(episodes) - len(usable),
                                   "rollout/env_steps": self.env_steps, "time/rollout_s": rollout_s,
                                   "rollout/env_steps_per_s": steps / max(rollout_s, 1e-9),
                                   "rollout/episodes_per_hour": 3600 * len(episodes) / max(rollout_s, 1e-9),
                                   "rollout/decisions": sum(e.length for e in episodes)}
        if not usable:
            metrics["rollout/empty"] = 1.0
            return metrics
        groups = group_ids(usable)
        for group in np.unique(groups):
            members = [e for e, g in zip(usable, groups) if g == group]
            self.solved.update((members[0].task_id, members[0].init_state_id), [e.success for e in members])
        for e in usable:
            self.curriculum.update(e.task_id, e.success)
        metrics.update({"rollout/success_rate": float(np.mean([e.success for e in usable])),
                        "rollout/episode_length": float(np.mean([e.env_steps for e in usable])),
                        "rollout/solved_contexts": float(sum(map(self.solved.skipped, self.solved.runs)))})
        metrics.update(self.curriculum.metrics())
        if cfg.ppo.uses_critic:
            train_on = usable
            self._bootstrap_values(train_on)
        else:
            keep = informative_groups(np.array([e.success for e in usable]), groups)
            train_on = [e for e, k in zip(usable, keep) if k]
            metrics.update({"rollout/groups": float(len(np.unique(groups))),
                            "rollout/groups_kept": float(len(np.unique(groups[keep]))),
                            "rollout/episodes_kept": float(len(train_on))})
            if not train_on:  # every group uniform: nothing to compare, no update (and no new version)
                metrics["ppo/no_update"] = 1.0
                return metrics
        if self.prm is not None:
            self.prm.score_episodes(train_on)
        rewards = [episode_rewards(e, cfg.reward.success_weight, cfg.reward.prm_weight if self.prm else 0.0)
                   for e in train_on]
        start = time.perf_counter()
        batch = build_batch(train_on, rewards, cfg.ppo.gamma, cfg.ppo.gae_lambda)
        if not cfg.ppo.uses_critic:
            returns = np.array([r.sum() for r in rewards])
            advantages = group_advantages(returns, group_ids(train_on), cfg.ppo.advantage_estimator)
            batch.advantages = torch.as_tensor(np.repeat(advantages, [e.length for e in train_on]),
                                               dtype=torch.float32)
        metrics.update(self.trainer.update(batch, self.generators["update"]))
        metrics["time/update_s"] = time.perf_counter() - start
        metrics["rollout/return"] = float(np.mean([r.sum() for r in rewards]))
        if self.prm is not None:
            metrics["rollout/prm_final_progress"] = float(np.mean([e.progress[-1] for e in train_on]))
        return metrics

    def evaluate(self) -> dict[str, Any]:
        """Held-out evaluation: overall and per-task success with a 95 % interval.

        Greedy, or sampled at ``policy.temperature`` with ``train.eval_sample``; a sampled one
        draws from its own stream, seeded the same at every evaluation, so that it neither moves the
        rollouts' random state (exact resume) nor gives the start and the end different luck.
        """
        cfg = self.cfg
        assignments = eval_assignments(cfg.env.task_ids, cfg.train.eval_episodes,
                                       cfg.env.num_train_init_states)
        sample = cfg.train.eval_sample
        decode = policy_decoder(self.policy, greedy=not sample,
                                generator=torch.Generator().manual_seed(cfg.train.seed + EVAL_SEED_OFFSET))
        episodes = collect_episodes(self.env, decode, assignments)
        episodes = [e for e in episodes if not e.aborted]
        wins = sum(e.success for e in episodes)
        low, high = wilson_interval(wins, len(episodes))
        result: dict[str, Any] = {"iteration": self.iteration, "env_steps": self.env_steps,
                                  "eval/success_rate": wins / max(len(episodes), 1), "eval/ci_low": low,
                                  "eval/ci_high": high, "eval/episodes": len(episodes),
                                  "eval/protocol": eval_protocol(cfg)}
        for task in cfg.env.task_ids:
            mine = [e.success for e in episodes if e.task_id == task]
            result[f"eval/success_task_{task}"] = float(np.mean(mine)) if mine else float("nan")
        return result

    # ------------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Train up to ``train.iterations`` (resuming if a checkpoint exists); returns the summary."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.resume()
        (self.out / "config.yaml").write_text(yaml.safe_dump({"/**": {"ros__parameters": to_dict(cfg)}},
                                                             sort_keys=False))
        if self.env is None:
            self.env = make_env(cfg.env)
        writer = self._writer()
        bar = None
        if self.progress_bar:
            from tqdm import tqdm
            bar = tqdm(total=cfg.train.iterations, initial=min(self.iteration, cfg.train.iterations),
                       desc="vla-rl train", unit="it")
        clock = time.perf_counter()
        wall_before = self.wall_s

        def out_of_time() -> bool:
            self.wall_s = wall_before + time.perf_counter() - clock
            return bool(cfg.train.time_budget_s) and self.wall_s >= cfg.train.time_budget_s
        try:
            while self.iteration < cfg.train.iterations and not out_of_time():
                if (cfg.train.eval_every and self.iteration % cfg.train.eval_every == 0
                        and not (self.evals and self.evals[-1]["iteration"] == self.iteration)):
                    self._record_eval(writer)
                metrics = self.train_iteration()
                self.iteration += 1
                metrics["iteration"] = self.iteration
                self.history.append(metrics)
                self._log(writer, metrics)
                out_of_time()  # the checkpoint carries the wall time spent so far
                ckpt.save_checkpoint(self.out, self.state_dict(), self.policy)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(success=f"{metrics.get('rollout/success_rate', float('nan')):.2f}",
                                    kl=f"{metrics.get('ppo/approx_kl', float('nan')):.3f}")
            if cfg.train.eval_every and (not self.evals or self.evals[-1]["iteration"] != self.iteration):
                self._record_eval(writer)
                ckpt.save_checkpoint(self.out, self.state_dict(), self.policy)
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        summary = self.summary(resumed)
        write_results(self.out, self.history, self.evals, summary)
        return summary

    def _record_eval(self, writer: Any) -> None:
        result = self.evaluate()
        self.evals.append(result)
        self._log(writer, result, step=self.iteration)
        write_results(self.out, self.history, self.evals, self.summary(False))

    def _writer(self) -> Any:
        if not self.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(self.out / "tensorboard"), purge_step=self.iteration or None)

    def _log(self, writer: Any, metrics: dict[str, Any], step: int | None = None) -> None:
        step = metrics.get("iteration", 0) if step is None else step
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({k: v for k, v in metrics.items()}, default=float) + "\n")
        if writer is not None:
            for key, value in metrics.items():
                if "/" in key and isinstance(value, (int, float)) and np.isfinite(value):
                    writer.add_scalar(key, value, step)

    def summary(self, resumed: bool) -> dict[str, Any]:
        """JSON-ready summary: config, first/last/best eval, ablation switches, throughput."""
        cfg = self.cfg
        first, last = (self.evals[0], self.evals[-1]) if self.evals else (None, None)
        rollout_s = sum(h.get("time/rollout_s", 0.0) for h in self.history)
        budget = cfg.train.time_budget_s
        return {"iterations": self.iteration, "env_steps": self.env_steps, "resumed": resumed,
                "wall_s": round(self.wall_s, 1),
                "stopped_by_time_budget": bool(budget) and self.wall_s >= budget
                and self.iteration < cfg.train.iterations,
                "seed": cfg.train.seed, "backend": cfg.env.backend, "task_ids": list(cfg.env.task_ids),
                "ablations": {"prm": bool(self.prm is not None and cfg.reward.prm_weight > 0),
                              "curriculum": cfg.curriculum.enabled,
                              "critic_warmup_iters": cfg.ppo.critic_warmup_iters},
                "eval_first": first, "eval_last": last,
                "eval_gain": (last["eval/success_rate"] - first["eval/success_rate"]) if first else None,
                "train_success_first": self.history[0].get("rollout/success_rate") if self.history else None,
                "train_success_last": self.history[-1].get("rollout/success_rate") if self.history else None,
                "env_steps_per_s": self.env_steps / rollout_s if rollout_s else None,
                "skipped_updates": int(sum(h.get("ppo/skipped", 0.0) for h in self.history)),
                "config": to_dict(cfg)}
