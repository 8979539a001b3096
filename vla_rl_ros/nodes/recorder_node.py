"""``recorder``: writes each training iteration's rollouts as one rosbag2 MCAP bag.

Subscribes raw (serialised) to the graph's batch topics and appends the bytes as they come,
so recording costs no deserialisation of images. An iteration closes after
``train.episodes_per_iter`` EpisodeResults, once the bag also holds the ActionBatch each of
those episodes ran last: it comes from the policy and the result from the bridge, so nothing
orders the two, and a bag without an episode's last turn would credit the outcome to the wrong
turn (after ``CLOSE_GRACE_S`` without it the bag closes, marked partial). The bag is announced
on ``trajectory_bags`` with the policy version that produced it, its env steps and decisions
(turns), and the chunk size of its ActionBatches (0, with a warning, when they mix sizes).
Iterations continue after the highest bag already in ``graph.bag_dir`` (a restarted recorder
never overwrites), and a bag closed early by shutdown or holding aborted episodes is marked
``partial``.
"""
from __future__ import annotations

import re
import sys
import time
from collections import OrderedDict
from pathlib import Path

from rclpy.node import Node
from rclpy.serialization import deserialize_message
from std_msgs.msg import Header

from vla_rl_ros.graph import topics
from vla_rl_ros.msg import (ActionBatch, EpisodeResult, ObservationBatch, PolicyVersion, StepRewardBatch,
                            TrajectoryBagInfo)
from vla_rl_ros.nodes import qos
from vla_rl_ros.nodes.params import ExperimentParameters
from vla_rl_ros.nodes.runner import run_node
from vla_rl_ros.nodes.trajectory_bags import TrajectoryBagWriter, typestore

BAG_NAME = re.compile(r"^iter_(\d{6})$")
CLOSE_GRACE_S = 2.0
"""How long a full bag waits for the last ActionBatch of its episodes before it closes anyway."""
RECENT_ACTIONS = 1024
"""ActionBatches remembered by (bridge, step_seq), to tell whether an episode's last one is in."""


def next_iteration(bag_dir: Path) -> int:
    """One past the highest ``iter_NNNNNN`` bag in ``bag_dir`` (0 for an empty directory)."""
    found = [int(m.group(1)) for p in bag_dir.glob("iter_*") if (m := BAG_NAME.match(p.name))]
    return max(found) + 1 if found else 0


class RecorderNode(Node):
    """Raw subscriptions -> per-iteration MCAP bags -> TrajectoryBagInfo announcements."""

    def __init__(self, **kwargs) -> None:
        super().__init__("recorder", **kwargs)
        self.params = ExperimentParameters(self)
        cfg = self.params.config
        self.bag_dir = Path(cfg.graph.bag_dir).resolve()
        self.bag_dir.mkdir(parents=True, exist_ok=True)
        self.iteration = next_iteration(self.bag_dir)
        self.store = typestore()
        self.writer: TrajectoryBagWriter | None = None
        self.current_version = 0
        self.versions: set[int] = set()
        self.recent_actions: OrderedDict = OrderedDict()
        self._reset_counts()
        self.info_pub = self.create_publisher(TrajectoryBagInfo, topics.TRAJECTORY_BAGS, qos.BAG_NOTICES)
        recorded = ((topics.OBSERVATIONS, ObservationBatch), (topics.ACTIONS, ActionBatch),
                    (topics.STEP_REWARDS, StepRewardBatch), (topics.EPISODE_RESULTS, EpisodeResult))
        for topic, msg_type in recorded:
            self.create_subscription(msg_type, topic, self._recorder_for(topic), qos.BATCH, raw=True)
        self.create_subscription(PolicyVersion, topics.POLICY_VERSION, self._on_version, qos.LATCHED,
                                 raw=True)
        self.create_timer(0.05, self._close_when_complete)
        self.get_logger().info(f"recording to {self.bag_dir} from iteration {self.iteration}")

    def _reset_counts(self) -> None:
        self.episodes = self.steps = self.decisions = self.successes = self.aborted = 0
        self.versions = set()
        self.chunk_sizes: set[int] = set()
        self.awaited: set[tuple[str, int]] = set()
        """(bridge, step_seq) of the last ActionBatch of a counted episode, not yet in the bag."""
        self.close_due: float | None = None

    def _open(self) -> TrajectoryBagWriter:
        if self.writer is None:
            self.writer = TrajectoryBagWriter(self.bag_dir / f"iter_{self.iteration:06d}", self.store)
            self.versions.add(self.current_version)
        return self.writer

    def _stamp(self) -> int:
        return self.get_clock().now().nanoseconds

    def _recorder_for(self, topic: str):
        def record(raw: bytes) -> None:
            self._open().write(topic, raw, self._stamp())
            if topic == topics.ACTIONS:
                actions = deserialize_message(raw, ActionBatch)
                self.versions.add(int(actions.policy_version))
                self.chunk_sizes.add(int(actions.chunk_size))
                key = (actions.bridge_id, int(actions.step_seq))
                self.recent_actions[key] = None
                while len(self.recent_actions) > RECENT_ACTIONS:
                    self.recent_actions.popitem(last=False)
                self.awaited.discard(key)
                self._close_when_complete()
            elif topic == topics.EPISODE_RESULTS:
                self._count_episode(deserialize_message(raw, EpisodeResult))
        return record

    def _on_version(self, raw: bytes) -> None:
        self.current_version = int(deserialize_message(raw, PolicyVersion).version)
        self._open().write(topics.POLICY_VERSION, raw, self._stamp())

    def _count_episode(self, result: EpisodeResult) -> None:
        self.episodes += 1
        self.steps += result.num_steps
        self.decisions += result.num_decisions
        self.successes += int(result.success)
        self.aborted += int(result.aborted)
        key = (result.bridge_id, int(result.last_step_seq))
        if result.last_step_seq and key not in self.recent_actions:
            self.awaited.add(key)
        if self.episodes >= self.params.config.train.episodes_per_iter and self.close_due is None:
            self.close_due = time.monotonic() + CLOSE_GRACE_S
        self._close_when_complete()

    def _close_when_complete(self) -> None:
        if self.close_due is None or (self.awaited and time.monotonic() < self.close_due):
            return
        if self.awaited:
            self.get_logger().warning(f"closing bag {self.writer.path} without the ActionBatch(es) "
                                      f"{sorted(self.awaited)[:5]} that its episodes ran last")
        self.close_bag(partial=bool(self.awaited))

    def close_bag(self, partial: bool) -> TrajectoryBagInfo | None:
        """Finish the current bag and announce it; returns the announcement (None if no bag was open)."""
        if self.writer is None:
            return None
        self.writer.close()
        if len(self.chunk_sizes) > 1:
            self.get_logger().warning(f"bag {self.writer.path} mixes chunk sizes {sorted(self.chunk_sizes)}")
        info = TrajectoryBagInfo(
            header=Header(stamp=self.get_clock().now().to_msg()), bag_path=str(self.writer.path),
            iteration=self.iteration, policy_version=max(self.versions) if self.versions else 0,
            num_episodes=self.episodes, num_steps=self.steps, num_successes=self.successes,
            partial=bool(partial or self.aborted), num_decisions=self.decisions,
            chunk_size=next(iter(self.chunk_sizes)) if len(self.chunk_sizes) == 1 else 0)
        self.info_pub.publish(info)
        marker = " (partial)" if info.partial else ""
        self.get_logger().info(f"bag {info.bag_path}: {info.num_episodes} episodes, {info.num_successes} "
                               f"successes, policy v{info.policy_version}{marker}")
        self.writer = None
        self.iteration += 1
        self._reset_counts()
        return info

    def destroy_node(self) -> None:
        """Close an open bag as partial so nothing recorded is lost on shutdown."""
        try:
            self.close_bag(partial=True)
        finally:
            super().destroy_node()


def main(args=None) -> int:
    """Console entry point ``vla-rl-recorder``."""
    return run_node(RecorderNode, args)


if __name__ == "__main__":
    sys.exit(main())
