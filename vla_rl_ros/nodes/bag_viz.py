"""Visualisation bags from trajectory bags: camera images and rviz markers per recorded step.

The recorder keeps observations, actions and PRM scores (the data the learner needs). This turns
finished episodes of those bags into an MCAP bag with the topics the rviz config shows, so
``ros2 bag play`` + ``rviz/vla_rl_ros.rviz`` or Foxglove (open the ``.mcap``) replay what the
robot saw and did: ``/camera/image_raw`` (the policy's camera frames; with several environments
``/env_<id>/image_raw``) and ``/markers`` (end-effector path from the proprio, task instruction,
PRM progress). Steps are spaced at ``rate_hz`` from the start of the bag.

    vla-rl viz-bag runs/franka/bags/iter_0003 --out runs/franka/viz_0003   (cli/viz_bag_cmd.py)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_TOPIC = "/camera/image_raw"
MARKER_TOPIC = "/markers"


def write_viz_bag(bag_paths, out: str | Path, frame_id: str = "panda_link0", rate_hz: float = 20.0) -> dict:
    """Write the visualisation bag ``out`` for the finished episodes of ``bag_paths``; returns counts."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    from std_msgs.msg import Header

    from vla_rl_ros.nodes import convert, markers
    from vla_rl_ros.nodes.trajectory_bags import read_episodes

    episodes, _ = read_episodes([Path(p) for p in ([bag_paths] if isinstance(bag_paths, (str, Path))
                                                   else bag_paths)])
    if not episodes:
        raise ValueError(f"no finished episode in {bag_paths}")
    env_ids = sorted({e.env_id for e in episodes})
    store = get_typestore(Stores.ROS2_KILTED)
    writer = Writer(Path(out), version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    image_topics = {env: IMAGE_TOPIC if len(env_ids) == 1 else f"/env_{env}/image_raw" for env in env_ids}
    connections = {topic: writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=store)
                   for topic in set(image_topics.values())}
    connections[MARKER_TOPIC] = writer.add_connection(MARKER_TOPIC, "visualization_msgs/msg/MarkerArray",
                                                      typestore=store)
    counts = {"episodes": len(episodes), "steps": 0}
    stamp_ns, period_ns = 0, int(1e9 / rate_hz)
    try:
        for episode in episodes:
            path: list[list[float]] = []
            progress = None
            for step, (image, proprio) in enumerate(zip(episode.images, episode.proprio)):
                stamp_ns += period_ns
                header = Header(frame_id=frame_id)
                header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
                path.append([float(v) for v in np.asarray(proprio)[:3]])
                if step < len(episode.step_indices):  # progress is keyed by the turn's env step
                    progress = episode.progress.get(episode.step_indices[step], progress)
                image_msg = convert.image_to_msg(np.ascontiguousarray(image),
                                                 Header(stamp=header.stamp, frame_id="camera"))
                writer.write(connections[image_topics[episode.env_id]], stamp_ns,
                             serialize_message(image_msg))
                version = episode.policy_versions[step] if step < len(episode.policy_versions) else None
                status = f"episode {episode.episode_id} step {step}"
                if episode.result is not None and step == len(episode.images) - 1:
                    status += " success" if episode.result.success else " failure"
                array = markers.bridge_markers(header, path, None, False, episode.instruction, progress,
                                               status, policy_version=version)
                writer.write(connections[MARKER_TOPIC], stamp_ns, serialize_message(array))
                counts["steps"] += 1
    finally:
        writer.close()
    return counts
