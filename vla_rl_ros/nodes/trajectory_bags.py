"""Trajectory bags: the graph's rollouts as rosbag2 MCAP, and their reassembly into episodes.

The recorder writes the CDR bytes it receives (no re-serialisation) on the graph's topics
(observations, actions, step rewards, episode results, policy version); any rosbag2 tool opens
the bags once this package's messages are known. :meth:`TrajectoryBagWriter.sync` makes what is
written durable (``bag_recovery`` reads a crashed recorder's file back to its last sync).
Reading turns them back into per-episode turn lists: entry ``i`` of ObservationBatch ``s`` of a
bridge run pairs with entry ``i`` (a chunk of K actions) of the ActionBatch that echoes the bridge,
its run (``incarnation``) and ``s``; the EpisodeResult closes the episode. Episodes are keyed by
(bridge, run, env, episode), so a restarted bridge, whose ids start again at 0, never splices its
steps into the previous run's episodes. An unfinished episode whose result cannot come any more (a
newer episode runs in its env slot, or it got no turn for ``ORPHAN_IDLE_BAGS`` bags) is evicted
from the carry and counted (``carry["evicted"]``).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

import vla_rl_ros
from vla_rl_ros.graph import topics
from vla_rl_ros.nodes.bag_episodes import (  # noqa: F401 (the reader's public names, re-exported)
    STEP_LISTS, EpisodeDataError, EpisodeSteps, episode_key_text, executed_steps, rebuild_episodes,
    rebuild_keyed, to_core_episode)

MSG_TYPES = ("ObservationBatch", "ActionBatch", "StepRewardBatch", "EpisodeResult", "TrajectoryBagInfo",
             "PolicyVersion", "TaskAssignment")
RECORDED_TOPICS = {topics.OBSERVATIONS: "ObservationBatch", topics.ACTIONS: "ActionBatch",
                   topics.STEP_REWARDS: "StepRewardBatch", topics.EPISODE_RESULTS: "EpisodeResult",
                   topics.POLICY_VERSION: "PolicyVersion"}
ORPHAN_IDLE_BAGS = 4
"""An unfinished episode with no new turn for this many bags is an orphan (its bridge or its
recorder died mid-episode: its result will never come); one already superseded by a newer
episode in its env slot is an orphan after one bag without a turn."""


def msg_directory() -> Path:
    """Where this package's ``.msg`` files are: the source tree, or ``share/vla_rl_ros/msg`` of an install."""
    import os
    candidates = [Path(vla_rl_ros.__file__).resolve().parents[1] / "msg",
                  Path(sys.prefix) / "share" / "vla_rl_ros" / "msg"]
    candidates += [Path(p) / "share" / "vla_rl_ros" / "msg"
                   for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for candidate in candidates:
        if (candidate / "ObservationBatch.msg").is_file():
            return candidate
    raise FileNotFoundError(f"vla_rl_ros message definitions not found in {[str(c) for c in candidates]}")


def typestore():
    """Return a rosbags type store for ROS 2 Kilted that also knows the messages of ``msg/``."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    store = get_typestore(Stores.ROS2_KILTED)
    directory = msg_directory()
    types = {}
    for name in MSG_TYPES:
        types.update(get_types_from_msg((directory / f"{name}.msg").read_text(), f"vla_rl_ros/msg/{name}"))
    store.register(types)
    return store


class TrajectoryBagWriter:
    """One MCAP bag directory; ``write(topic, raw_cdr, stamp_ns)`` for the recorded topics."""

    def __init__(self, path: str | Path, store=None) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        self.path = Path(path)
        self._store = store or typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections = {
            topic: self._writer.add_connection("/" + topic, f"vla_rl_ros/msg/{name}", typestore=self._store)
            for topic, name in RECORDED_TOPICS.items()}
        self.counts = {topic: 0 for topic in RECORDED_TOPICS}

    def write(self, topic: str, raw: bytes, stamp_ns: int) -> None:
        """Append one serialised message of ``topic`` (a key of RECORDED_TOPICS)."""
        self._writer.write(self._connections[topic], int(stamp_ns), raw)
        self.counts[topic] += 1

    def sync(self) -> None:
        """Make every message written so far durable: write the chunk held in memory, then fsync.

        rosbags keeps up to 1 MiB of messages in an in-memory chunk and writes the file's index and
        ``metadata.yaml`` only at close, so a recorder killed mid-bag used to leave a 0-byte file.
        After a sync the file holds complete chunks up to here: ``bag_recovery`` reads them back.
        """
        storage = self._writer.storage  # rosbags' McapWriter (pinned: rosbags==0.11.9)
        if storage.chunk.msgs:
            storage.close_chunk()
        storage.bio.flush()
        os.fsync(storage.bio.fileno())

    def close(self) -> None:
        """Finish the MCAP file (writes its summary and metadata.yaml); the bag is complete after this."""
        self._writer.close()
        for name in (f"{self.path.name}.mcap", "metadata.yaml"):
            descriptor = os.open(self.path / name, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def _copy_carry(carry: dict | None) -> dict:
    """A copy deep enough that a bag failing halfway leaves the caller's carry as it was."""
    carry = carry or {}
    episodes = {k: dataclasses.replace(v, **{f: list(getattr(v, f)) for f in STEP_LISTS + ("bags",)},
                                       progress=dict(v.progress))
                for k, v in carry.get("episodes", {}).items()}
    return {"episodes": episodes, "observations": dict(carry.get("observations", {})),
            "step_entries": dict(carry.get("step_entries", {})),
            "progress": {k: dict(v) for k, v in carry.get("progress", {}).items()},
            "latest": dict(carry.get("latest", {})), "bags_read": int(carry.get("bags_read", 0)),
            "evicted": int(carry.get("evicted", 0)), "invalid": dict(carry.get("invalid", {}))}


def read_episodes(paths, carry: dict | None = None, chunk_size: int | None = None,
                  image_size: int | None = None) -> tuple[list[EpisodeSteps], dict]:
    """Finished episodes of the bags ``paths`` (in order); unfinished ones are returned as ``carry``.

    Pass ``carry`` from the previous call so that an episode spanning two iterations' bags is
    completed instead of lost (a call that raises leaves it untouched). PRM progress is attached by
    (bridge run, env, episode, step) wherever it was recorded. ``chunk_size``: the reader's K.
    ActionBatches of another K are not data (a bridge of this K rejected them); a bag holding only
    such batches raises ``ChunkSizeError`` naming the bag and the sizes (its turns mean other
    steps). Observations that fail validation (``image_size``: the frames' expected side) and
    malformed results are skipped and counted in ``carry["invalid"]``; orphans are evicted and
    counted in ``carry["evicted"]``.
    """
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    import vla_rl_ros.msg as msgs
    from vla_rl_ros.nodes import convert
    classes = {topic: getattr(msgs, name) for topic, name in RECORDED_TOPICS.items()}
    state = _copy_carry(carry)
    episodes: dict = state["episodes"]
    pending_obs: dict = state["observations"]
    step_entries: dict = state["step_entries"]
    progress: dict = state["progress"]
    finished: list[EpisodeSteps] = []

    def invalid(kind: str) -> None:
        state["invalid"][kind] = state["invalid"].get(kind, 0) + 1

    for path in ([paths] if isinstance(paths, (str, Path)) else paths):
        state["bags_read"] += 1
        bag_index, matched, other, results = state["bags_read"], 0, set(), {}
        with Reader(Path(path)) as reader:
            for connection, _stamp, raw in reader.messages():
                topic = connection.topic.lstrip("/")
                if topic not in classes:
                    continue
                msg = deserialize_message(bytes(raw), classes[topic])
                run = (msg.bridge_id, int(msg.incarnation)) if hasattr(msg, "incarnation") else None
                if topic == topics.OBSERVATIONS:
                    try:
                        batch = convert.observations_from_msg(msg, image_size)
                    except convert.MessageError:
                        invalid("observations")
                        continue
                    pending_obs[(*run, msg.step_seq)] = (batch, bag_index)
                    step_entries[(*run, msg.step_seq)] = [
                        (*run, int(e), int(ep), int(k))
                        for e, ep, k in zip(msg.env_ids, msg.episode_ids, msg.step_indices)]
                elif topic == topics.ACTIONS:
                    if chunk_size is not None and msg.chunk_size != chunk_size:
                        other.add(int(msg.chunk_size))  # a bridge of this chunk size rejected it
                        continue
                    matched += 1
                    obs = pending_obs.get((*run, msg.step_seq))
                    if obs is not None and _applicable(obs[0], msg):
                        _pair(episodes, pending_obs.pop((*run, msg.step_seq))[0], msg, str(path), bag_index,
                              state["latest"])
                elif topic == topics.STEP_REWARDS:
                    # The PRM runs beside the control loop and may answer after the episode ended:
                    # scores are collected by episode and attached once the whole bag is read.
                    entries = {e[2]: e for e in step_entries.get((*run, msg.step_seq), [])}
                    for env_id, value in zip(msg.env_ids, msg.progress):
                        if env_id in entries and np.isfinite(value):
                            *episode_key, step = entries[env_id]
                            progress.setdefault(tuple(episode_key), {})[step] = float(value)
                elif topic == topics.EPISODE_RESULTS:
                    try:
                        convert.check_episode_result(msg, image_size)
                    except convert.MessageError:
                        invalid("episode_results")
                        continue
                    # Closed once the whole bag is read: the ActionBatch of the episode's last turn
                    # may be recorded after its result (the recorder keeps the bag open for it).
                    results[(*run, msg.env_id, msg.episode_id)] = msg
        for key, result in results.items():
            episode = episodes.pop(key, None) or EpisodeSteps(*key)
            episode.result = result
            finished.append(episode)
        if other and not matched:
            from vla_rl_ros.core.policy.policy import ChunkSizeError
            raise ChunkSizeError(f"bag {path} holds action chunks of {sorted(other)} action(s), none of "
                                 f"{chunk_size} (the reader's policy.chunk_size)")
        _evict_orphans(state, bag_index)
    for episode in finished:
        episode.progress.update(progress.pop(episode.key, {}))
    live = set(episodes)
    for key in [k for k in progress if k not in live]:
        del progress[key]  # scores of episodes that ended in an earlier bag: too late to use
    for key in [k for k, v in step_entries.items() if not any(e[:4] in live for e in v)]:
        del step_entries[key]  # keep the carry small: only steps of unfinished episodes
    return finished, state


def _evict_orphans(state: dict, bag_index: int) -> None:
    """Drop unfinished episodes whose result cannot come any more, and unanswered observations."""
    episodes, latest = state["episodes"], state["latest"]
    for key, episode in list(episodes.items()):
        idle = bag_index - episode.last_bag
        superseded = latest.get((episode.bridge_id, episode.env_id), key) != key
        if (superseded and idle >= 1) or idle >= ORPHAN_IDLE_BAGS:
            del episodes[key]
            state["evicted"] += 1
    # An ActionBatch follows its observations within a decode; two bags later it never will.
    for key in [k for k, (_, seen) in state["observations"].items() if bag_index - seen >= 2]:
        del state["observations"][key]


def carry_bags(carry: dict) -> list[str]:
    """Bags (in reading order) holding turns of the carry's unfinished episodes."""
    seen: dict[str, None] = {}
    for episode in carry.get("episodes", {}).values():
        seen.update(dict.fromkeys(episode.bags))
    return list(seen)


def _applicable(obs, actions) -> bool:
    """The bridge's own check: a batch it rejected (NaN, misaligned...) never acted, so it is not data."""
    from vla_rl_ros.nodes.convert import MessageError, actions_from_msg
    try:
        actions_from_msg(actions, obs.env_ids)
    except MessageError:
        return False
    return True


def _pair(episodes: dict, obs, actions, path: str, bag_index: int, latest: dict) -> None:
    """Append entry i of the validated observations ``obs`` and of ``actions`` to each episode."""
    count, chunk = len(obs.env_ids), int(actions.chunk_size)
    tokens = np.asarray(actions.action_tokens, np.int64).reshape(count, -1)
    values = np.asarray(actions.actions, np.float32).reshape(count, chunk, -1)
    log_probs = np.asarray(actions.token_log_probs, np.float32).reshape(count, -1)
    for i, observation in enumerate(obs.observations):
        key = (obs.bridge_id, obs.incarnation, obs.env_ids[i], obs.episode_ids[i])
        episode = episodes.setdefault(key, EpisodeSteps(*key))
        latest[(obs.bridge_id, obs.env_ids[i])] = key
        episode.task_id = int(observation.task_id)
        episode.instruction = observation.instruction
        episode.chunk_size = chunk
        episode.images.append(observation.image)
        episode.proprio.append(np.asarray(observation.proprio, np.float32))
        episode.step_indices.append(int(observation.step))
        episode.step_seqs.append(int(obs.step_seq))
        episode.tokens.append(tokens[i])
        episode.actions.append(values[i])
        episode.log_probs.append(log_probs[i])
        episode.values.append(float(actions.values[i]))
        episode.policy_versions.append(int(actions.policy_version))
        if not episode.bags or episode.bags[-1] != path:
            episode.bags.append(path)
        episode.last_bag = bag_index
