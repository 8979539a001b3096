"""``vla-rl train`` in-process: rollouts, PRM scoring, PPO, held-out evaluation, checkpoints.

One iteration = draw contexts (task by the curriculum, then a training init state or fresh
layout, skipping contexts solved every recent time), run each ``train.group_size`` times with
batched decoding of action chunks, score the episodes with the PRM, compute advantages (group
leave-one-out / GRPO, or critic + GAE), run PPO, update the curriculum, write a checkpoint.
Held-out evaluation (init states and layouts never trained on) runs every
``train.eval_every`` iterations and at the end.

Under ``torchrun --nproc_per_node N`` the run is data-parallel (core/rl/distributed.py): every
rank draws the same plan, runs its own ``env.num_envs`` environments on its share of whole
groups, and trains on what it collected; the update is the one-process update of all shares
together. Only rank 0 writes the checkpoint, logs and results. A checkpoint resumes with any
number of ranks: with the same number the continuation is exact; with another, the ranks'
sampling streams (rank 0's excepted) are reseeded, so the run continues from the same weights,
optimizer, curriculum and plan but not bit for bit as it would have.
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
from vla_rl_ros.core.rl import distributed
from vla_rl_ros.core.envs.splits import held_out_contexts
from vla_rl_ros.core.rl.distributed import RANK_SEED_STRIDE, Ranks
from vla_rl_ros.core.rl.learner import Learner
from vla_rl_ros.core.rl.ppo_trainer import PPOTrainer
from vla_rl_ros.core.rl.results import wilson_interval, write_results
from vla_rl_ros.core.rl.rollout import collect_episodes, policy_decoder

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


class TrainingRun:
    """A resumable training run in ``cfg.train.output_dir``; call :meth:`run`."""

    def __init__(self, cfg: Any, policy: Any = None, env: Any = None, prm: Any = None,
                 progress_bar: bool = True, tensorboard: bool = True,
                 ranks: Ranks | None | str = "torchrun") -> None:
        """Build (or take) the policy, environment and PRM; nothing runs until :meth:`run`.

        ``ranks``: the data-parallel job; ``"torchrun"`` joins the one torchrun started this
        process in (None without torchrun or with one rank: the single-process run).
        """
        self.cfg = cfg
        self.ranks = distributed.from_environment(cfg.policy.device) if ranks == "torchrun" else ranks
        self.main = self.ranks is None or self.ranks.is_main
        """Rank 0 (or the only process): writes checkpoints, logs and results."""
        rank = self.ranks.rank if self.ranks is not None else 0
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
        self.learner = Learner(cfg, self.policy, PPOTrainer(self.policy, cfg.ppo, self.ranks), self.prm,
                               gather=None if self.ranks is None else self._everyone)
        # Every rank samples its own episodes; all ranks share the plan rng and the minibatch order.
        self.generators = {"decode": torch.Generator().manual_seed(seed + 1 + rank * RANK_SEED_STRIDE),
                           "update": self.learner.update_generator}
        self.iteration = 0
        self.env_steps = 0
        self.wall_s = 0.0
        """Wall time spent in :meth:`run` by this run so far, earlier (resumed) invocations included."""
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`resume` needs for an exact continuation.

        Data-parallel: a collective (every rank calls it); it adds each rank's sampling stream.
        """
        state = {"iteration": self.iteration, "env_steps": self.env_steps, "wall_s": self.wall_s,
                 "config": to_dict(self.cfg),
                 "trainable": ckpt.trainable_tensors(self.policy), **self.learner.state_dict(),
                 "rng": ckpt.rng_state(self.generators, self.learner.rng),
                 "history": self.history, "evals": self.evals}
        if self.ranks is not None:
            state["world_size"] = self.ranks.world_size
            state["rank_decode"] = self.ranks.all_gather_objects(self.generators["decode"].get_state(),
                                                                 "sampling streams")
        return state

    def resume(self) -> bool:
        """Load the latest checkpoint of the output dir if there is one (config must match).

        Data-parallel: rank 0 reads it and sends it to the others (no shared disk needed).
        """
        state = ckpt.load_checkpoint(self.out) if self.main else None
        if self.ranks is not None:
            state = self.ranks.broadcast_object(state, "checkpoint")
        if state is None:
            return False
        ckpt.check_resume_config(state["config"], to_dict(self.cfg))
        ckpt.load_trainable_tensors(self.policy, state["trainable"])
        self.learner.load_state_dict(state)
        ckpt.restore_rng_state(state["rng"], self.generators, self.learner.rng)
        self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])
        if self.ranks is not None and self.ranks.rank > 0:
            streams = state.get("rank_decode") or []
            if len(streams) == self.ranks.world_size:  # same world size: each rank's own stream
                self.generators["decode"].set_state(streams[self.ranks.rank])
            else:  # another world size: a fresh stream of this rank's own for this iteration
                fresh = np.random.SeedSequence([self.cfg.train.seed, self.ranks.rank, self.iteration])
                self.generators["decode"].manual_seed(int(fresh.generate_state(1)[0]))
        self.wall_s = float(state.get("wall_s", 0.0))
        self.history, self.evals = list(state["history"]), list(state["evals"])
        return True

    # ------------------------------------------------------------------------ pieces
    @property
    def trainer(self) -> PPOTrainer:
        """The learner's PPO trainer."""
        return self.learner.trainer

    @property
    def curriculum(self) -> Any:
        """The learner's task curriculum."""
        return self.learner.curriculum

    def rollout_plan(self) -> list[tuple[int, int]]:
        """This iteration's assignments: ``episodes_per_iter`` episodes, ``group_size`` per context."""
        return self.learner.plan()

    def my_share(self, plan: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The part of the iteration's plan this rank collects (all of it in one process).

        Each rank runs its own environments on contiguous whole groups instead of rank 0
        collecting and scattering: the rollouts (simulator and decoding) are most of an
        iteration and parallelise this way, the images stay on the rank that made them and trains
        on them, and group advantages and dynamic sampling need no exchange. Only small
        per-episode summaries travel (curriculum, solved contexts, metrics).
        """
        if self.ranks is None:
            return plan
        size = min(self.cfg.train.group_size, self.cfg.train.episodes_per_iter)
        return distributed.group_shares(plan, size, self.ranks.world_size)[self.ranks.rank]

    def _everyone(self, items: list[Any], what: str) -> list[Any]:
        """Every rank's ``items`` concatenated in rank order (``items`` itself in one process)."""
        if self.ranks is None:
            return items
        return [item for part in self.ranks.all_gather_objects(items, what) for item in part]

    def train_iteration(self) -> dict[str, Any]:
        """Rollouts of this rank's share of the plan, then the learner's update; returns metrics."""
        start = time.perf_counter()
        decode = policy_decoder(self.policy, generator=self.generators["decode"])
        episodes = collect_episodes(self.env, decode, self.my_share(self.rollout_plan()))
        rollout_s = time.perf_counter() - start
        if self.ranks is not None:
            rollout_s = max(self._everyone([rollout_s], "rollout times"))  # the ranks collect side by side
        metrics = self.learner.learn(episodes)
        steps = metrics.pop("rollout/iteration_env_steps")
        self.env_steps += steps
        finished = metrics["rollout/episodes"] + metrics["rollout/aborted"]
        metrics.update({"rollout/env_steps": self.env_steps, "time/rollout_s": rollout_s,
                        "rollout/env_steps_per_s": steps / max(rollout_s, 1e-9),
                        "rollout/episodes_per_hour": 3600 * finished / max(rollout_s, 1e-9)})
        return metrics

    def evaluate(self) -> dict[str, Any]:
        """Held-out evaluation: overall and per-task success with a 95 % interval.

        Greedy, or sampled at ``policy.temperature`` with ``train.eval_sample``; a sampled one
        draws from its own stream, seeded the same at every evaluation, so that it neither moves the
        rollouts' random state (exact resume) nor gives the start and the end different luck.
        Data-parallel: each rank runs a contiguous share of the held-out episodes.
        """
        cfg = self.cfg
        assignments = eval_assignments(cfg.env.task_ids, cfg.train.eval_episodes,
                                       cfg.env.num_train_init_states)
        sample = cfg.train.eval_sample
        rank = 0
        if self.ranks is not None:
            rank = self.ranks.rank
            bounds = distributed.shard_bounds(len(assignments), self.ranks.world_size)
            assignments = assignments[bounds[rank]:bounds[rank + 1]]
        seed = cfg.train.seed + EVAL_SEED_OFFSET + rank * RANK_SEED_STRIDE
        decode = policy_decoder(self.policy, greedy=not sample, generator=torch.Generator().manual_seed(seed))
        episodes = collect_episodes(self.env, decode, assignments)
        outcomes = self._everyone([(int(e.task_id), bool(e.success)) for e in episodes if not e.aborted],
                                  "evaluation results")
        wins = sum(success for _, success in outcomes)
        low, high = wilson_interval(wins, len(outcomes))
        result: dict[str, Any] = {"iteration": self.iteration, "env_steps": self.env_steps,
                                  "eval/success_rate": wins / max(len(outcomes), 1), "eval/ci_low": low,
                                  "eval/ci_high": high, "eval/episodes": len(outcomes),
                                  "eval/protocol": eval_protocol(cfg)}
        for task in cfg.env.task_ids:
            mine = [success for task_id, success in outcomes if task_id == task]
            result[f"eval/success_task_{task}"] = float(np.mean(mine)) if mine else float("nan")
        return result

    # ------------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Train up to ``train.iterations`` (resuming if a checkpoint exists); returns the summary."""
        cfg = self.cfg
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.resume()
        self.trainer.sync_ranks()  # data-parallel: every rank starts from rank 0's weights
        if self.main:
            (self.out / "config.yaml").write_text(yaml.safe_dump({"/**": {"ros__parameters": to_dict(cfg)}},
                                                                 sort_keys=False))
        if self.env is None:
            self.env = make_env(cfg.env)
        writer = self._writer() if self.main else None
        bar = None
        if self.progress_bar and self.main:
            from tqdm import tqdm
            bar = tqdm(total=cfg.train.iterations, initial=min(self.iteration, cfg.train.iterations),
                       desc="vla-rl train", unit="it")
        clock = time.perf_counter()
        wall_before = self.wall_s

        def out_of_time() -> bool:
            self.wall_s = wall_before + time.perf_counter() - clock
            late = bool(cfg.train.time_budget_s) and self.wall_s >= cfg.train.time_budget_s
            return self.ranks.any(late, "time budget") if self.ranks is not None else late
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
                self._save_checkpoint()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(success=f"{metrics.get('rollout/success_rate', float('nan')):.2f}",
                                    kl=f"{metrics.get('ppo/approx_kl', float('nan')):.3f}")
            if cfg.train.eval_every and (not self.evals or self.evals[-1]["iteration"] != self.iteration):
                self._record_eval(writer)
                self._save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        summary = self.summary(resumed)
        if self.main:
            write_results(self.out, self.history, self.evals, summary)
        return summary

    def _save_checkpoint(self) -> None:
        state = self.state_dict()  # data-parallel: a collective, so every rank builds it
        if self.main:
            ckpt.save_checkpoint(self.out, state, self.policy)

    def _record_eval(self, writer: Any) -> None:
        result = self.evaluate()
        self.evals.append(result)
        self._log(writer, result, step=self.iteration)
        if self.main:
            write_results(self.out, self.history, self.evals, self.summary(False))

    def _writer(self) -> Any:
        if not self.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(self.out / "tensorboard"), purge_step=self.iteration or None)

    def _log(self, writer: Any, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self.main:
            return
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
                "ranks": self.ranks.world_size if self.ranks is not None else 1,
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
