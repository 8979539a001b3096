"""``prm``: the process reward model scores every turn of every bridge and publishes step rewards.

A turn (one decision: an observation and the chunk of K actions that answered it, as K x 7
tokens) is scored once both its ObservationBatch and its ActionBatch have arrived (the PRM judges
progress after the chunk). ``progress`` is the model's output in (0, 1); ``rewards`` is
``reward.prm_weight`` times the progress gained since the previous turn of the same episode
(potential-based shaping, as the in-process trainer computes it). An ActionBatch with chunks of
another size than the PRM's, with tokens outside its action vocabulary (a token id of 1e9) or with
NaN log-probs, is a logged, counted rejection (``rejected_actions``), and so is a malformed
ObservationBatch (``rejected_observations``). Turns are keyed by bridge run (``incarnation``),
which the StepRewardBatch echoes. The node is not required by the graph: if it dies, the learner
falls back to outcome-only rewards for the turns it missed.
"""
from __future__ import annotations

import sys
from collections import OrderedDict

import numpy as np
from rclpy.node import Node
from std_msgs.msg import Header

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.envs.base import PROPRIO_DIM
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, ObservationBatch, StepRewardBatch
from vla_rl_ros.nodes import convert, qos
from vla_rl_ros.nodes.params import ExperimentParameters
from vla_rl_ros.nodes.rejections import Rejections
from vla_rl_ros.nodes.runner import run_node

MAX_UNPAIRED = 64
"""Observation batches kept while waiting for their actions (older ones are dropped)."""
MAX_TRACKED_ENVS = 4096
"""Environment slots (bridge run, env) whose last progress is kept for shaping (oldest dropped)."""


def load_reward_model(cfg):
    """The PRM of ``reward.prm_path`` on the policy's backbone architecture."""
    from vla_rl_ros.core.rl.prm import ProcessRewardModel
    if not cfg.reward.prm_path:
        raise ConfigError("reward.prm_path='': the prm node needs a trained process reward model")
    return ProcessRewardModel.load(cfg.reward.prm_path, cfg.policy)


class PrmNode(Node):
    """(ObservationBatch, ActionBatch) pairs -> StepRewardBatch."""

    def __init__(self, prm=None, **kwargs) -> None:
        super().__init__("prm", **kwargs)
        self.params = ExperimentParameters(self)
        self.prm = prm if prm is not None else load_reward_model(self.params.config)
        self.unpaired: OrderedDict = OrderedDict()
        self.last_progress: OrderedDict = OrderedDict()
        arch = self.prm.backbone.arch
        self.chunk_size = int(arch.chunk_size)
        self.token_range = (int(arch.action_vocab_start), int(arch.action_vocab_end))
        self.rejected_actions = self.rejected_observations = 0
        self.rejections = Rejections(self)
        guard = self.rejections.guard
        self.reward_pub = self.create_publisher(StepRewardBatch, topics.STEP_REWARDS, qos.BATCH)
        self.create_subscription(ObservationBatch, topics.OBSERVATIONS,
                                 guard("observations", self._on_observations), qos.BATCH)
        self.create_subscription(ActionBatch, topics.ACTIONS, guard("actions", self._on_actions), qos.BATCH)
        self.get_logger().info(f"scoring turns (chunks of {self.chunk_size}) with "
                               f"{self.params.config.reward.prm_path or 'the given PRM'}")

    def _on_observations(self, msg: ObservationBatch) -> None:
        cfg = self.params.config
        try:
            reads_state = self.prm.backbone.reads_state
            batch = convert.observations_from_msg(msg, cfg.env.image_size, set(cfg.env.task_ids),
                                                  min_proprio_dim=PROPRIO_DIM if reads_state else 0)
        except convert.MessageError as err:
            self.rejected_observations += 1
            self.get_logger().warning(f"rejected ObservationBatch from {msg.bridge_id!r} "
                                      f"({self.rejected_observations} so far): {err}")
            return
        self.unpaired[(batch.bridge_id, batch.incarnation, batch.step_seq)] = batch
        while len(self.unpaired) > MAX_UNPAIRED:
            self.unpaired.popitem(last=False)

    def _on_actions(self, msg: ActionBatch) -> None:
        batch = self.unpaired.pop((msg.bridge_id, msg.incarnation, msg.step_seq), None)
        if batch is None:
            return  # a duplicate reply, or its observations were never seen
        try:
            actions = convert.actions_from_msg(msg, batch.env_ids, self.chunk_size, self.token_range)
        except convert.MessageError as err:
            self.rejected_actions += 1
            self.get_logger().warning(f"rejected ActionBatch step {msg.step_seq} "
                                      f"({self.rejected_actions} so far): {err}")
            return
        proprio = batch.proprio if self.prm.backbone.reads_state else None
        scores = self.prm.score_batched(batch.images, batch.instructions, actions.tokens, proprio)
        progress = np.asarray(scores, np.float64)
        weight = self.params.config.reward.prm_weight
        rewards = []
        for env_id, episode_id, value in zip(batch.env_ids, batch.episode_ids, progress):
            key = (batch.bridge_id, batch.incarnation, env_id)
            previous_episode, previous = self.last_progress.get(key, (episode_id, 0.0))
            gained = value - (previous if previous_episode == episode_id else 0.0)
            self.last_progress[key] = (episode_id, float(value))
            self.last_progress.move_to_end(key)
            rewards.append(weight * gained)
        while len(self.last_progress) > MAX_TRACKED_ENVS:
            self.last_progress.popitem(last=False)
        self.reward_pub.publish(StepRewardBatch(
            header=Header(stamp=self.get_clock().now().to_msg(), frame_id=batch.bridge_id),
            bridge_id=batch.bridge_id, incarnation=batch.incarnation, step_seq=batch.step_seq,
            env_ids=batch.env_ids, prm_version=0,
            progress=progress.astype(np.float32), rewards=np.asarray(rewards, np.float32)))


def main(args=None) -> int:
    """Console entry point ``vla-rl-prm``."""
    return run_node(PrmNode, args)


if __name__ == "__main__":
    sys.exit(main())
