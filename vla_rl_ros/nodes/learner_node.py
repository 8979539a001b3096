"""``learner``: PPO on recorded trajectory bags, versioned adapters, curriculum task assignments.

For each announced bag (or every bag of ``offline_bag_dir`` at start-up, for offline training)
the learner rebuilds the episodes as turns (one observation, its chunk of K actions as K x 7
tokens, the env steps it executed), computes rewards (success plus PRM progress where every turn
was scored), runs one PPO iteration of the core with the critic estimator (value head, GAE,
critic warm-up; set here whatever ``ppo.advantage_estimator`` says, since the node has no groups
of rollouts per context), writes adapter version N+1 atomically and announces it on the latched
``policy_version`` topic with its chunk size. A bag of another chunk size, and an episode whose
turns do not add up, are named, counted rejections (``learner/rejected_*``). Its state
(optimizer, curriculum, processed bags) is saved after each update, so a restarted learner
resumes from its last version and never trains twice on a bag. Finished episodes also feed
the curriculum, whose next pick for that environment goes back to the bridge.

Under ``torchrun --nproc_per_node N -m vla_rl_ros.nodes.learner_node --ros-args ...`` rank 0 is
this node and the other ranks run only its PPO updates, each on a shard of every batch
(core/rl/learner_ranks.py): NCCL when the machine has CUDA, gloo otherwise.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rclpy.node import Node
from std_msgs.msg import Header

from vla_rl_ros.core.rl.checkpoint import load_state_file, plain_state
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import EpisodeResult, PolicyVersion, TaskAssignment, TrajectoryBagInfo
from vla_rl_ros.nodes import qos
from vla_rl_ros.nodes.adapters import latest_version, version_dir, weights_checksum
from vla_rl_ros.nodes.params import ExperimentParameters
from vla_rl_ros.nodes.runner import run_node
from vla_rl_ros.nodes.trajectory_bags import read_episodes, rebuild_episodes

EXTRA_PARAMETERS = {
    "offline_bag_dir": ("", "Train on every iter_* bag of this directory at start-up (offline training); "
                            "'' = only bags announced on trajectory_bags."),
    "score_missing_steps": (True, "When reward.prm_path is set, score with the learner's own copy of the "
                                  "PRM the episodes the prm node did not fully score (it runs beside the "
                                  "control loop and can fall behind); false = outcome-only reward for "
                                  "those."),
    "max_policy_lag": (0, "Train on an announced bag only if its policy version is at most this many "
                          "versions behind the learner's (0 = strictly on-policy)."),
}
STATE_FILE = "learner_state.pt"


class LearnerNode(Node):
    """Consumes TrajectoryBagInfo, produces PolicyVersion and TaskAssignment."""

    def __init__(self, policy=None, **kwargs) -> None:
        super().__init__("learner", **kwargs)
        self.params = ExperimentParameters(self, EXTRA_PARAMETERS)
        cfg = self.params.config
        from vla_rl_ros.core.rl.curriculum import TaskCurriculum
        from vla_rl_ros.core.rl.ppo_trainer import PPOTrainer
        from vla_rl_ros.core.rl.train_loop import build_policy
        torch.manual_seed(cfg.train.seed)
        self.out = Path(cfg.train.output_dir).resolve()
        self.adapters_root = self.out / "adapters"
        self.policy = policy if policy is not None else build_policy(cfg)
        self.prm = None
        if self.params.extra_values["score_missing_steps"]:
            from vla_rl_ros.core.rl.train_loop import load_prm
            self.prm = load_prm(cfg, self.policy)  # None without reward.prm_path
        if cfg.ppo.advantage_estimator != "critic":
            self.get_logger().info(f"ppo.advantage_estimator={cfg.ppo.advantage_estimator!r} is for the "
                                   "in-process loop's groups; the learner node uses 'critic'")
        ppo = dataclasses.replace(cfg.ppo, advantage_estimator="critic")
        from vla_rl_ros.core.rl import distributed
        from vla_rl_ros.core.rl.learner_ranks import LeaderTrainer
        ranks = distributed.from_environment(_rank_device())  # None without torchrun
        self.trainer = (PPOTrainer(self.policy, ppo) if ranks is None
                        else LeaderTrainer(self.policy, ppo, cfg, ranks))
        self.chunk_size = int(self.policy.chunk_size)
        arch = self.policy.arch
        self.token_range = (int(arch.action_vocab_start), int(arch.action_vocab_end))
        self.rejected_bags = 0
        self.rejected_episodes: dict[str, int] = {}
        cur = cfg.curriculum
        self.curriculum = TaskCurriculum(cfg.env.task_ids, enabled=cur.enabled,
                                         target_success=cur.target_success, temperature=cur.temperature,
                                         floor=cur.floor, ema=cur.ema, seed=cfg.train.seed)
        self.rng = np.random.default_rng(cfg.train.seed + 3)
        self.generator = torch.Generator().manual_seed(cfg.train.seed + 2)
        self.version, self.version_path, self.version_sha = 0, "", ""
        self.processed: list[str] = []
        self.carry: dict = {}
        self.history: list[dict] = []
        self._resume()

        self.version_pub = self.create_publisher(PolicyVersion, topics.POLICY_VERSION, qos.LATCHED)
        self.assign_pub = self.create_publisher(TaskAssignment, topics.TASK_ASSIGNMENTS, qos.COMMAND)
        self.create_subscription(TrajectoryBagInfo, topics.TRAJECTORY_BAGS, self._on_bag,
                                 qos.BAG_NOTICES)
        self.create_subscription(EpisodeResult, topics.EPISODE_RESULTS, self._on_episode, qos.BATCH)
        self._announce()
        self.get_logger().info(f"learner ready at policy version {self.version}")
        offline = self.params.extra_values["offline_bag_dir"]
        if offline:
            complete = [b for b in sorted(Path(offline).glob("iter_*")) if (b / "metadata.yaml").is_file()]
            self.get_logger().info(f"offline training on {len(complete)} bags of {offline}")
            for bag in complete:  # a bag still being written has no metadata.yaml yet
                self.train_on_bag(str(bag.resolve()))

    # ------------------------------------------------------------------ state
    def _resume(self) -> None:
        found = latest_version(self.adapters_root)
        state_path = self.out / STATE_FILE
        if found is None:
            return
        version, path = found
        self.policy.load_adapters(str(path))
        self.version, self.version_path, self.version_sha = version, str(path), weights_checksum(path)
        if state_path.is_file():
            state = load_state_file(state_path)  # weights_only: a crafted file cannot run code
            if int(state["version"]) == version:
                self.trainer.load_state_dict(state["trainer"])
                self.curriculum.load_state_dict(state["curriculum"])
                self.processed = list(state["processed"])
                self.history = list(state.get("history", []))
        self.get_logger().info(f"resumed from policy version {version} ({path}); "
                               f"{len(self.processed)} bags already trained on")

    def _save_state(self) -> None:
        state = {"version": self.version, "trainer": self.trainer.state_dict(),
                 "curriculum": self.curriculum.state_dict(), "processed": self.processed,
                 "history": self.history}
        tmp = self.out / (STATE_FILE + ".tmp")
        torch.save(plain_state(state), tmp)
        tmp.replace(self.out / STATE_FILE)  # atomic: a crash leaves the previous state intact

    def _announce(self) -> None:
        self.version_pub.publish(PolicyVersion(
            header=Header(stamp=self.get_clock().now().to_msg()), version=self.version,
            adapter_path=self.version_path, sha256=self.version_sha, iteration=len(self.processed),
            chunk_size=self.chunk_size))

    # ------------------------------------------------------------------ curriculum
    def _on_episode(self, msg: EpisodeResult) -> None:
        if msg.aborted or msg.task_id not in self.curriculum.task_ids:
            return
        self.curriculum.update(msg.task_id, msg.success)
        cfg = self.params.config.env
        task = self.curriculum.sample(1)[0]
        init_state = int(self.rng.integers(cfg.num_train_init_states))
        self.assign_pub.publish(TaskAssignment(
            header=Header(stamp=self.get_clock().now().to_msg()), bridge_id=msg.bridge_id,
            env_ids=[msg.env_id], task_ids=[task], init_state_ids=[init_state]))

    # ------------------------------------------------------------------ learning
    def _on_bag(self, info: TrajectoryBagInfo) -> None:
        if info.chunk_size and info.chunk_size != self.chunk_size:
            self._reject_bag(info.bag_path, f"its actions come in chunks of {info.chunk_size}, this "
                                            f"policy's in chunks of {self.chunk_size}")
            return
        lag = self.version - int(info.policy_version)
        if lag > int(self.params.extra_values["max_policy_lag"]):
            # Rollouts outpaced learning: PPO wants data from the policy it updates, so a bag
            # recorded under an older version is kept on disk but not trained on.
            self.get_logger().info(f"bag {info.bag_path} is from policy v{info.policy_version}, "
                                   f"{lag} versions behind v{self.version}: not trained on")
            return
        self.train_on_bag(info.bag_path, partial=info.partial)

    def train_on_bag(self, bag_path: str, partial: bool = False) -> dict | None:
        """One PPO iteration on the finished episodes of ``bag_path``; its metrics, None if skipped."""
        from vla_rl_ros.core.policy.policy import ChunkSizeError
        from vla_rl_ros.core.rl.buffer import build_batch, episode_rewards
        from vla_rl_ros.core.rl.rollout import EmptyRolloutError
        if bag_path in self.processed:
            self.get_logger().info(f"bag {bag_path} already trained on; skipped")
            return None
        cfg = self.params.config
        started = time.perf_counter()
        try:
            finished, self.carry = read_episodes([bag_path], self.carry, self.chunk_size)
        except ChunkSizeError as err:
            self._reject_bag(bag_path, str(err))
            return None
        except Exception as err:  # a corrupt bag must not kill the learner
            self.get_logger().error(f"cannot read bag {bag_path}: {err}")
            return None
        episodes, rejected, problems = rebuild_episodes(finished, self.token_range)
        for reason, count in rejected.items():
            self.rejected_episodes[reason] = self.rejected_episodes.get(reason, 0) + count
        for problem in problems:
            self.get_logger().warning(f"bag {bag_path}: not training on {problem}")
        metrics: dict = {"learner/bag": bag_path, "learner/partial": bool(partial),
                         "rollout/episodes": len(episodes),
                         "rollout/env_steps": sum(e.env_steps for e in episodes),
                         "rollout/decisions": sum(e.length for e in episodes),
                         **{f"learner/rejected_episodes_{k}": v for k, v in self.rejected_episodes.items()}}
        self.processed.append(bag_path)
        if not episodes:
            self.get_logger().warning(f"bag {bag_path}: no usable episode; nothing to learn")
            self._save_state()
            return metrics
        self._bootstrap(episodes)
        scored = [e.progress is not None for e in episodes]
        if self.prm is not None and not all(scored):
            self.prm.score_episodes([e for e in episodes if e.progress is None])
        rewards = [episode_rewards(e, cfg.reward.success_weight,
                                   cfg.reward.prm_weight if e.progress is not None else 0.0)
                   for e in episodes]
        try:
            batch = build_batch(episodes, rewards, cfg.ppo.gamma, cfg.ppo.gae_lambda)
        except EmptyRolloutError as err:
            self.get_logger().warning(f"bag {bag_path}: {err}")
            return metrics
        try:
            metrics.update(self.trainer.update(batch, self.generator))
        except ValueError as err:  # data the policy cannot score: skip the bag, keep the learner alive
            self.get_logger().error(f"bag {bag_path}: PPO update refused the data: {err}")
            self._save_state()
            return metrics
        self.version += 1
        path = version_dir(self.adapters_root, self.version)
        self.version_sha = self.policy.save_adapters(str(path), self.version)
        self.version_path = str(path)
        metrics.update({"rollout/success_rate": float(np.mean([e.success for e in episodes])),
                        "rollout/prm_node_scored_fraction": float(np.mean(scored)),
                        "learner/version": self.version, "time/update_s": time.perf_counter() - started})
        self.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))})
        self._save_state()
        self._announce()
        self.get_logger().info(f"policy version {self.version} from {len(episodes)} episodes "
                               f"(success {metrics['rollout/success_rate']:.2f}) -> {path}")
        return metrics

    def _reject_bag(self, bag_path: str, why: str) -> None:
        self.rejected_bags += 1
        self.get_logger().error(f"bag {bag_path} rejected ({self.rejected_bags} so far, "
                                f"learner/rejected_bags): {why}")

    def _bootstrap(self, episodes) -> None:
        """Critic value of the terminal observation of time-limit truncations (bootstrap, not termination)."""
        truncated = [e for e in episodes if e.truncated]
        if truncated:
            out = self.policy.decode(np.stack([e.images[-1] for e in truncated]),
                                     [e.instruction for e in truncated], greedy=True,
                                     proprio=np.stack([e.proprio[-1] for e in truncated]))
            for episode, value in zip(truncated, torch.as_tensor(out.values).reshape(-1).tolist()):
                episode.final_value = float(value)


def _rank_device() -> str:
    # Every rank must pick the backend before rank 0 has read the parameters.
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(args=None) -> int:
    """Console entry point ``vla-rl-learner``; under torchrun, ranks > 0 serve rank 0's updates."""
    from vla_rl_ros.core.rl import distributed
    from vla_rl_ros.core.rl.learner_ranks import serve_updates, stop_workers
    ranks = distributed.from_environment(_rank_device())
    if ranks is not None and not ranks.is_main:
        return serve_updates(ranks)
    try:
        return run_node(LearnerNode, args)
    finally:
        if ranks is not None:
            stop_workers(ranks)


if __name__ == "__main__":
    sys.exit(main())
