"""Trajectory bags: the graph's rollouts as rosbag2 MCAP, and their reassembly into episodes.

The recorder writes the CDR bytes it receives (no re-serialisation) on the graph's topics
(observations, actions, step rewards, episode results, policy version); any rosbag2 tool opens
the bags once this package's messages are known. Reading turns them back into per-episode
step lists: entry ``i`` of ObservationBatch ``s`` of a bridge pairs with entry ``i`` of the
ActionBatch that echoes ``s``; the EpisodeResult closes the episode.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import vla_rl_ros
from vla_rl_ros.graph import topics

MSG_TYPES = ("ObservationBatch", "ActionBatch", "StepRewardBatch", "EpisodeResult", "TrajectoryBagInfo",
             "PolicyVersion", "TaskAssignment")
RECORDED_TOPICS = {topics.OBSERVATIONS: "ObservationBatch", topics.ACTIONS: "ActionBatch",
                   topics.STEP_REWARDS: "StepRewardBatch", topics.EPISODE_RESULTS: "EpisodeResult",
                   topics.POLICY_VERSION: "PolicyVersion"}


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

    def close(self) -> None:
        """Finish the MCAP file (writes its summary); the bag is complete after this."""
        self._writer.close()


@dataclass
class EpisodeSteps:
    """One recorded episode, step-major, as the learner needs it."""

    bridge_id: str
    env_id: int
    episode_id: int
    task_id: int = -1
    instruction: str = ""
    images: list = field(default_factory=list)
    proprio: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    log_probs: list = field(default_factory=list)
    values: list = field(default_factory=list)
    policy_versions: list = field(default_factory=list)
    progress: dict = field(default_factory=dict)
    """step index -> PRM progress, where the PRM scored that step."""
    result: object = None
    """The EpisodeResult message, or None when the episode had not ended in this bag."""

    @property
    def num_steps(self) -> int:
        """Steps that have both an observation and an action."""
        return len(self.actions)


def read_episodes(paths, carry: dict | None = None) -> tuple[list[EpisodeSteps], dict]:
    """Finished episodes of the bags ``paths`` (in order); unfinished ones are returned as ``carry``.

    Pass ``carry`` from the previous call so that an episode spanning two iterations' bags is
    completed instead of lost. PRM progress is attached by (bridge, step) wherever it was recorded.
    """
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    import vla_rl_ros.msg as msgs
    classes = {topic: getattr(msgs, name) for topic, name in RECORDED_TOPICS.items()}
    state = dict(carry or {})
    episodes: dict = state.setdefault("episodes", {})
    pending_obs: dict = state.setdefault("observations", {})
    step_entries: dict = state.setdefault("step_entries", {})
    progress: dict = state.setdefault("progress", {})
    finished: list[EpisodeSteps] = []
    for path in ([paths] if isinstance(paths, (str, Path)) else paths):
        with Reader(Path(path)) as reader:
            for connection, _stamp, raw in reader.messages():
                topic = connection.topic.lstrip("/")
                if topic not in classes:
                    continue
                msg = deserialize_message(bytes(raw), classes[topic])
                if topic == topics.OBSERVATIONS:
                    pending_obs[(msg.bridge_id, msg.step_seq)] = msg
                    step_entries[(msg.bridge_id, msg.step_seq)] = [
                        (msg.bridge_id, int(e), int(ep), int(k))
                        for e, ep, k in zip(msg.env_ids, msg.episode_ids, msg.step_indices)]
                elif topic == topics.ACTIONS:
                    obs = pending_obs.get((msg.bridge_id, msg.step_seq))
                    if obs is not None and _applicable(obs, msg):
                        _pair(episodes, pending_obs.pop((msg.bridge_id, msg.step_seq)), msg)
                elif topic == topics.STEP_REWARDS:
                    # The PRM runs beside the control loop and may answer after the episode ended:
                    # scores are collected by episode and attached once the whole bag is read.
                    entries = {e[1]: e for e in step_entries.get((msg.bridge_id, msg.step_seq), [])}
                    for env_id, value in zip(msg.env_ids, msg.progress):
                        if env_id in entries:
                            bridge, env, episode_id, step = entries[env_id]
                            progress.setdefault((bridge, env, episode_id), {})[step] = float(value)
                elif topic == topics.EPISODE_RESULTS:
                    key = (msg.bridge_id, msg.env_id, msg.episode_id)
                    episode = episodes.pop(key, None) or EpisodeSteps(*key)
                    episode.result = msg
                    finished.append(episode)
    for episode in finished:
        episode.progress.update(progress.pop((episode.bridge_id, episode.env_id, episode.episode_id), {}))
    live = {(b, e, ep) for b, e, ep in episodes}
    for key in [k for k in progress if k not in live]:
        del progress[key]  # scores of episodes that ended in an earlier bag: too late to use
    for key in [k for k, v in step_entries.items() if not any((b, e, ep) in live for b, e, ep, _ in v)]:
        del step_entries[key]  # keep the carry small: only steps of unfinished episodes
    return finished, state


def _applicable(obs, actions) -> bool:
    """The bridge's own check: a batch it rejected (NaN, misaligned...) never acted, so it is not data."""
    from vla_rl_ros.nodes.convert import MessageError, actions_from_msg
    try:
        actions_from_msg(actions, list(obs.env_ids))
    except MessageError:
        return False
    return True


def _pair(episodes: dict, obs, actions) -> None:
    count = len(obs.env_ids)
    width, height = (obs.images[0].width, obs.images[0].height) if count else (0, 0)
    tokens = np.asarray(actions.action_tokens, np.int64).reshape(count, -1)
    values = np.asarray(actions.actions, np.float32).reshape(count, -1)
    log_probs = np.asarray(actions.token_log_probs, np.float32).reshape(count, -1)
    proprio = np.asarray(obs.proprio, np.float32).reshape(count, obs.proprio_dim)
    for i in range(count):
        key = (obs.bridge_id, int(obs.env_ids[i]), int(obs.episode_ids[i]))
        episode = episodes.setdefault(key, EpisodeSteps(*key))
        episode.task_id = int(obs.task_ids[i])
        episode.instruction = obs.instructions[i]
        episode.images.append(np.frombuffer(obs.images[i].data, np.uint8).reshape(height, width, 3))
        episode.proprio.append(proprio[i])
        episode.tokens.append(tokens[i])
        episode.actions.append(values[i])
        episode.log_probs.append(log_probs[i])
        episode.values.append(float(actions.values[i]))
        episode.policy_versions.append(int(actions.policy_version))


def to_core_episode(steps: EpisodeSteps):
    """The core's :class:`~vla_rl_ros.core.rl.rollout.Episode` of a recorded episode (None if unusable).

    Observations are ``o_0..o_T``: the terminal one comes from the EpisodeResult. PRM progress is
    ``[0, p_0, ..., p_{T-1}]`` when every step was scored, else None (outcome-only reward).
    """
    from vla_rl_ros.core.rl.rollout import Episode
    result = steps.result
    if result is None or steps.num_steps == 0:
        return None
    images = list(steps.images)
    proprio = list(steps.proprio)
    final = result.final_image
    if final.height and len(final.data) == final.height * final.width * 3:
        images.append(np.frombuffer(final.data, np.uint8).reshape(final.height, final.width, 3))
        proprio.append(np.asarray(result.final_proprio, np.float32))
    else:
        images.append(images[-1])
        proprio.append(proprio[-1])
    count = steps.num_steps
    rewards = [0.0] * count
    rewards[-1] = float(result.success)
    scored = [steps.progress.get(t) for t in range(count)]
    progress = np.array([0.0] + scored, dtype=np.float64) if all(p is not None for p in scored) else None
    return Episode(task_id=steps.task_id, init_state_id=int(result.init_state_id),
                   instruction=steps.instruction,
                   images=images, proprio=proprio, tokens=list(steps.tokens), actions=list(steps.actions),
                   log_probs=list(steps.log_probs), values=list(steps.values), env_rewards=rewards,
                   success=bool(result.success), truncated=bool(result.truncated),
                   aborted=bool(result.aborted),
                   progress=progress)
