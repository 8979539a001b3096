"""The policy node in-process over real rclpy: batched replies, adapter swaps by PolicyVersion, best-of-N."""
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from dds_domains import isolate_dds
from vla_rl_ros.core.envs.base import Observation
from vla_rl_ros.core.envs.toy import toy_instruction
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, ObservationBatch, PolicyVersion
from vla_rl_ros.nodes import convert, qos
from vla_rl_ros.nodes.adapters import weights_checksum
from vla_rl_ros.nodes.policy_node import PolicyNode


@pytest.fixture(params=[1])
def graph(monkeypatch, request):
    isolate_dds(monkeypatch)
    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = [Parameter("env.backend", value="toy"), Parameter("env.image_size", value=32),
                 Parameter("env.task_ids", value=[0, 1]), Parameter("policy.size", value="tiny"),
                 Parameter("policy.image_size", value=32), Parameter("best_of_n", value=2),
                 Parameter("policy.chunk_size", value=request.param)]
    policy = PolicyNode(context=context, parameter_overrides=overrides)
    client = Node("policy_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(policy)
    executor.add_node(client)
    replies = []
    client.create_subscription(ActionBatch, topics.ACTIONS, replies.append, qos.BATCH)
    obs_pub = client.create_publisher(ObservationBatch, topics.OBSERVATIONS, qos.BATCH)
    version_pub = client.create_publisher(PolicyVersion, topics.POLICY_VERSION, qos.LATCHED)

    def spin_until(predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            executor.spin_once(timeout_sec=0.05)
        return predicate()
    spin_until(lambda: obs_pub.get_subscription_count() > 0 and client.count_publishers(topics.ACTIONS) > 0)
    yield policy, obs_pub, version_pub, replies, spin_until
    executor.shutdown()
    policy.destroy_node()
    client.destroy_node()
    rclpy.shutdown(context=context)


def _batch(bridge: str, seq: int, count: int = 2) -> ObservationBatch:
    rng = np.random.default_rng(seq)
    observations = [Observation(image=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                                instruction=toy_instruction(i % 2), proprio=np.zeros(8, np.float32),
                                task_id=i % 2, init_state_id=0) for i in range(count)]
    return convert.observations_to_msg(bridge, seq, list(range(count)), list(range(count)), observations)


def test_replies_to_each_bridge_and_swaps_adapters_only_when_verified(graph, tmp_path):
    policy, obs_pub, version_pub, replies, spin_until = graph
    obs_pub.publish(_batch("bridge_0", 1))
    obs_pub.publish(_batch("bridge_1", 7, count=1))
    assert spin_until(lambda: len(replies) >= 2)
    by_bridge = {r.bridge_id: r for r in replies}
    assert set(by_bridge) == {"bridge_0", "bridge_1"}
    assert by_bridge["bridge_0"].step_seq == 1 and len(by_bridge["bridge_0"].actions) == 14
    assert by_bridge["bridge_0"].chunk_size == 1  # K = 1: one action per observation, as before
    assert by_bridge["bridge_1"].step_seq == 7 and list(by_bridge["bridge_1"].env_ids) == [0]
    assert all(r.policy_version == 0 for r in replies)
    assert policy.decoded_batches <= 2

    # Version 1 written by "the learner" (same base model, perturbed adapters).
    adapters = tmp_path / "v000001"
    sha = policy.policy.save_adapters(str(adapters), 1)
    assert sha == weights_checksum(adapters)
    version_pub.publish(PolicyVersion(version=1, adapter_path=str(adapters), sha256="0" * 64))
    obs_pub.publish(_batch("bridge_0", 2))
    assert spin_until(lambda: len(replies) >= 3)
    assert replies[-1].policy_version == 0, "a checksum mismatch must keep the current weights"
    version_pub.publish(PolicyVersion(version=1, adapter_path=str(adapters), sha256=sha))
    obs_pub.publish(_batch("bridge_0", 3))
    assert spin_until(lambda: len(replies) >= 4 and replies[-1].step_seq == 3)
    assert replies[-1].policy_version == 1 and policy.version == 1


def test_malformed_batches_get_no_reply_and_the_node_keeps_serving(graph):
    policy, obs_pub, _, replies, spin_until = graph
    bad = _batch("bridge_0", 1)
    bad.task_ids = [0, 5]  # unknown task
    obs_pub.publish(bad)
    wrong_size = _batch("bridge_0", 2)
    wrong_size.images[0].height = 16
    obs_pub.publish(wrong_size)
    no_state = _batch("bridge_0", 4)  # the default policy reads the robot state: proprio is required
    no_state.proprio, no_state.proprio_dim = [], 0
    obs_pub.publish(no_state)
    obs_pub.publish(_batch("bridge_0", 5))
    assert spin_until(lambda: len(replies) >= 1)
    spin_until(lambda: False, timeout=1.0)
    assert policy.policy.reads_state
    assert [r.step_seq for r in replies] == [5]


@pytest.mark.parametrize("graph", [3], indirect=True)
def test_decodes_chunks_and_refuses_versions_of_another_chunk_size(graph, tmp_path):
    from vla_rl_ros.core.config import load_config
    from vla_rl_ros.core.rl.train_loop import build_policy
    policy, obs_pub, version_pub, replies, spin_until = graph
    assert policy.policy.chunk_size == 3
    obs_pub.publish(_batch("bridge_0", 1))
    assert spin_until(lambda: len(replies) >= 1)
    reply = convert.actions_from_msg(replies[-1], [0, 1], chunk_size=3,
                                     token_range=(policy.policy.arch.action_vocab_start,
                                                  policy.policy.arch.action_vocab_end))
    assert replies[-1].chunk_size == 3 and reply.actions.shape == (2, 3, 7) and reply.tokens.shape == (2, 21)
    assert np.allclose(reply.actions, policy.policy.chunk_actions(reply.tokens))

    # A version announced for chunks of 1, and adapters of a K = 1 policy announced without a chunk
    # size (an older learner): both refused with a reason, counted; the node keeps serving v0.
    cfg = load_config(None, ["env.backend=toy", "env.image_size=32", "env.task_ids=[0,1]", "policy.size=tiny",
                             "policy.image_size=32"])
    single = tmp_path / "v000001"
    sha = build_policy(cfg).save_adapters(str(single), 1)
    version_pub.publish(PolicyVersion(version=1, adapter_path=str(single), sha256=sha, chunk_size=1))
    assert spin_until(lambda: policy.refused_versions == 1)
    version_pub.publish(PolicyVersion(version=2, adapter_path=str(single), sha256=sha))
    obs_pub.publish(_batch("bridge_0", 2))
    assert spin_until(lambda: policy.refused_versions == 2 and len(replies) >= 2)
    assert replies[-1].policy_version == 0 and replies[-1].chunk_size == 3 and policy.version == 0
    own = tmp_path / "v000003"
    sha = policy.policy.save_adapters(str(own), 3)
    version_pub.publish(PolicyVersion(version=3, adapter_path=str(own), sha256=sha, chunk_size=3))
    obs_pub.publish(_batch("bridge_0", 3))
    assert spin_until(lambda: len(replies) >= 3 and replies[-1].step_seq == 3)
    assert replies[-1].policy_version == 3 and policy.refused_versions == 2
