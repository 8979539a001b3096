"""Trajectory bags: the graph's rollouts as rosbag2 MCAP, and their reassembly into episodes.

The recorder writes the CDR bytes it receives (no re-serialisation) on the graph's topics
(observations, actions, step rewards, episode results, policy version); any rosbag2 tool opens
the bags once this package's messages are known. Reading turns them back into per-episode
turn lists: entry ``i`` of ObservationBatch ``s`` of a bridge pairs with entry ``i`` (a chunk of
K actions) of the ActionBatch that echoes ``s``; the EpisodeResult closes the episode. The env
steps each turn executed follow from the observations' step indices and the result's step count.
"""
from __future__ import annotations

import dataclasses
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
    """One recorded episode, turn-major (a turn = one observation and the chunk that answered it)."""

    bridge_id: str
    env_id: int
    episode_id: int
    task_id: int = -1
    instruction: str = ""
    chunk_size: int = 0
    """Actions per turn K (0 until the first turn is paired)."""
    images: list = field(default_factory=list)
    proprio: list = field(default_factory=list)
    step_indices: list = field(default_factory=list)
    """Environment steps executed before each turn (ObservationBatch.step_indices)."""
    tokens: list = field(default_factory=list)
    """int64 [K * 7] per turn."""
    actions: list = field(default_factory=list)
    """float32 [K, 7] per turn."""
    log_probs: list = field(default_factory=list)
    values: list = field(default_factory=list)
    policy_versions: list = field(default_factory=list)
    progress: dict = field(default_factory=dict)
    """env step index -> PRM progress after the turn that began there, where the PRM scored it."""
    result: object = None
    """The EpisodeResult message, or None when the episode had not ended in this bag."""

    @property
    def num_steps(self) -> int:
        """Turns that have both an observation and an action chunk."""
        return len(self.actions)


class EpisodeDataError(ValueError):
    """A recorded episode's turns do not add up (missing turn, wrong executed count, bad token)."""


def _copy_carry(carry: dict | None) -> dict:
    """A copy deep enough that a bag failing halfway leaves the caller's carry as it was."""
    carry = carry or {}
    episodes = {k: dataclasses.replace(v, **{f: list(getattr(v, f)) for f in _STEP_LISTS},
                                       progress=dict(v.progress))
                for k, v in carry.get("episodes", {}).items()}
    return {"episodes": episodes, "observations": dict(carry.get("observations", {})),
            "step_entries": dict(carry.get("step_entries", {})),
            "progress": {k: dict(v) for k, v in carry.get("progress", {}).items()}}


_STEP_LISTS = ("images", "proprio", "step_indices", "tokens", "actions", "log_probs", "values",
               "policy_versions")


def read_episodes(paths, carry: dict | None = None,
                  chunk_size: int | None = None) -> tuple[list[EpisodeSteps], dict]:
    """Finished episodes of the bags ``paths`` (in order); unfinished ones are returned as ``carry``.

    Pass ``carry`` from the previous call so that an episode spanning two iterations' bags is
    completed instead of lost (a call that raises leaves it untouched). PRM progress is attached by
    (bridge, step) wherever it was recorded. ``chunk_size``: the reader's K. ActionBatches of
    another K are not data (a bridge of this K rejected them); a bag holding only such batches
    raises ``ChunkSizeError`` naming the bag and the sizes (its turns mean other steps).
    """
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    import vla_rl_ros.msg as msgs
    classes = {topic: getattr(msgs, name) for topic, name in RECORDED_TOPICS.items()}
    state = _copy_carry(carry)
    episodes: dict = state["episodes"]
    pending_obs: dict = state["observations"]
    step_entries: dict = state["step_entries"]
    progress: dict = state["progress"]
    finished: list[EpisodeSteps] = []
    for path in ([paths] if isinstance(paths, (str, Path)) else paths):
        matched, other, results = 0, set(), {}
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
                    if chunk_size is not None and msg.chunk_size != chunk_size:
                        other.add(int(msg.chunk_size))  # a bridge of this chunk size rejected it
                        continue
                    matched += 1
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
                    # Closed once the whole bag is read: the ActionBatch of the episode's last turn
                    # may be recorded after its result (the recorder keeps the bag open for it).
                    results[(msg.bridge_id, msg.env_id, msg.episode_id)] = msg
        for key, result in results.items():
            episode = episodes.pop(key, None) or EpisodeSteps(*key)
            episode.result = result
            finished.append(episode)
        if other and not matched:
            from vla_rl_ros.core.policy.policy import ChunkSizeError
            raise ChunkSizeError(f"bag {path} holds action chunks of {sorted(other)} action(s), none of "
                                 f"{chunk_size} (the reader's policy.chunk_size)")
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
    count, chunk = len(obs.env_ids), int(actions.chunk_size)
    width, height = (obs.images[0].width, obs.images[0].height) if count else (0, 0)
    tokens = np.asarray(actions.action_tokens, np.int64).reshape(count, -1)
    values = np.asarray(actions.actions, np.float32).reshape(count, chunk, -1)
    log_probs = np.asarray(actions.token_log_probs, np.float32).reshape(count, -1)
    proprio = np.asarray(obs.proprio, np.float32).reshape(count, obs.proprio_dim)
    for i in range(count):
        key = (obs.bridge_id, int(obs.env_ids[i]), int(obs.episode_ids[i]))
        episode = episodes.setdefault(key, EpisodeSteps(*key))
        episode.task_id = int(obs.task_ids[i])
        episode.instruction = obs.instructions[i]
        episode.chunk_size = chunk
        episode.images.append(np.frombuffer(obs.images[i].data, np.uint8).reshape(height, width, 3))
        episode.proprio.append(proprio[i])
        episode.step_indices.append(int(obs.step_indices[i]))
        episode.tokens.append(tokens[i])
        episode.actions.append(values[i])
        episode.log_probs.append(log_probs[i])
        episode.values.append(float(actions.values[i]))
        episode.policy_versions.append(int(actions.policy_version))


def executed_steps(steps: EpisodeSteps) -> list[int]:
    """Environment steps each turn executed; EpisodeDataError unless each is in [1, K].

    They are the gaps between the turns' step indices, and for the last turn what the
    EpisodeResult's ``num_steps`` leaves.
    """
    ends = list(steps.step_indices[1:]) + [int(steps.result.num_steps)]
    executed = [end - start for start, end in zip(steps.step_indices, ends)]
    bad = [(t, e) for t, e in enumerate(executed) if not 1 <= e <= max(steps.chunk_size, 1)]
    if bad:
        raise EpisodeDataError(f"executed steps {executed} (turn, count) {bad[:3]} outside [1, "
                               f"{steps.chunk_size}]: a turn is missing from the bag")
    return executed


def to_core_episode(steps: EpisodeSteps, token_range: tuple[int, int] | None = None):
    """The core's :class:`~vla_rl_ros.core.rl.rollout.Episode` of a recorded episode, or None.

    None when it has no turn or never ended. Turns carry tokens [K * 7], the chunk [K, 7] and
    the env steps it ``executed``; observations are ``o_0..o_T``, the terminal one from the
    EpisodeResult. PRM progress is ``[0, p_0, ..., p_{T-1}]`` when every turn was scored, else
    None (outcome-only reward).
    Raises EpisodeDataError when the turns do not add up: their count differs from the result's
    ``num_decisions``, an executed count is outside [1, K], or a token is outside ``token_range``.
    """
    from vla_rl_ros.core.rl.rollout import Episode
    result = steps.result
    if result is None or steps.num_steps == 0:
        return None
    turns = steps.num_steps
    if result.num_decisions == turns - 1 and steps.step_indices[-1] == result.num_steps:
        turns -= 1  # the last chunk answered an observation but the episode ended before it ran
    if turns == 0:
        return None
    if result.num_decisions != turns:
        raise EpisodeDataError(f"{turns} turns recorded, the bridge reported {result.num_decisions} "
                               "decisions")
    trimmed = dataclasses.replace(steps, **{f: getattr(steps, f)[:turns] for f in _STEP_LISTS})
    executed = executed_steps(trimmed)
    tokens = np.stack(trimmed.tokens)
    if token_range is not None and ((tokens < token_range[0]) | (tokens >= token_range[1])).any():
        raise EpisodeDataError(f"action tokens outside the policy's action vocabulary {list(token_range)}")
    images, proprio = list(trimmed.images), list(trimmed.proprio)
    final = result.final_image
    if final.height and len(final.data) == final.height * final.width * 3:
        images.append(np.frombuffer(final.data, np.uint8).reshape(final.height, final.width, 3))
        proprio.append(np.asarray(result.final_proprio, np.float32))
    else:
        images.append(images[-1])
        proprio.append(proprio[-1])
    rewards = [0.0] * turns
    rewards[-1] = float(result.success)
    scored = [steps.progress.get(k) for k in trimmed.step_indices]
    progress = np.array([0.0] + scored, dtype=np.float64) if all(p is not None for p in scored) else None
    return Episode(task_id=steps.task_id, init_state_id=int(result.init_state_id),
                   instruction=steps.instruction, images=images, proprio=proprio,
                   tokens=list(trimmed.tokens), actions=list(trimmed.actions),
                   log_probs=list(trimmed.log_probs), values=list(trimmed.values), env_rewards=rewards,
                   executed=executed,
                   success=bool(result.success), truncated=bool(result.truncated),
                   aborted=bool(result.aborted), aborted_reason=str(result.reason) if result.aborted else "",
                   progress=progress)


def rebuild_episodes(finished: list[EpisodeSteps], token_range: tuple[int, int] | None = None):
    """Core episodes of finished recorded ones: ``(episodes, rejected, problems)``.

    ``episodes`` are the usable ones (not aborted, turns consistent), ``rejected`` counts those
    left out per reason (``aborted``, ``no_turns``, ``inconsistent``), ``problems`` has one line
    per inconsistent episode saying why.
    """
    episodes, rejected, problems = [], {}, []
    for steps in finished:
        episode, reason = None, "aborted" if steps.result is not None and steps.result.aborted else ""
        if not reason:
            try:
                episode = to_core_episode(steps, token_range)
                reason = "" if episode is not None else "no_turns"
            except EpisodeDataError as err:
                reason = "inconsistent"
                problems.append(f"episode {steps.episode_id} ({steps.bridge_id!r} env {steps.env_id}): {err}")
        if reason:
            rejected[reason] = rejected.get(reason, 0) + 1
        else:
            episodes.append(episode)
    return episodes, rejected, problems
