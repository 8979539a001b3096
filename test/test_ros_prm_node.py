"""The PRM node in-process over real rclpy: one StepRewardBatch per answered step, shaped per episode."""
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from dds_domains import isolate_dds
from vla_rl_ros.core.config import load_config
from vla_rl_ros.core.envs.base import Observation
from vla_rl_ros.core.envs.toy import toy_instruction
from vla_rl_ros.core.rl.prm import ProcessRewardModel
from vla_rl_ros.core.rl.train_loop import build_policy
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, ObservationBatch, StepRewardBatch
from vla_rl_ros.nodes import convert, qos
from vla_rl_ros.nodes.prm_node import PrmNode


def _step(seq, episode_ids, tokens_rng, vocab, chunk=1):
    observations = [Observation(image=np.full((32, 32, 3), 40 * i, np.uint8),
                                instruction=toy_instruction(i), proprio=np.zeros(8, np.float32), task_id=i,
                                init_state_id=0, step=seq * chunk) for i in range(2)]
    obs = convert.observations_to_msg("b", seq, [0, 1], episode_ids, observations)
    actions = convert.actions_to_msg("b", seq, [0, 1], 0, tokens_rng.integers(*vocab, (2, 7 * chunk)),
                                     np.zeros((2, chunk, 7)), np.zeros((2, 7 * chunk)), np.zeros(2), 1.0)
    return obs, actions


def _prm_node(chunk=1):
    settings = {"env.backend": "toy", "env.image_size": 32, "env.task_ids": [0, 1], "policy.size": "tiny",
                "policy.image_size": 32, "policy.chunk_size": chunk}
    cfg = load_config(None, [f"{k}={v}".replace(" ", "") for k, v in settings.items()])
    prm = ProcessRewardModel(build_policy(cfg))  # untrained head: progress 0.5 everywhere
    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = [Parameter(name, value=value)
                 for name, value in (*settings.items(), ("reward.prm_weight", 0.5))]
    return PrmNode(prm=prm, context=context, parameter_overrides=overrides), context


def test_prm_node_scores_answered_steps_and_shapes_rewards_per_episode(monkeypatch):
    isolate_dds(monkeypatch)
    node, context = _prm_node()
    client = Node("prm_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    for n in (node, client):
        executor.add_node(n)
    received = []
    client.create_subscription(StepRewardBatch, topics.STEP_REWARDS, received.append, qos.BATCH)
    obs_pub = client.create_publisher(ObservationBatch, topics.OBSERVATIONS, qos.BATCH)
    act_pub = client.create_publisher(ActionBatch, topics.ACTIONS, qos.BATCH)
    try:
        def matched():
            return (obs_pub.get_subscription_count() and act_pub.get_subscription_count()
                    and client.count_publishers(topics.STEP_REWARDS))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not matched():
            executor.spin_once(timeout_sec=0.05)
        rng = np.random.default_rng(0)
        # env 0 starts episode 11 at step 3
        for seq, episodes in ((1, [10, 20]), (2, [10, 20]), (3, [11, 20])):
            obs, actions = _step(seq, episodes, rng, node.token_range)
            obs_pub.publish(obs)
            executor.spin_once(timeout_sec=0.2)
            act_pub.publish(actions)
        # An answer to a step never observed: ignored.
        act_pub.publish(_step(9, [10, 20], rng, node.token_range)[1])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(received) < 3:
            executor.spin_once(timeout_sec=0.05)
        assert [r.step_seq for r in received] == [1, 2, 3] and node.rejected_actions == 0
        assert all(np.allclose(r.progress, 0.5) for r in received)
        assert np.allclose(received[0].rewards, [0.25, 0.25])      # 0.5 * (0.5 - 0) on a first step
        assert np.allclose(received[1].rewards, [0.0, 0.0])        # no progress gained
        assert np.allclose(received[2].rewards, [0.25, 0.0])       # env 0 began a new episode
    finally:
        executor.shutdown()
        node.destroy_node()
        client.destroy_node()
        rclpy.shutdown(context=context)


def test_prm_node_scores_turns_and_counts_chunks_it_cannot_score(monkeypatch):
    isolate_dds(monkeypatch)
    node, context = _prm_node(chunk=2)
    client = Node("prm_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    for n in (node, client):
        executor.add_node(n)
    received = []
    client.create_subscription(StepRewardBatch, topics.STEP_REWARDS, received.append, qos.BATCH)
    obs_pub = client.create_publisher(ObservationBatch, topics.OBSERVATIONS, qos.BATCH)
    act_pub = client.create_publisher(ActionBatch, topics.ACTIONS, qos.BATCH)

    def spin_until(predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            executor.spin_once(timeout_sec=0.05)
        return predicate()
    try:
        assert spin_until(lambda: obs_pub.get_subscription_count() and act_pub.get_subscription_count()
                          and client.count_publishers(topics.STEP_REWARDS), 20)
        rng = np.random.default_rng(1)
        one, one_actions = _step(1, [10, 20], rng, node.token_range, chunk=1)  # chunks of 1 for a PRM of 2
        off_vocab, bad_tokens = _step(2, [10, 20], rng, node.token_range, chunk=2)
        bad_tokens.action_tokens[0] = 3  # not an action token of the PRM's vocabulary
        good, good_actions = _step(3, [10, 20], rng, node.token_range, chunk=2)
        for obs, actions in ((one, one_actions), (off_vocab, bad_tokens), (good, good_actions)):
            obs_pub.publish(obs)
            executor.spin_once(timeout_sec=0.2)
            act_pub.publish(actions)
        assert spin_until(lambda: received and node.rejected_actions == 2)
        spin_until(lambda: False, timeout=0.5)
        assert [r.step_seq for r in received] == [3] and np.allclose(received[0].progress, 0.5)
        assert np.allclose(received[0].rewards, [0.25, 0.25])  # 0.5 * (0.5 - 0) on a first turn
    finally:
        executor.shutdown()
        node.destroy_node()
        client.destroy_node()
        rclpy.shutdown(context=context)


def test_prm_node_without_a_model_refuses_to_start():
    from vla_rl_ros.core.config_io import ConfigError
    from vla_rl_ros.nodes.prm_node import load_reward_model
    with pytest.raises(ConfigError, match="reward.prm_path"):
        load_reward_model(load_config(None, []))
