"""Every custom message crosses DDS between two processes and comes back with every field intact.

The child process (this file run as a script) echoes each message type from ``in/<Type>`` to
``out/<Type>``; the test publishes one filled sample of each type, after both directions have
matched, and compares what comes back field by field.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dds_domains import isolate_dds

ROOT = Path(__file__).resolve().parents[1]


def sample_messages() -> dict:
    """One message of each custom type with every field set to a distinctive value."""
    from std_msgs.msg import Header

    from vla_rl_ros.core.envs.base import Observation
    from vla_rl_ros.msg import PolicyVersion, StepRewardBatch, TaskAssignment, TrajectoryBagInfo
    from vla_rl_ros.nodes import convert

    header = Header(frame_id="agentview")
    header.stamp.sec, header.stamp.nanosec = 1234, 5678
    rng = np.random.default_rng(0)
    observations = [Observation(image=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                                instruction=f"pick up the thing {i}",
                                proprio=rng.normal(size=9).astype(np.float32),
                                task_id=3 + i, init_state_id=i, step=7 + i,
                                wrist_image=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
                    for i in range(2)]
    obs = convert.observations_to_msg("bridge_a", 42, [0, 1], [10, 11], observations, header)
    actions = convert.actions_to_msg("bridge_a", 42, [0, 1], 5, rng.integers(31744, 32000, (2, 7)),
                                     rng.uniform(-1, 1, (2, 7)), -rng.uniform(0, 5, (2, 7)),
                                     rng.normal(size=2), 1.5, header)
    chunks = convert.actions_to_msg("bridge_a", 43, [0, 1], 5, rng.integers(31744, 32000, (2, 21)),
                                    rng.uniform(-1, 1, (2, 3, 7)), -rng.uniform(0, 5, (2, 21)),
                                    rng.normal(size=2), 1.5, header)
    rewards = StepRewardBatch(header=header, bridge_id="bridge_a", step_seq=42, env_ids=[0, 1], prm_version=2,
                              progress=[0.25, 0.5], rewards=[0.025, -0.01])
    episode = convert.episode_result_to_msg("bridge_a", 1, 11, 4, 9, 77, True, False, False, "", header,
                                            observations[1], num_decisions=10, last_step_seq=41)
    aborted = convert.episode_result_to_msg("bridge_b", 0, 3, 2, 1, 5, False, False, True, "policy missing")
    bag = TrajectoryBagInfo(header=header, bag_path="/srv/bags/iter_0003", iteration=3, policy_version=2,
                            num_episodes=4, num_steps=300, num_successes=1, partial=True, num_decisions=38,
                            chunk_size=8)
    version = PolicyVersion(header=header, version=7, adapter_path="/srv/adapters/v0007", sha256="ab" * 32,
                            iteration=6, chunk_size=8)
    tasks = TaskAssignment(header=header, bridge_id="bridge_a", env_ids=[0, 1], task_ids=[2, 0],
                           init_state_ids=[13, 39])
    return {"ObservationBatch": [obs], "ActionBatch": [actions, chunks], "StepRewardBatch": [rewards],
            "EpisodeResult": [episode, aborted], "TrajectoryBagInfo": [bag], "PolicyVersion": [version],
            "TaskAssignment": [tasks]}


def run_echo() -> None:
    """Child process: republish everything from in/<Type> on out/<Type> until SIGTERM.

    It runs under the nodes' own ``run_node``, so it stops on SIGTERM the way every node does.
    """
    from rclpy.node import Node

    import vla_rl_ros.msg as msgs
    from vla_rl_ros.nodes import qos
    from vla_rl_ros.nodes.runner import run_node

    def echo_node() -> Node:
        node = Node("echo")
        node.keep = []
        for name in sample_messages():
            msg_type = getattr(msgs, name)
            pub = node.create_publisher(msg_type, f"out/{name}", qos.BATCH)
            node.keep.append(node.create_subscription(msg_type, f"in/{name}", pub.publish, qos.BATCH))
        return node
    sys.exit(run_node(echo_node))


def _wait(predicate, node, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        node.executor.spin_once(timeout_sec=0.05)
    return predicate()


@pytest.fixture()
def ros_node(monkeypatch):
    isolate_dds(monkeypatch)
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("roundtrip_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield node
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_every_message_round_trips_between_processes(ros_node):
    import vla_rl_ros.msg as msgs
    from vla_rl_ros.nodes import qos

    # The child imports this file's helpers (dds_domains) by name, as pytest's pythonpath lets the
    # test do: it needs test/helpers on its own path.
    path = [str(ROOT / "test" / "helpers"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               FASTDDS_DEFAULT_PROFILES_FILE=str(ROOT / "config" / "fastdds_local.xml"),
               PYTHONPATH=os.pathsep.join(p for p in path if p))
    child = subprocess.Popen([sys.executable, __file__, "echo"], env=env, cwd=ROOT)
    try:
        samples = sample_messages()
        received = {name: [] for name in samples}
        pubs, subs = {}, []
        for name in samples:
            msg_type = getattr(msgs, name)
            pubs[name] = ros_node.create_publisher(msg_type, f"in/{name}", qos.BATCH)
            subs.append(ros_node.create_subscription(msg_type, f"out/{name}", received[name].append,
                                                     qos.BATCH))

        def matched() -> bool:
            return (all(p.get_subscription_count() > 0 for p in pubs.values())
                    and all(s.get_publisher_count() > 0 for s in subs))
        assert _wait(matched, ros_node, 20.0), "echo process never matched every topic"
        for name, messages in samples.items():
            for msg in messages:
                pubs[name].publish(msg)
        expected = sum(len(m) for m in samples.values())
        assert _wait(lambda: sum(len(r) for r in received.values()) >= expected, ros_node, 10.0), \
            {k: len(v) for k, v in received.items()}
        for name, messages in samples.items():
            assert received[name] == messages, f"{name} changed on the way"
        # The payloads are still usable on arrival, not just equal: decode the batches back to core values.
        from vla_rl_ros.nodes import convert
        back = convert.observations_from_msg(received["ObservationBatch"][0], 32, known_task_ids=[3, 4])
        assert back.images.shape == (2, 32, 32, 3) and back.instructions[1] == "pick up the thing 1"
        assert np.array_equal(back.observations[0].image, np.frombuffer(
            samples["ObservationBatch"][0].images[0].data, np.uint8).reshape(32, 32, 3))
        decoded = convert.actions_from_msg(received["ActionBatch"][0], [0, 1])
        assert decoded.tokens.shape == (2, 7) and decoded.policy_version == 5
        chunked = convert.actions_from_msg(received["ActionBatch"][1], [0, 1], chunk_size=3)
        assert chunked.actions.shape == (2, 3, 7) and chunked.tokens.shape == (2, 21)
        assert np.allclose(chunked.actions.ravel(), samples["ActionBatch"][1].actions)
    finally:
        # How nodes stop on SIGTERM is test_node_runner's business; here a slow exit must not
        # hide the round-trip result, so a child still alive after 30 s is killed.
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)


if __name__ == "__main__" and sys.argv[1:] == ["echo"]:
    sys.path.insert(0, str(ROOT))
    run_echo()
