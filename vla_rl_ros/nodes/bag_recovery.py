"""What a trajectory bag holds (its announcement), and the recovery of a bag a recorder left open.

The recorder syncs its bag (``TrajectoryBagWriter.sync``: the chunk in memory written, fsync)
whenever an episode is complete in it, so after a crash the MCAP file holds complete chunks up
to the last finished episode, then at most a torn chunk, and no index or ``metadata.yaml``. On
restart :func:`recover_bag` reads it up to its last complete chunk (the ``mcap`` package's
stream reader, which needs no index), writes those messages as a proper bag under the same name
and returns the :class:`BagTally` the recorder announces (marked partial): every episode that
had finished before the crash is kept; only the ones running at that moment are lost.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path
from typing import Iterator

from rclpy.serialization import deserialize_message
from std_msgs.msg import Header

from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, EpisodeResult, TrajectoryBagInfo
from vla_rl_ros.nodes.trajectory_bags import RECORDED_TOPICS, TrajectoryBagWriter

BAG_NAME = re.compile(r"^iter_(\d{6})$")
CRASHED_SUFFIX = ".crashed"
"""A bag being recovered: the crashed original, renamed, until the recovered bag is complete."""


class BagTally:
    """Counts of one bag's admitted ActionBatches and EpisodeResults, for its TrajectoryBagInfo."""

    def __init__(self) -> None:
        self.episodes = self.steps = self.decisions = self.successes = self.aborted = 0
        self.versions: set[int] = set()
        self.chunk_sizes: set[int] = set()

    def add_actions(self, msg: ActionBatch) -> None:
        """Count one ActionBatch: the policy version and chunk size it carries."""
        self.versions.add(int(msg.policy_version))
        self.chunk_sizes.add(int(msg.chunk_size))

    def add_result(self, msg: EpisodeResult) -> None:
        """Count one finished episode."""
        self.episodes += 1
        self.steps += int(msg.num_steps)
        self.decisions += int(msg.num_decisions)
        self.successes += int(msg.success)
        self.aborted += int(msg.aborted)

    def add_raw(self, topic: str, raw: bytes) -> None:
        """Count a serialised message of ``topic`` (ActionBatch and EpisodeResult count, others not)."""
        if topic == topics.ACTIONS:
            self.add_actions(deserialize_message(raw, ActionBatch))
        elif topic == topics.EPISODE_RESULTS:
            self.add_result(deserialize_message(raw, EpisodeResult))

    def info(self, bag_path: str, iteration: int, partial: bool, stamp) -> TrajectoryBagInfo:
        """The announcement of the bag: partial also when it holds an aborted episode."""
        return TrajectoryBagInfo(
            header=Header(stamp=stamp), bag_path=bag_path, iteration=int(iteration),
            policy_version=max(self.versions) if self.versions else 0, num_episodes=self.episodes,
            num_steps=self.steps, num_successes=self.successes, partial=bool(partial or self.aborted),
            num_decisions=self.decisions,
            chunk_size=next(iter(self.chunk_sizes)) if len(self.chunk_sizes) == 1 else 0)


def bag_iteration(path: Path) -> int | None:
    """N of ``iter_N`` or ``iter_N.crashed``; None for any other name."""
    match = BAG_NAME.match(path.name.removesuffix(CRASHED_SUFFIX))
    return int(match.group(1)) if match else None


def incomplete_bags(bag_dir: Path) -> list[Path]:
    """Bags of ``bag_dir`` a recorder left unfinished (no ``metadata.yaml``), oldest first."""
    found = set()
    for path in bag_dir.glob("iter_*"):
        if bag_iteration(path) is None:
            continue
        bag = path.with_name(path.name.removesuffix(CRASHED_SUFFIX))
        if not (bag / "metadata.yaml").is_file():
            found.add(bag)
    return sorted(found)


def surviving_messages(mcap_file: Path) -> Iterator[tuple[str, int, bytes]]:
    """``(topic, stamp_ns, raw)`` of every message in the complete records of an MCAP file.

    Reading stops at the first record that is cut off or does not parse: what follows the last
    sync of a killed writer.
    """
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message
    from mcap.stream_reader import StreamReader
    if not mcap_file.is_file():
        return
    channels: dict[int, str] = {}
    with open(mcap_file, "rb") as handle:
        try:
            for record in StreamReader(handle, record_size_limit=1 << 31).records:
                if isinstance(record, Channel):
                    channels[record.id] = record.topic.lstrip("/")
                elif isinstance(record, Message) and channels.get(record.channel_id) in RECORDED_TOPICS:
                    yield channels[record.channel_id], int(record.log_time), bytes(record.data)
        except (McapError, struct.error, ValueError, EOFError, UnicodeDecodeError):
            return


def recover_bag(path: Path, store=None) -> tuple[BagTally, int]:
    """Rewrite the unfinished bag ``path`` as a complete one; returns its tally and messages kept.

    The original is renamed ``<name>.crashed`` first and removed only once the recovered bag is
    complete, so a crash during recovery leaves something the next start recovers again.
    """
    crashed = path.with_name(path.name + CRASHED_SUFFIX)
    if not crashed.exists():
        os.replace(path, crashed)
    elif path.exists():
        shutil.rmtree(path)  # the output of a recovery that was itself interrupted
    writer = TrajectoryBagWriter(path, store)
    tally, kept = BagTally(), 0
    try:
        for topic, stamp, raw in surviving_messages(crashed / f"{path.name}.mcap"):
            writer.write(topic, raw, stamp)
            tally.add_raw(topic, raw)
            kept += 1
    finally:
        writer.close()
    shutil.rmtree(crashed)
    return tally, kept
