"""``learner``: PPO on recorded trajectory bags, versioned adapters, curriculum task assignments.

The learner trains on every complete bag of ``graph.bag_dir`` in iteration order, each exactly
once (``nodes/learner_bags.py``): a ``TrajectoryBagInfo`` only says when to look, so a learner
that starts late, restarts or misses notices still takes every bag, and one already trained on
is skipped. Bags waiting when an update starts are trained on together (at most
``max_bags_per_update``; offline training takes one per update). From them it rebuilds the
episodes as turns (one observation, its chunk of K actions as K x 7 tokens, the env steps it
executed), keeps those the staleness rule admits (the oldest policy version of an episode at most
``max_policy_lag`` behind the learner's) and hands them to the core's :class:`Learner`, the same
one ``vla-rl train`` uses (core/rl/learner.py: curriculum, solved contexts, dynamic sampling,
PRM scoring of what the PRM node did not score, rewards, group or critic advantages, the PPO
update). It writes adapter version N+1 atomically and announces it on the latched
``policy_version`` topic with its chunk size. An update with no usable episode, one whose groups
were all uniform, or one the NaN guard skipped, keeps the version. A bag of another chunk size,
an unreadable bag, a notice naming a path outside ``graph.bag_dir``, and an episode whose turns
do not add up are named, counted rejections (``learner/rejected_*``).

Task assignments follow the learner's plan: each finished episode frees its environment for the
next (task, init state) of the plan, ``train.group_size`` episodes per context, so the episodes
of a bag come in groups as in ``vla-rl train`` (nodes/plan_dispatch.py). Streaming, a group can
straddle two bags and versions (GroupAssembler waits for it); with ``graph.lockstep`` each version
runs exactly one plan, answering the bridges' ``task_requests``, as ``vla-rl train`` does.

Its state is the core's checkpoint (core/rl/checkpoint.py, ``<train.output_dir>/checkpoints/
latest``: weights, optimizer, curriculum, solved contexts, random streams) plus the graph's own
part (bags done, keys of the episodes trained on, what the carry holds, the rest of the plan). It
is saved after each update, before the update is announced; it names the version it belongs to,
and a restarted learner resumes from that version (an adapter directory written after it by an
update that crashed before saving is ignored and later overwritten), so every finished episode is
trained on exactly once across crashes.

Under ``torchrun --nproc_per_node N -m vla_rl_ros.nodes.learner_node --ros-args ...`` rank 0 is
this node and the other ranks run only its PPO updates, each on a shard of every batch
(core/rl/learner_ranks.py): NCCL when the machine has CUDA, gloo otherwise.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from rclpy.node import Node
from std_msgs.msg import Header

from vla_rl_ros.core.config_io import to_dict
from vla_rl_ros.core.rl import checkpoint as ckpt
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import EpisodeResult, PolicyVersion, TaskAssignment, TrajectoryBagInfo
from vla_rl_ros.nodes import qos
from vla_rl_ros.nodes.adapters import latest_version, version_dir, weights_checksum
from vla_rl_ros.nodes.learner_bags import (EpisodeLedger, GroupAssembler, carry_reference, complete_bags,
                                           inside, restore_carry)
from vla_rl_ros.nodes.params import ExperimentParameters
from vla_rl_ros.nodes.rejections import Rejections
from vla_rl_ros.nodes.runner import run_node
from vla_rl_ros.nodes.task_assignments import TaskAssignments
from vla_rl_ros.nodes.trajectory_bags import read_episodes, rebuild_keyed

EXTRA_PARAMETERS = {
    "offline_bag_dir": ("", "Train on every iter_* bag of this directory at start-up, one update per bag "
                            "(offline training); '' = the bags of graph.bag_dir, as they are announced."),
    "score_missing_steps": (True, "When reward.prm_path is set, score with the learner's own copy of the "
                                  "PRM the episodes the prm node did not fully score (it runs beside the "
                                  "control loop and can fall behind); false = outcome-only reward for "
                                  "those."),
    "max_policy_lag": (4, "Train on an episode only if the oldest policy version among its turns is at "
                          "most this many versions behind the learner's (PPO's clipped ratio corrects a "
                          "few versions of lag); older ones are counted as stale."),
    "max_group_wait": (2, "Group estimators: updates an episode waits for the rest of its context's "
                          "group (train.group_size) before it is learned from with the part that came "
                          "(nodes/learner_bags.py GroupAssembler)."),
    "max_bags_per_update": (32, "Bags waiting when an update starts that it trains on together (a "
                                "backlog recorded under one version, e.g. after a restart, is one "
                                "on-policy update)."),
}


class LearnerNode(TaskAssignments, Node):
    """Consumes trajectory bags (TrajectoryBagInfo), produces PolicyVersion and TaskAssignment."""

    def __init__(self, policy=None, **kwargs) -> None:
        super().__init__("learner", **kwargs)
        self.params = ExperimentParameters(self, EXTRA_PARAMETERS)
        cfg = self.params.config
        from vla_rl_ros.core.rl.learner import Learner
        from vla_rl_ros.core.rl.ppo_trainer import PPOTrainer
        from vla_rl_ros.core.rl.train_loop import build_policy
        torch.manual_seed(cfg.train.seed)
        self.out = Path(cfg.train.output_dir).resolve()
        self.adapters_root = self.out / "adapters"
        self.bag_dir = Path(cfg.graph.bag_dir).resolve()
        self.policy = policy if policy is not None else build_policy(cfg)
        self.prm = None
        if self.params.extra_values["score_missing_steps"]:
            from vla_rl_ros.core.rl.train_loop import load_prm
            self.prm = load_prm(cfg, self.policy)  # None without reward.prm_path
        from vla_rl_ros.core.rl import distributed
        from vla_rl_ros.core.rl.learner_ranks import LeaderTrainer
        ranks = distributed.from_environment(_rank_device())  # None without torchrun
        trainer = (PPOTrainer(self.policy, cfg.ppo) if ranks is None
                   else LeaderTrainer(self.policy, cfg.ppo, cfg, ranks))
        self.learner = Learner(cfg, self.policy, trainer, self.prm)
        self.chunk_size = int(self.policy.chunk_size)
        arch = self.policy.arch
        self.token_range = (int(arch.action_vocab_start), int(arch.action_vocab_end))
        self.rejections = Rejections(self)
        from vla_rl_ros.nodes.plan_dispatch import PlanDispatcher
        self.dispatch = PlanDispatcher(self.learner.plan, cfg.graph.lockstep,
                                       stall_after_s=max(60.0, 2 * cfg.graph.action_timeout_s))
        self.env_steps = 0
        self.version, self.version_path, self.version_sha = 0, "", ""
        self.processed: list[str] = []
        self.refused: list[str] = []
        """Bags rejected whole (another chunk size, unreadable): never tried again."""
        self.ledger = EpisodeLedger()
        self.groups = (None if cfg.ppo.uses_critic else
                       GroupAssembler(cfg.train.group_size, int(self.params.extra_values["max_group_wait"])))
        self.carry: dict = {}
        self.history: list[dict] = []
        self._resume()

        guard = self.rejections.guard
        self.version_pub = self.create_publisher(PolicyVersion, topics.POLICY_VERSION, qos.LATCHED)
        self.assign_pub = self.create_publisher(TaskAssignment, topics.TASK_ASSIGNMENTS, qos.COMMAND)
        self.create_subscription(TrajectoryBagInfo, topics.TRAJECTORY_BAGS,
                                 guard("bag_notices", self._on_bag), qos.BAG_NOTICES)
        self.create_subscription(EpisodeResult, topics.EPISODE_RESULTS, guard("episode_results",
                                 self._on_episode), qos.BATCH)
        if cfg.graph.lockstep:
            self.create_subscription(TaskAssignment, topics.TASK_REQUESTS, guard("task_requests",
                                     self._on_task_request), qos.COMMAND)
            self.create_timer(1.0, guard("task_requests", self._check_stall))
        # Training runs from a one-shot timer, so notices that arrived together are one look at the
        # bag directory; a guarded failure leaves the bags for the next look.
        self.train_timer = self.create_timer(0.01, guard("updates", self._train_waiting))
        self._announce()
        self.get_logger().info(f"learner ready at policy version {self.version}")
        offline = self.params.extra_values["offline_bag_dir"]
        if offline:
            bags = complete_bags(offline)  # a bag still being written has no metadata.yaml yet
            self.get_logger().info(f"offline training on {len(bags)} bags of {offline}")
            self.train_timer.cancel()
            for bag in bags:
                self.train_on_bags([str(bag)])

    # ------------------------------------------------------------------ state
    @property
    def trainer(self):
        """The core learner's PPO trainer."""
        return self.learner.trainer

    @property
    def curriculum(self):
        """The core learner's task curriculum."""
        return self.learner.curriculum

    def _resume(self) -> None:
        state = ckpt.load_checkpoint(self.out)  # weights_only: no code runs
        found = latest_version(self.adapters_root)
        version = int(state["version"]) if state is not None else (found[0] if found else 0)
        if found is not None and found[0] > version:
            self.get_logger().warning(f"adapters {found[1]} are newer than the learner state (v{version}): "
                                      "an update crashed before its state was saved; they are ignored and "
                                      "will be overwritten")
        if state is None:
            if version:  # adapters without a state (e.g. a run made before states were kept): load them
                self._load_version(version)
            return
        ckpt.check_resume_config(state["config"], to_dict(self.params.config))
        ckpt.load_trainable_tensors(self.policy, state["trainable"])
        self.learner.load_state_dict(state)
        ckpt.restore_rng_state(state["rng"], {"update": self.learner.update_generator}, self.learner.rng)
        if version:
            path = version_dir(self.adapters_root, version)
            if not (path / "adapter.json").is_file() and not any(path.glob("*.safetensors")):
                self.policy.save_adapters(str(path), version)  # the checkpoint holds the same weights
            self.version, self.version_path, self.version_sha = version, str(path), weights_checksum(path)
        self.env_steps = int(state.get("env_steps", 0))
        self.processed = list(state["processed"])
        self.refused = list(state.get("refused", []))
        self.history = list(state.get("history", []))
        self.dispatch.load_state_dict(state)
        self.ledger.load_state_dict(state.get("episodes", {}))
        self.ledger.count("lost_waiting", len(state.get("waiting_for_group", [])))
        self.carry = restore_carry(state.get("carry", {}), self.chunk_size, self.params.config.env.image_size)
        self.get_logger().info(f"resumed from policy version {version} ({len(self.processed)} bags and "
                               f"{len(self.ledger.trained)} episodes already trained on, "
                               f"{len(self.carry.get('episodes', {}))} unfinished episodes carried)")

    def _load_version(self, version: int) -> None:
        from vla_rl_ros.core.config_io import ConfigError
        path = version_dir(self.adapters_root, version)
        try:
            self.policy.load_adapters(str(path))
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot resume the learner from {path}: {err}") from None
        self.version, self.version_path, self.version_sha = version, str(path), weights_checksum(path)

    def _save_state(self) -> None:
        """The core checkpoint (written atomically: a crash leaves the previous one) plus the graph's part."""
        state = {"iteration": self.version, "env_steps": self.env_steps, "wall_s": 0.0,
                 "config": to_dict(self.params.config), "trainable": ckpt.trainable_tensors(self.policy),
                 **self.learner.state_dict(),
                 "rng": ckpt.rng_state({"update": self.learner.update_generator}, self.learner.rng),
                 "history": self.history, "evals": [],
                 "version": self.version, "processed": self.processed, "refused": self.refused,
                 "episodes": self.ledger.state_dict(), "carry": carry_reference(self.carry, self.processed),
                 **self.dispatch.state_dict(),
                 "waiting_for_group": self.groups.keys() if self.groups is not None else []}
        ckpt.save_checkpoint(self.out, state)

    def _announce(self) -> None:
        self.version_pub.publish(PolicyVersion(
            header=Header(stamp=self.get_clock().now().to_msg()), version=self.version,
            adapter_path=self.version_path, sha256=self.version_sha, iteration=len(self.processed),
            chunk_size=self.chunk_size))

    # ------------------------------------------------------------------ learning
    def _on_bag(self, info: TrajectoryBagInfo) -> None:
        if info.chunk_size and info.chunk_size != self.chunk_size:
            self._reject_bag(info.bag_path, f"its actions come in chunks of {info.chunk_size}, this "
                                            f"policy's in chunks of {self.chunk_size}")
            return
        if not inside(info.bag_path, self.bag_dir):
            self.rejections("bag_notices", f"{info.bag_path!r} is not under graph.bag_dir {self.bag_dir}")
            return
        if str(Path(info.bag_path).resolve()) in self.processed:
            self.get_logger().info(f"bag {info.bag_path} already trained on; skipped")
            return
        self.train_timer.reset()

    def waiting_bags(self) -> list[str]:
        """Complete bags of graph.bag_dir not yet trained on nor refused, in iteration order."""
        done = set(self.processed) | set(self.refused)
        return [str(b) for b in complete_bags(self.bag_dir) if str(b) not in done]

    def _train_waiting(self) -> None:
        self.train_timer.cancel()
        waiting = self.waiting_bags()
        if waiting:
            self.train_on_bags(waiting[:max(1, int(self.params.extra_values["max_bags_per_update"]))])
        if len(waiting) > 1:
            self.train_timer.reset()  # the rest after the executor has had its turn

    def train_on_bag(self, bag_path: str, partial: bool = False) -> dict | None:
        """One PPO iteration on the finished episodes of ``bag_path`` (see :meth:`train_on_bags`)."""
        return self.train_on_bags([bag_path])

    def train_on_bags(self, bag_paths: list[str]) -> dict | None:
        """One PPO iteration on the finished episodes of ``bag_paths``; its metrics, None if none was read.

        Bags are done (never read again) once their episodes are trained on or left out with a
        count; the version changes only when PPO actually updated the weights.
        """
        cfg = self.params.config
        started = time.perf_counter()
        done = set(self.processed) | set(self.refused)
        todo = [str(Path(p).resolve()) for p in bag_paths]
        for path in [p for p in todo if p in done]:
            self.get_logger().info(f"bag {path} already trained on; skipped")
        todo = [p for p in todo if p not in done]
        if todo:
            self.get_logger().info(f"training on bags {todo} at policy version {self.version}")
        carry, finished, read = self.carry, [], []
        for path in todo:
            try:
                found, carry = read_episodes([path], carry, self.chunk_size, cfg.env.image_size)
            except Exception as err:  # ChunkSizeError, a corrupt file: refused, the learner goes on
                self._reject_bag(path, f"{type(err).__name__}: {err}")
                continue
            finished += found
            read.append(path)
        if not read:
            self._save_state()
            return None
        max_lag = int(self.params.extra_values["max_policy_lag"])
        chosen, left_out = self.ledger.select(finished, self.version, max_lag)
        keyed, rejected, problems = rebuild_keyed(chosen, self.token_range)
        for reason, count in {**left_out, **rejected}.items():
            self.ledger.count(reason, count)
        for problem in problems:
            self.get_logger().warning(f"bags {read}: not training on {problem}")
        if left_out:
            self.get_logger().warning(f"bags {read}: left out {left_out} at v{self.version} "
                                      f"(max_policy_lag {max_lag})")
        if self.groups is not None:
            keyed = self.groups.release(keyed)
        episodes = [episode for _, episode in keyed]
        metrics: dict = {"learner/bags": ",".join(read), "rollout/episodes": len(episodes),
                         "rollout/env_steps": sum(e.env_steps for e in episodes),
                         "rollout/decisions": sum(e.length for e in episodes),
                         "learner/orphans_evicted": int(carry.get("evicted", 0)),
                         "learner/waiting_for_group": len(self.groups) if self.groups is not None else 0,
                         **{f"learner/rejected_episodes_{k}": v for k, v in self.ledger.counts.items()}}
        if episodes:
            try:
                metrics.update(self._update(episodes))
            except Exception as err:  # data the policy cannot score: the bags are done, the learner lives
                self.get_logger().error(f"bags {read}: PPO update refused the data: "
                                        f"{type(err).__name__}: {err}")
                metrics["ppo/skipped"] = 1.0
        else:
            waiting = f" ({len(self.groups)} wait for their groups)" if self.groups else ""
            self.get_logger().warning(f"bags {read}: no usable episode{waiting}; nothing to learn yet")
        self.carry = carry
        self.processed += read
        consumed = bool(episodes) and not metrics.get("ppo/skipped")
        if consumed:  # learned from, even when every group was uniform (no gradient, no new version)
            self.ledger.add(key for key, _ in keyed)
        if consumed and not metrics.get("ppo/no_update"):
            self.version += 1
            path = version_dir(self.adapters_root, self.version)
            self.version_sha = self.policy.save_adapters(str(path), self.version)
            self.version_path = str(path)
            metrics.update({"learner/version": self.version, "time/update_s": time.perf_counter() - started})
            self.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))})
            self._save_state()
            self._announce()
            self.get_logger().info(f"policy version {self.version} from {len(episodes)} episodes (success "
                                   f"{metrics['rollout/success_rate']:.2f}) of bags {read} -> {path}")
        else:
            if episodes and not consumed:
                self.ledger.count("skipped_update", len(episodes))
            self._save_state()
            if consumed:
                self.get_logger().info(f"bags {read}: every group of {len(episodes)} episodes was uniform "
                                       f"(no comparison, no gradient); the policy stays at v{self.version}")
            elif episodes:
                why = metrics.get("ppo/skip_reason", "error")
                self.get_logger().warning(f"bags {read}: update skipped ({why}); the policy stays at "
                                          f"v{self.version}")
        self._assign(self.dispatch.trained(len(self.processed)))  # lockstep: the next plan goes out
        return metrics

    def _update(self, episodes) -> dict:
        """The core learner's update on ``episodes``; the metrics."""
        scored = [e.progress is not None for e in episodes]
        metrics = self.learner.learn(episodes)
        self.env_steps += metrics.pop("rollout/iteration_env_steps")
        metrics.update({"rollout/env_steps": self.env_steps,
                        "rollout/prm_node_scored_fraction": float(np.mean(scored))})
        return metrics

    @property
    def rejected_bags(self) -> int:
        """Bags refused whole so far."""
        return self.rejections.counts.get("bags", 0)

    def _reject_bag(self, bag_path: str, why: str) -> None:
        path = str(Path(bag_path).resolve())
        if path not in self.refused and inside(path, self.bag_dir):
            self.refused.append(path)  # never tried again (a bag outside graph.bag_dir never is)
        count = self.rejections("bags", f"{bag_path}: {why}")
        self.get_logger().error(f"bag {bag_path} rejected ({count} so far, learner/rejected_bags): {why}")


def _rank_device() -> str:
    # Every rank must pick the backend before rank 0 has read the parameters.
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(args=None) -> int:
    """Console entry point ``vla-rl-learner``; under torchrun, ranks > 0 serve rank 0's updates."""
    from vla_rl_ros.core.rl import distributed
    from vla_rl_ros.core.rl.learner_ranks import serve_updates, stop_workers
    ranks = distributed.from_environment(_rank_device())
    if ranks is not None and not ranks.is_main:
        try:
            return serve_updates(ranks)
        finally:
            distributed.shutdown()
    try:
        return run_node(LearnerNode, args)
    finally:
        if ranks is not None:
            stop_workers(ranks)
            # Leave the group before the interpreter exits: gloo's threads torn down at exit
            # aborted rank 0 ("terminate called without an active exception") now and then.
            distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
