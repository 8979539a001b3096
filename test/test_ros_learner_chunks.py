"""The learner node on trajectory bags of action chunks, in-process over real rclpy.

Episodes of a tiny chunk policy (K = 3) on the toy env are collected by the core's rollout loop
and written as the recorder writes them (one ObservationBatch per decision, the ActionBatch with
the chunk, the EpisodeResult with env steps and decisions). Checked: the learner rebuilds the
turns and trains on them (a new adapter version announced with chunk size 3); a learner whose
policy emits chunks of 1 rejects the same bag by name and counts it; its adapters are refused by
a chunk-3 policy.
"""
import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message

from dds_domains import isolate_dds
from vla_rl_ros.core.config import load_config
from vla_rl_ros.core.envs.base import Observation
from vla_rl_ros.core.policy.policy import ChunkSizeError
from vla_rl_ros.core.rl.rollout import collect_episodes, policy_decoder
from vla_rl_ros.core.rl.train_loop import build_policy, make_env
from vla_rl_ros.graph import topics
from vla_rl_ros.nodes import convert
from vla_rl_ros.nodes.trajectory_bags import TrajectoryBagWriter, typestore

K = 3
SETTINGS = {"env.backend": "toy", "env.image_size": 32, "env.task_ids": [0, 1], "env.num_envs": 2,
            "env.max_episode_steps": 8, "policy.size": "tiny", "policy.image_size": 32,
            "ppo.minibatch_size": 4, "ppo.critic_warmup_iters": 0,
            "ppo.advantage_estimator": "critic"}  # three episodes of three contexts: no groups to compare


def settings(chunk: int) -> dict:
    return {**SETTINGS, "policy.chunk_size": chunk}


def write_chunk_bag(path, episodes) -> None:
    """The bag the recorder writes for these episodes (one env per episode, bridge 'b')."""
    writer = TrajectoryBagWriter(path, typestore())
    seq, stamp = 0, 0
    for number, episode in enumerate(episodes):
        step = 0
        for t in range(episode.length):
            seq, stamp = seq + 1, stamp + 10
            obs = Observation(image=episode.images[t], instruction=episode.instruction,
                              proprio=episode.proprio[t], task_id=episode.task_id, init_state_id=0, step=step)
            writer.write(topics.OBSERVATIONS, serialize_message(
                convert.observations_to_msg("b", seq, [0], [number], [obs])), stamp)
            writer.write(topics.ACTIONS, serialize_message(convert.actions_to_msg(
                "b", seq, [0], 0, episode.tokens[t][None], episode.actions[t][None],
                episode.log_probs[t][None], np.array([episode.values[t]]), 1.0)), stamp + 1)
            step += episode.executed[t]
        final = Observation(image=episode.images[-1], instruction=episode.instruction,
                            proprio=episode.proprio[-1], task_id=episode.task_id, init_state_id=0)
        writer.write(topics.EPISODE_RESULTS, serialize_message(convert.episode_result_to_msg(
            "b", 0, number, episode.task_id, episode.init_state_id, episode.env_steps, episode.success,
            episode.truncated, False, final_observation=final, num_decisions=episode.length)), stamp + 2)
    writer.close()


@pytest.fixture(scope="module")
def chunk_bag(tmp_path_factory):
    cfg = load_config(None, [f"{k}={v}".replace(" ", "") for k, v in settings(K).items()])
    policy, env = build_policy(cfg), make_env(cfg.env)
    try:
        episodes = collect_episodes(env, policy_decoder(policy), [(0, 1), (1, 2), (0, 3)])
    finally:
        env.close()
    assert all(e.tokens[0].shape == (7 * K,) for e in episodes)
    path = tmp_path_factory.mktemp("bags") / "iter_000000"
    write_chunk_bag(path, episodes)
    return path, episodes


def learner(tmp_path, chunk: int):
    from vla_rl_ros.nodes.learner_node import LearnerNode
    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = [Parameter(k, value=v) for k, v in settings(chunk).items()]
    overrides.append(Parameter("train.output_dir", value=str(tmp_path / f"learner_k{chunk}")))
    return LearnerNode(context=context, parameter_overrides=overrides), context


def test_the_learner_trains_on_turns_of_chunks(chunk_bag, tmp_path, monkeypatch, one_torch_thread):
    isolate_dds(monkeypatch)
    path, episodes = chunk_bag
    node, context = learner(tmp_path, K)
    try:
        metrics = node.train_on_bag(str(path))
        assert node.version == 1 and metrics["rollout/episodes"] == len(episodes)
        assert metrics["rollout/decisions"] == sum(e.length for e in episodes)
        assert metrics["rollout/env_steps"] == sum(e.env_steps for e in episodes)
        assert metrics["ppo/skipped"] == 0.0 and metrics["ppo/warmup"] == 0.0 and node.rejected_bags == 0
        assert node.trainer.cfg.advantage_estimator == "critic"  # the config's estimator, as in vla-rl train
        announced = []
        node.version_pub.publish = announced.append  # what _announce sends on the latched topic
        node._announce()
        assert announced[-1].version == 1 and announced[-1].chunk_size == K
        single = build_policy(load_config(None, ["env.backend=toy", "env.task_ids=[0,1]", "env.image_size=32",
                                                 "policy.size=tiny", "policy.image_size=32"]))
        with pytest.raises(ChunkSizeError, match="trained on chunks of 3"):
            single.load_adapters(node.version_path)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_a_learner_of_another_chunk_size_rejects_the_bag_by_name(chunk_bag, tmp_path, monkeypatch,
                                                                 one_torch_thread):
    isolate_dds(monkeypatch)
    path, _ = chunk_bag
    node, context = learner(tmp_path, 1)
    logged = []
    node.get_logger().error = logged.append
    try:
        assert node.train_on_bag(str(path)) is None
        assert node.rejected_bags == 1 and node.version == 0 and str(path) not in node.processed
        assert "rejected" in logged[-1] and "chunks of [3] action(s)" in logged[-1]
        from vla_rl_ros.msg import TrajectoryBagInfo
        node._on_bag(TrajectoryBagInfo(bag_path=str(path), chunk_size=K, num_episodes=3))
        assert node.rejected_bags == 2 and "chunks of 3, this policy's in chunks of 1" in logged[-1]
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
