"""The recorder in-process over real rclpy: a bag closes only once it holds each finished episode's
last ActionBatch (which nothing orders after the bridge's EpisodeResult), or marked partial."""
import time

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from dds_domains import isolate_dds
from vla_rl_ros.core.envs.base import Observation
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, EpisodeResult, ObservationBatch, TrajectoryBagInfo
from vla_rl_ros.nodes import convert, qos
from vla_rl_ros.nodes.recorder_node import CLOSE_GRACE_S, RecorderNode
from vla_rl_ros.nodes.trajectory_bags import read_episodes, rebuild_episodes


def test_a_bag_waits_for_the_last_chunk_of_its_episodes(tmp_path, monkeypatch):
    isolate_dds(monkeypatch)
    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = [Parameter("graph.bag_dir", value=str(tmp_path / "bags")),
                 Parameter("train.episodes_per_iter", value=1)]
    recorder = RecorderNode(context=context, parameter_overrides=overrides)
    client = Node("recorder_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    for node in (recorder, client):
        executor.add_node(node)
    pubs = {t: client.create_publisher(m, t, qos.BATCH) for t, m in (
        (topics.OBSERVATIONS, ObservationBatch), (topics.ACTIONS, ActionBatch),
        (topics.EPISODE_RESULTS, EpisodeResult))}
    bags = []
    client.create_subscription(TrajectoryBagInfo, topics.TRAJECTORY_BAGS, bags.append, qos.BAG_NOTICES)

    def spin_until(predicate, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            executor.spin_once(timeout_sec=0.02)
        return predicate()

    def turn(seq, episode, step):
        obs = Observation(image=np.zeros((8, 8, 3), np.uint8), instruction="reach",
                          proprio=np.zeros(8, np.float32), task_id=0, init_state_id=0, step=step)
        pubs[topics.OBSERVATIONS].publish(convert.observations_to_msg("b", seq, [0], [episode], [obs]))
        return convert.actions_to_msg("b", seq, [0], 0, np.full((1, 14), 300), np.zeros((1, 2, 7)),
                                      np.zeros((1, 14)), np.zeros(1), 1.0)
    try:
        assert spin_until(lambda: all(p.get_subscription_count() for p in pubs.values())
                          and client.count_publishers(topics.TRAJECTORY_BAGS))
        pubs[topics.ACTIONS].publish(turn(1, 0, 0))
        late = turn(2, 0, 2)
        spin_until(lambda: False, 0.3)
        pubs[topics.EPISODE_RESULTS].publish(convert.episode_result_to_msg(
            "b", 0, 0, 0, 0, 3, True, False, False, num_decisions=2, last_step_seq=2))
        spin_until(lambda: False, 0.5)
        assert bags == [] and recorder.awaited == {("b", 0, 2)}, "closed before the episode's last chunk"
        pubs[topics.ACTIONS].publish(late)
        assert spin_until(lambda: bags)
        assert not bags[0].partial
        assert (bags[0].num_steps, bags[0].num_decisions, bags[0].chunk_size) == (3, 2, 2)
        finished, _ = read_episodes([bags[0].bag_path], chunk_size=2)  # the result precedes the chunk
        episodes, rejected, _ = rebuild_episodes(finished)
        assert rejected == {} and episodes[0].executed == [2, 1]

        turn(3, 1, 0)  # the next episode's chunk never reaches the recorder: partial after the grace
        pubs[topics.EPISODE_RESULTS].publish(convert.episode_result_to_msg(
            "b", 0, 1, 0, 0, 2, False, True, False, num_decisions=1, last_step_seq=3))
        started = time.monotonic()
        assert spin_until(lambda: len(bags) == 2, CLOSE_GRACE_S + 10)
        assert bags[1].partial and time.monotonic() - started >= CLOSE_GRACE_S - 0.2
    finally:
        executor.shutdown()
        recorder.destroy_node()
        client.destroy_node()
        rclpy.shutdown(context=context)
