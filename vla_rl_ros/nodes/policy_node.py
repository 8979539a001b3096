"""``policy``: batched decoding of every pending ObservationBatch, from one or many bridges.

Batches that arrive while the model is busy wait in a per-bridge slot; the next decode takes
all of them in one batched call and replies to each bridge with its own ActionBatch: one chunk
of ``policy.chunk_size`` actions per observation. A new PolicyVersion is only noted when it
arrives; adapters are swapped between two decodes, never during one. A checksum mismatch, an
adapter directory that does not verify (metadata that is not a JSON object of this format, weights
that do not parse as safetensors or hold NaN/inf), or a version made for chunks of another size
keeps the current weights with a logged reason and is counted (``refused_versions``); the node
keeps serving. Replies echo the batch's bridge run (``incarnation``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from rclpy.node import Node
from std_msgs.msg import Header

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.envs.base import PROPRIO_DIM
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, ObservationBatch, PolicyVersion
from vla_rl_ros.nodes import convert, qos
from vla_rl_ros.nodes.adapters import weights_checksum
from vla_rl_ros.nodes.params import ExperimentParameters
from vla_rl_ros.nodes.rejections import Rejections
from vla_rl_ros.nodes.runner import run_node

EXTRA_PARAMETERS = {
    "greedy": (False, "Decode the most likely action tokens (evaluation) instead of sampling at "
                      "policy.temperature (training rollouts)."),
    "best_of_n": (1, "Test-time scaling: sample N candidate actions per observation and keep the one the "
                     "PRM (reward.prm_path) scores best, else the most likely one; 1 = plain decoding."),
}


def make_policy(cfg):
    """The VLA of ``cfg``, built exactly as the learner and ``vla-rl train`` build it (same base weights)."""
    from vla_rl_ros.core.rl.train_loop import build_policy
    return build_policy(cfg)


class PolicyNode(Node):
    """Decodes actions for every bridge that publishes on ``observations``."""

    def __init__(self, policy=None, **kwargs) -> None:
        super().__init__("policy", **kwargs)
        self.params = ExperimentParameters(self, EXTRA_PARAMETERS)
        cfg = self.params.config
        if cfg.train.torch_threads:
            import torch
            torch.set_num_threads(cfg.train.torch_threads)
        self.policy = policy if policy is not None else make_policy(cfg)
        self.best_of_n = int(self.params.extra_values["best_of_n"])
        if self.best_of_n < 1:
            raise ConfigError(f"best_of_n={self.best_of_n}: must be >= 1")
        self.scorer = None
        if self.best_of_n > 1 and cfg.reward.prm_path:
            from vla_rl_ros.core.rl.best_of_n import prm_scorer
            from vla_rl_ros.core.rl.train_loop import load_prm
            self.scorer = prm_scorer(load_prm(cfg, self.policy))
        self.version = 0
        self.requested_version: PolicyVersion | None = None
        self.refused_versions = 0
        self.rejected_observations = 0
        self.pending: dict[str, convert.ObservationBatchData] = {}
        self.decoded_batches = 0
        self.decode_seconds = 0.0
        self.rejections = Rejections(self)
        guard = self.rejections.guard
        self.action_pub = self.create_publisher(ActionBatch, topics.ACTIONS, qos.BATCH)
        self.create_subscription(ObservationBatch, topics.OBSERVATIONS,
                                 guard("observations", self._on_observations), qos.BATCH)
        self.create_subscription(PolicyVersion, topics.POLICY_VERSION, guard("versions", self._on_version),
                                 qos.LATCHED)
        # Decoding runs from a one-shot timer armed by arriving batches, after the executor has
        # handed over every message that was already waiting, so batches that arrived together
        # (several bridges) are decoded together.
        self.decode_timer = self.create_timer(0.001, guard("decode", self._decode_pending))
        self.decode_timer.cancel()
        self.get_logger().info(f"policy ready (model {cfg.policy.model_path or 'new ' + cfg.policy.size}, "
                               f"chunks of {self.policy.chunk_size}, "
                               f"greedy={self.params.extra_values['greedy']})")

    def _on_observations(self, msg: ObservationBatch) -> None:
        cfg = self.params.config
        try:
            needed = PROPRIO_DIM if self.policy.reads_state else 0
            batch = convert.observations_from_msg(msg, cfg.env.image_size, set(cfg.env.task_ids),
                                                  min_proprio_dim=needed)
        except convert.MessageError as err:
            self.rejected_observations += 1
            self.get_logger().warning(f"rejected ObservationBatch from {msg.bridge_id!r} "
                                      f"step {msg.step_seq}: {err}")
            return
        previous = self.pending.get(batch.bridge_id)
        newer_run = previous is not None and batch.incarnation != previous.incarnation
        if previous is None or newer_run or batch.step_seq >= previous.step_seq:
            self.pending[batch.bridge_id] = batch
        self.decode_timer.reset()

    def _on_version(self, msg: PolicyVersion) -> None:
        if msg.version == self.version:
            return
        if msg.chunk_size and msg.chunk_size != self.policy.chunk_size:
            self._refuse(msg, f"it decodes chunks of {msg.chunk_size} action(s), this policy "
                              f"{self.policy.chunk_size} (policy.chunk_size)")
            return
        self.requested_version = msg
        self.decode_timer.reset()

    def _refuse(self, msg: PolicyVersion, why: str) -> None:
        self.refused_versions += 1
        self.get_logger().error(f"refusing policy version {msg.version} (keeping v{self.version}; "
                                f"{self.refused_versions} refused so far): {why}")

    def _swap_adapters(self) -> None:
        msg, self.requested_version = self.requested_version, None
        path = Path(msg.adapter_path)
        try:
            checksum = weights_checksum(path)
            if msg.sha256 and checksum != msg.sha256:
                raise ValueError(f"checksum of {path} is {checksum}, announced {msg.sha256}")
            self.policy.load_adapters(str(path))
        except (OSError, ValueError) as err:  # ChunkSizeError and unverifiable adapters are ValueErrors
            self._refuse(msg, str(err))
            return
        self.version = int(msg.version)
        self.get_logger().info(f"loaded policy version {self.version} from {path}")

    def _decode_pending(self) -> None:
        self.decode_timer.cancel()
        if self.requested_version is not None:
            self._swap_adapters()
        if not self.pending:
            return
        batches = list(self.pending.values())
        self.pending.clear()
        images = np.concatenate([b.images for b in batches])
        instructions = [text for b in batches for text in b.instructions]
        proprio = np.concatenate([b.proprio for b in batches]) if self.policy.reads_state else None
        greedy = bool(self.params.extra_values["greedy"])
        started = time.perf_counter()
        if self.best_of_n > 1 and not greedy:
            from vla_rl_ros.core.rl.best_of_n import best_of_n_decode
            out = best_of_n_decode(self.policy, images, instructions, self.best_of_n, self.scorer,
                                   proprio=proprio)
        else:
            out = self.policy.decode(images, instructions, greedy=greedy, proprio=proprio)
        self.decode_seconds += time.perf_counter() - started
        self.decoded_batches += 1
        temperature = 0.0 if greedy else float(self.params.config.policy.temperature)
        start = 0
        for batch in batches:
            end = start + len(batch.env_ids)
            header = Header(stamp=self.get_clock().now().to_msg(), frame_id=batch.bridge_id)
            self.action_pub.publish(convert.actions_to_msg(
                batch.bridge_id, batch.step_seq, batch.env_ids, self.version,
                np.asarray(out.tokens)[start:end], np.asarray(out.actions)[start:end],
                np.asarray(out.log_probs)[start:end], np.asarray(out.values)[start:end], temperature, header,
                incarnation=batch.incarnation))
            start = end


def main(args=None) -> int:
    """Console entry point ``vla-rl-policy``."""
    return run_node(PolicyNode, args)


if __name__ == "__main__":
    sys.exit(main())
