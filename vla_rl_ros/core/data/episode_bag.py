"""One episode as a rosbag2 MCAP directory, in standard ROS 2 message types.

Topics (one message per control step unless noted, stamped at the 20 Hz control rate):
``/camera/image_raw`` (sensor_msgs/msg/Image rgb8, upright agentview), ``/camera/wrist/image_raw``
(optional), ``/proprio`` and ``/action`` (std_msgs/msg/Float32MultiArray), ``/instruction``
(std_msgs/msg/String, once) and ``/episode_info`` (std_msgs/msg/String holding JSON with suite,
task id, init-state id, success, step count; once, last). Standard types mean ``ros2 bag info``,
Foxglove and the ``mcap`` CLI open the bags without this package.

Bags are written into ``.partial/<name>`` and moved into place when complete, so a directory with the final
name is always a whole episode (what makes recording resumable).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CONTROL_PERIOD_NS = 50_000_000  # LIBERO controls at 20 Hz
IMAGE_TOPIC, WRIST_TOPIC = "/camera/image_raw", "/camera/wrist/image_raw"
PROPRIO_TOPIC, ACTION_TOPIC = "/proprio", "/action"
INSTRUCTION_TOPIC, INFO_TOPIC = "/instruction", "/episode_info"


class BagError(ValueError):
    """An episode bag is missing, corrupt or truncated; the message names the path."""


@dataclass
class EpisodeRecord:
    """A recorded episode: ``images[t]`` and ``proprio[t]`` were observed before ``actions[t]``."""

    images: np.ndarray
    """uint8 [T, H, W, 3], upright."""
    proprio: np.ndarray
    """float32 [T, D]."""
    actions: np.ndarray
    """float32 [T, 7]."""
    instruction: str
    task_id: int
    init_state_id: int
    suite: str = ""
    success: bool = True
    wrist_images: np.ndarray | None = None
    """uint8 [T, H, W, 3] when the wrist camera was recorded."""
    extra: dict = field(default_factory=dict)
    """Additional JSON-serialisable metadata (e.g. the recording seed, expert retries)."""

    @property
    def num_steps(self) -> int:
        """Number of control steps."""
        return len(self.actions)


def _typestore():
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_KILTED)


def _image_message(store, image: np.ndarray, stamp_ns: int, frame_id: str):
    types = store.types
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000,
                                                   nanosec=stamp_ns % 1_000_000_000),
        frame_id=frame_id)
    height, width = image.shape[:2]
    return types["sensor_msgs/msg/Image"](header=header, height=height, width=width, encoding="rgb8",
                                          is_bigendian=0, step=width * 3,
                                          data=np.ascontiguousarray(image, dtype=np.uint8).reshape(-1))


def _array_message(store, values: np.ndarray):
    types = store.types
    layout = types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return types["std_msgs/msg/Float32MultiArray"](layout=layout, data=np.asarray(values, dtype=np.float32))


def write_episode_bag(path: str | Path, episode: EpisodeRecord) -> Path:
    """Write ``episode`` as an MCAP rosbag2 directory at ``path`` (atomically); returns the path."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    path = Path(path)
    count = episode.num_steps
    if len(episode.images) != count or len(episode.proprio) != count:
        raise ValueError(f"episode for {path}: {len(episode.images)} images, {len(episode.proprio)} proprio "
                         f"rows and {count} actions must match")
    if path.exists():
        raise FileExistsError(f"episode bag {path} already exists")
    # rosbags names the .mcap after the directory, so the temporary directory keeps the final name.
    partial = path.parent / ".partial" / path.name
    if partial.exists():
        shutil.rmtree(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    store = _typestore()
    string_type = store.types["std_msgs/msg/String"]
    info = dict(suite=episode.suite, task_id=int(episode.task_id), init_state_id=int(episode.init_state_id),
                success=bool(episode.success), num_steps=count, instruction=episode.instruction,
                has_wrist=episode.wrist_images is not None, **episode.extra)
    with Writer(partial, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        def connect(topic, msgtype):
            return writer.add_connection(topic, msgtype, typestore=store)
        image_conn = connect(IMAGE_TOPIC, "sensor_msgs/msg/Image")
        has_wrist = episode.wrist_images is not None
        wrist_conn = connect(WRIST_TOPIC, "sensor_msgs/msg/Image") if has_wrist else None
        proprio_conn = connect(PROPRIO_TOPIC, "std_msgs/msg/Float32MultiArray")
        action_conn = connect(ACTION_TOPIC, "std_msgs/msg/Float32MultiArray")
        instruction_conn = connect(INSTRUCTION_TOPIC, "std_msgs/msg/String")
        info_conn = connect(INFO_TOPIC, "std_msgs/msg/String")

        def put(conn, message, msgtype, stamp):
            writer.write(conn, stamp, store.serialize_cdr(message, msgtype))
        put(instruction_conn, string_type(data=episode.instruction), "std_msgs/msg/String", 0)
        for step in range(count):
            stamp = step * CONTROL_PERIOD_NS
            put(image_conn, _image_message(store, episode.images[step], stamp, "agentview"),
                "sensor_msgs/msg/Image", stamp)
            if wrist_conn is not None:
                put(wrist_conn, _image_message(store, episode.wrist_images[step], stamp, "wrist"),
                    "sensor_msgs/msg/Image", stamp)
            put(proprio_conn, _array_message(store, episode.proprio[step]), "std_msgs/msg/Float32MultiArray",
                stamp)
            put(action_conn, _array_message(store, episode.actions[step]), "std_msgs/msg/Float32MultiArray",
                stamp)
        put(info_conn, string_type(data=json.dumps(info)), "std_msgs/msg/String", count * CONTROL_PERIOD_NS)
    partial.rename(path)
    return path


def read_episode_bag(path: str | Path) -> EpisodeRecord:
    """Read an episode written by :func:`write_episode_bag`; BagError names the file if it is damaged."""
    path = Path(path)
    if not path.is_dir():
        raise BagError(f"episode bag {path} does not exist (expected a rosbag2 directory)")
    try:
        return _read(path)
    except BagError:
        raise
    except Exception as err:  # rosbags raises many types for damaged files; all mean the same here
        raise BagError(f"episode bag {path} is corrupt or truncated: {type(err).__name__}: {err}") from None


def _read(path: Path) -> EpisodeRecord:
    from rosbags.rosbag2 import Reader
    store = _typestore()
    series: dict[str, list] = {IMAGE_TOPIC: [], WRIST_TOPIC: [], PROPRIO_TOPIC: [], ACTION_TOPIC: []}
    instruction, info = None, None
    with Reader(path) as reader:
        for connection, _, raw in reader.messages():
            message = store.deserialize_cdr(raw, connection.msgtype)
            topic = connection.topic
            if topic in (IMAGE_TOPIC, WRIST_TOPIC):
                series[topic].append(np.asarray(message.data, dtype=np.uint8).reshape(
                    message.height, message.width, 3))
            elif topic in (PROPRIO_TOPIC, ACTION_TOPIC):
                series[topic].append(np.asarray(message.data, dtype=np.float32))
            elif topic == INSTRUCTION_TOPIC:
                instruction = message.data
            elif topic == INFO_TOPIC:
                info = json.loads(message.data)
    if info is None or instruction is None:
        raise BagError(f"episode bag {path} is truncated: no {INFO_TOPIC} or {INSTRUCTION_TOPIC} message")
    count = info["num_steps"]
    lengths = {topic: len(values) for topic, values in series.items()
               if topic != WRIST_TOPIC or info["has_wrist"]}
    if any(length != count for length in lengths.values()):
        raise BagError(f"episode bag {path} is truncated: {lengths} messages for {count} steps")
    known = {"suite", "task_id", "init_state_id", "success", "num_steps", "instruction", "has_wrist"}
    return EpisodeRecord(
        images=np.stack(series[IMAGE_TOPIC]), proprio=np.stack(series[PROPRIO_TOPIC]),
        actions=np.stack(series[ACTION_TOPIC]), instruction=instruction, task_id=int(info["task_id"]),
        init_state_id=int(info["init_state_id"]), suite=info["suite"], success=bool(info["success"]),
        wrist_images=np.stack(series[WRIST_TOPIC]) if info["has_wrist"] else None,
        extra={k: v for k, v in info.items() if k not in known})
