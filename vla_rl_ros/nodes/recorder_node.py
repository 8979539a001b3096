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

Crash safety: the bag is synced (written and fsynced) each time an episode is complete in it, so
a recorder killed mid-bag loses only the episodes running at that moment; at start-up it
recovers every bag it left unfinished up to its last complete chunk (``bag_recovery``) and
announces it, partial. What is recorded is bounded and checked first: a message larger than
``convert.max_message_bytes`` (two frames of ``env.image_size`` per env of ``env.num_envs``), an
ActionBatch or EpisodeResult that does not validate, is not written; it is logged and counted
(``recorder/rejected_<kind>``).
"""
from __future__ import annotations

import sys
import time
from collections import OrderedDict
from pathlib import Path

from rclpy.node import Node
from rclpy.serialization import deserialize_message

import vla_rl_ros.msg as msgs
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, EpisodeResult, PolicyVersion, TrajectoryBagInfo
from vla_rl_ros.nodes import convert, qos
from vla_rl_ros.nodes.bag_recovery import BagTally, bag_iteration, incomplete_bags, recover_bag
from vla_rl_ros.nodes.params import ExperimentParameters
from vla_rl_ros.nodes.rejections import Rejections
from vla_rl_ros.nodes.runner import run_node
from vla_rl_ros.nodes.trajectory_bags import RECORDED_TOPICS, TrajectoryBagWriter, typestore

CLOSE_GRACE_S = 2.0
"""How long a full bag waits for the last ActionBatch of its episodes before it closes anyway."""
RECENT_ACTIONS = 1024
"""ActionBatches remembered by (bridge run, step_seq), to tell whether an episode's last one is in."""


def next_iteration(bag_dir: Path) -> int:
    """One past the highest ``iter_NNNNNN`` bag in ``bag_dir`` (0 for an empty directory)."""
    found = [n for p in bag_dir.glob("iter_*") if (n := bag_iteration(p)) is not None]
    return max(found) + 1 if found else 0


class RecorderNode(Node):
    """Raw subscriptions -> per-iteration MCAP bags -> TrajectoryBagInfo announcements."""

    def __init__(self, **kwargs) -> None:
        super().__init__("recorder", **kwargs)
        self.params = ExperimentParameters(self)
        cfg = self.params.config
        self.bag_dir = Path(cfg.graph.bag_dir).resolve()
        self.bag_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = convert.max_message_bytes(cfg.env.num_envs, cfg.env.image_size)
        self.store = typestore()
        self.writer: TrajectoryBagWriter | None = None
        self.current_version = 0
        self.recent_actions: OrderedDict = OrderedDict()
        self.rejections = Rejections(self)
        self.info_pub = self.create_publisher(TrajectoryBagInfo, topics.TRAJECTORY_BAGS, qos.BAG_NOTICES)
        self.recovered = [self._recover(path) for path in incomplete_bags(self.bag_dir)]
        self.iteration = next_iteration(self.bag_dir)
        self._reset_counts()
        guard = self.rejections.guard
        for topic in RECORDED_TOPICS:
            profile = qos.LATCHED if topic == topics.POLICY_VERSION else qos.BATCH
            msg_type = getattr(msgs, RECORDED_TOPICS[topic])
            self.create_subscription(msg_type, topic, guard(topic, self._recorder_for(topic)), profile,
                                     raw=True)
        self.create_timer(0.05, guard("close", self._close_when_complete))
        self.get_logger().info(f"recording to {self.bag_dir} from iteration {self.iteration} "
                               f"(messages up to {self.max_bytes} bytes)")

    def _recover(self, path: Path) -> TrajectoryBagInfo:
        tally, kept = recover_bag(path, self.store)
        info = tally.info(str(path), bag_iteration(path), True, self.get_clock().now().to_msg())
        self.info_pub.publish(info)
        self.get_logger().warning(f"recovered bag {path} left unfinished by a crash: {kept} messages up to "
                                  f"its last complete chunk, {info.num_episodes} finished episodes (partial)")
        return info

    def _reset_counts(self) -> None:
        self.tally = BagTally()
        self.awaited: set[tuple[str, int, int]] = set()
        """(bridge, run, step_seq) of the last ActionBatch of a counted episode, not yet in the bag."""
        self.close_due: float | None = None

    def _open(self) -> TrajectoryBagWriter:
        if self.writer is None:
            self.writer = TrajectoryBagWriter(self.bag_dir / f"iter_{self.iteration:06d}", self.store)
            self.tally.versions.add(self.current_version)
        return self.writer

    def _stamp(self) -> int:
        return self.get_clock().now().nanoseconds

    def _admit(self, topic: str, raw: bytes):
        """The message to count (or None for a topic that is only recorded); MessageError if refused."""
        if len(raw) > self.max_bytes:
            raise convert.MessageError(f"{len(raw)} bytes, more than {self.max_bytes} "
                                       f"(env.num_envs x two {self.params.config.env.image_size} px frames)")
        if topic == topics.ACTIONS:
            msg = deserialize_message(raw, ActionBatch)
            convert.actions_from_msg(msg)  # a batch no bridge would run is not rollout data
            return msg
        if topic == topics.EPISODE_RESULTS:
            return convert.check_episode_result(deserialize_message(raw, EpisodeResult),
                                                self.params.config.env.image_size)
        if topic == topics.POLICY_VERSION:
            return deserialize_message(raw, PolicyVersion)
        return None

    def _recorder_for(self, topic: str):
        def record(raw: bytes) -> None:
            try:
                msg = self._admit(topic, raw)
            except convert.MessageError as err:
                self.rejections(topic, str(err))
                return
            if topic == topics.POLICY_VERSION:
                self.current_version = int(msg.version)
            self._open().write(topic, raw, self._stamp())
            if topic == topics.ACTIONS:
                self.tally.add_actions(msg)
                key = (msg.bridge_id, int(msg.incarnation), int(msg.step_seq))
                self.recent_actions[key] = None
                while len(self.recent_actions) > RECENT_ACTIONS:
                    self.recent_actions.popitem(last=False)
                if key in self.awaited:
                    self.awaited.discard(key)
                    self.writer.sync()  # the episode that ran it is complete in the bag now
                self._close_when_complete()
            elif topic == topics.EPISODE_RESULTS:
                self._count_episode(msg)
        return record

    def _count_episode(self, result: EpisodeResult) -> None:
        self.tally.add_result(result)
        key = (result.bridge_id, int(result.incarnation), int(result.last_step_seq))
        if result.last_step_seq and key not in self.recent_actions:
            self.awaited.add(key)
        else:
            self.writer.sync()  # durable: a crash from here on does not lose this episode
        if self.tally.episodes >= self.params.config.train.episodes_per_iter and self.close_due is None:
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
        if len(self.tally.chunk_sizes) > 1:
            self.get_logger().warning(f"bag {self.writer.path} mixes chunk sizes "
                                      f"{sorted(self.tally.chunk_sizes)}")
        info = self.tally.info(str(self.writer.path), self.iteration, partial,
                               self.get_clock().now().to_msg())
        self.info_pub.publish(info)
        marker = " (partial)" if info.partial else ""
        self.get_logger().info(f"bag {info.bag_path}: {info.num_episodes} episodes, {info.num_successes} "
                               f"successes, policy v{info.policy_version}{marker} "
                               f"{self.rejections.summary('recorder')}")
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
