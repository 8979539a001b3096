"""Visualisation bags: a real trajectory bag (MCAP) in, camera images and rviz markers out."""
from __future__ import annotations

import numpy as np
import pytest


def write_trajectory_bag(path, steps: int = 5):
    """A trajectory bag of one finished episode, written the way the recorder writes it (CDR bytes)."""
    from rclpy.serialization import serialize_message

    from vla_rl_ros.core.envs.base import Observation
    from vla_rl_ros.msg import StepRewardBatch
    from vla_rl_ros.nodes import convert
    from vla_rl_ros.nodes.trajectory_bags import TrajectoryBagWriter
    writer = TrajectoryBagWriter(path)
    rng = np.random.default_rng(0)
    for step in range(steps):
        obs = Observation(image=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                          instruction="stack the cups",
                          proprio=np.array([0.5 + 0.01 * step, 0, 0.3, 0, 0, 0, 0.04, 0.04], np.float32),
                          task_id=0, init_state_id=0, step=step)
        stamp = (step + 1) * 50_000_000
        writer.write("observations", serialize_message(
            convert.observations_to_msg("franka", step + 1, [0], [7], [obs])), stamp)
        writer.write("actions", serialize_message(convert.actions_to_msg(
            "franka", step + 1, [0], 2, np.full((1, 7), 31800), np.zeros((1, 7)), np.zeros((1, 7)),
            np.zeros(1), 1.0)), stamp + 1)
        writer.write("step_rewards", serialize_message(StepRewardBatch(
            bridge_id="franka", step_seq=step + 1, env_ids=[0], progress=[step / steps], rewards=[0.0])),
            stamp + 2)
    writer.write("episode_results", serialize_message(convert.episode_result_to_msg(
        "franka", 0, 7, 0, 0, steps, True, False, False)), (steps + 1) * 50_000_000)
    writer.close()


def test_viz_bag_holds_images_and_markers_per_step(tmp_path):
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import Image
    from visualization_msgs.msg import MarkerArray

    from vla_rl_ros.cli.main import main
    from vla_rl_ros.nodes.bag_viz import write_viz_bag
    write_trajectory_bag(tmp_path / "iter_0000")
    counts = write_viz_bag(tmp_path / "iter_0000", tmp_path / "viz")
    assert counts == {"episodes": 1, "steps": 5}
    seen: dict[str, list] = {}
    with Reader(tmp_path / "viz") as reader:
        assert any(p.suffix == ".mcap" for p in (tmp_path / "viz").iterdir())
        for connection, stamp, raw in reader.messages():
            kind = Image if connection.topic == "/camera/image_raw" else MarkerArray
            seen.setdefault(connection.topic, []).append((stamp, deserialize_message(bytes(raw), kind)))
    assert len(seen["/camera/image_raw"]) == 5 and len(seen["/markers"]) == 5
    last = {m.ns: m for m in seen["/markers"][-1][1].markers}
    assert len(last["eef_path"].points) == 5 and last["eef_path"].points[-1].x == pytest.approx(0.54)
    assert last["task"].text == "stack the cups"
    assert last["prm_progress"].text == "progress 0.80 (policy v2)"
    assert last["safety"].text.endswith("success")
    assert seen["/camera/image_raw"][0][1].encoding == "rgb8"
    assert main(["viz-bag", str(tmp_path / "missing"), "--out", str(tmp_path / "viz2")]) == 2
    assert main(["viz-bag", str(tmp_path / "iter_0000"), "--out", str(tmp_path / "viz3")]) == 0
