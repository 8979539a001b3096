"""Crash-safe trajectory data (issue 26): what a killed recorder, a restarted bridge or a restarted
learner used to lose, splice or train on twice.

- A recorder killed with SIGKILL mid-bag used to leave a 0-byte ``.mcap`` without metadata (every
  episode of the bag lost): now its restart recovers every finished episode and announces the bag.
- A restarted bridge starts its episode ids and step_seq at 0 again: its episodes used to be
  spliced into the previous run's; now they are keyed by the run's incarnation, and the previous
  run's unfinished episodes are evicted as orphans, counted.
- Turns are ordered by step sequence, not by arrival.
- A restarted learner used to discard re-delivered bags as "1 version behind", lose the turns it
  carried between bags, bump the version on a skipped update, and forget what it had trained on
  when it crashed between writing an adapter and its state.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message

from bag_helpers import TINY, collect_toy_episodes, write_bag
from dds_domains import isolate_dds
from vla_rl_ros.core.envs.base import Observation
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, EpisodeResult, ObservationBatch, TrajectoryBagInfo
from vla_rl_ros.nodes import convert, qos
from vla_rl_ros.core.rl import checkpoint as ckpt
from vla_rl_ros.nodes.trajectory_bags import (TrajectoryBagWriter, read_episodes, rebuild_episodes,
                                              to_core_episode, typestore)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_episodes():
    return collect_toy_episodes()


def turn(seq, episode, step, incarnation=1, bridge="b", env=0):
    obs = Observation(image=np.full((8, 8, 3), seq % 255, np.uint8), instruction="reach", task_id=0,
                      proprio=np.zeros(8, np.float32), init_state_id=0, step=step)
    return (convert.observations_to_msg(bridge, seq, [env], [episode], [obs], incarnation=incarnation),
            convert.actions_to_msg(bridge, seq, [env], 0, np.full((1, 7), 300), np.zeros((1, 7)),
                                   np.full((1, 7), -1.0), np.zeros(1), 1.0, incarnation=incarnation))


def result(episode, steps, last_seq, incarnation=1, bridge="b", env=0):
    return convert.episode_result_to_msg(bridge, env, episode, 0, 0, steps, True, False, False,
                                         num_decisions=steps, last_step_seq=last_seq, incarnation=incarnation)


# ----------------------------------------------------------------------------- recorder
def test_a_recorder_killed_mid_bag_loses_only_the_episode_in_progress(tmp_path, monkeypatch):
    isolate_dds(monkeypatch)
    bag_dir = tmp_path / "bags"
    args = [sys.executable, "-m", "vla_rl_ros.nodes.recorder_node", "--ros-args",
            "-p", f"graph.bag_dir:={bag_dir}", "-p", "train.episodes_per_iter:=100", "-p", "env.num_envs:=1",
            "-p", "env.image_size:=16"]
    recorder = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = rclpy.Context()
    rclpy.init(context=context)
    client = Node("recorder_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(client)
    pubs = {t: client.create_publisher(m, t, qos.BATCH) for t, m in (
        (topics.OBSERVATIONS, ObservationBatch), (topics.ACTIONS, ActionBatch),
        (topics.EPISODE_RESULTS, EpisodeResult))}
    announced = []
    client.create_subscription(TrajectoryBagInfo, topics.TRAJECTORY_BAGS, announced.append, qos.BAG_NOTICES)

    def spin(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.02)
    try:
        deadline = time.monotonic() + 60
        while not all(p.get_subscription_count() for p in pubs.values()) and time.monotonic() < deadline:
            spin(0.1)
        assert recorder.poll() is None and all(p.get_subscription_count() for p in pubs.values())
        seq, finished = 0, 6
        for episode in range(finished + 1):  # the last one is still running when the recorder dies
            for step in range(3):
                seq += 1
                obs, act = turn(seq, episode, step)
                pubs[topics.OBSERVATIONS].publish(obs)
                pubs[topics.ACTIONS].publish(act)
                spin(0.02)
            if episode < finished:
                pubs[topics.EPISODE_RESULTS].publish(result(episode, 3, seq))
        spin(2.0)
        recorder.send_signal(signal.SIGKILL)
        recorder.wait(timeout=10)
        crashed = bag_dir / "iter_000000"
        assert not (crashed / "metadata.yaml").exists() and (crashed / "iter_000000.mcap").stat().st_size > 0

        from vla_rl_ros.nodes.recorder_node import RecorderNode
        restarted = RecorderNode(context=context, parameter_overrides=[
            Parameter("graph.bag_dir", value=str(bag_dir)), Parameter("env.num_envs", value=1),
            Parameter("env.image_size", value=16)])
        executor.add_node(restarted)
        try:
            assert [i.num_episodes for i in restarted.recovered] == [finished]
            assert restarted.recovered[0].partial and restarted.iteration == 1
            spin(1.0)
            assert [(i.bag_path, i.num_episodes) for i in announced] == [(str(crashed), finished)]
            found, carry = read_episodes([crashed])
            episodes, rejected, _ = rebuild_episodes(found, (0, 1000))
            assert len(episodes) == finished and rejected == {}, "an episode that had finished was lost"
            # The one in progress was not synced (nothing finished after its turns): at most part of it.
            assert {k[3] for k in carry["episodes"]} <= {finished}
            assert not (bag_dir / "iter_000000.crashed").exists()
        finally:
            executor.remove_node(restarted)
            restarted.destroy_node()
    finally:
        if recorder.poll() is None:
            recorder.kill()
        executor.shutdown()
        client.destroy_node()
        rclpy.shutdown(context=context)


# ----------------------------------------------------------------------------- reader
def write(path, messages):
    writer = TrajectoryBagWriter(path, typestore())
    for stamp, (topic, msg) in enumerate(messages, start=1):
        writer.write(topic, serialize_message(msg), stamp * 10)
    writer.close()


def test_a_restarted_bridge_is_not_spliced_into_its_previous_run(tmp_path):
    first = []
    for seq, step in ((1, 0), (2, 1)):  # run 1: episode 0 of env 0 has two turns, then the bridge dies
        obs, act = turn(seq, 0, step, incarnation=1)
        first += [(topics.OBSERVATIONS, obs), (topics.ACTIONS, act)]
    write(tmp_path / "iter_000000", first)
    second = []
    for seq, step in ((1, 0), (2, 1), (3, 2)):  # run 2 starts again at episode 0, step_seq 1
        obs, act = turn(seq, 0, step, incarnation=2)
        second += [(topics.OBSERVATIONS, obs), (topics.ACTIONS, act)]
    second.append((topics.EPISODE_RESULTS, result(0, 3, 3, incarnation=2)))
    write(tmp_path / "iter_000001", second)

    finished, carry = read_episodes([tmp_path / "iter_000000"])
    assert finished == [] and list(carry["episodes"]) == [("b", 1, 0, 0)]
    finished, carry = read_episodes([tmp_path / "iter_000001"], carry)
    assert [(e.incarnation, e.num_steps) for e in finished] == [(2, 3)], "the runs' turns were spliced"
    episode = to_core_episode(finished[0])
    assert episode.length == 3 and episode.executed == [1, 1, 1]
    # A newer episode ran in env 0 for a whole bag without a turn of the old one: an orphan.
    assert carry["episodes"] == {} and carry["evicted"] == 1, "the dead run's episode was kept"


def test_turns_are_ordered_by_step_sequence_and_end_at_the_last_one_run(tmp_path):
    obs = [turn(seq, 5, step) for seq, step in ((1, 0), (2, 1), (3, 2), (4, 3))]
    messages = [(topics.OBSERVATIONS, o) for o, _ in obs]
    # The actions reach the recorder in another order; the one of step_seq 4 answered an
    # observation after the episode had ended (the result names 3 as the last one it ran).
    messages += [(topics.ACTIONS, obs[i][1]) for i in (1, 0, 3)]
    messages += [(topics.EPISODE_RESULTS, result(5, 3, 3)), (topics.ACTIONS, obs[2][1])]
    write(tmp_path / "bag", messages)
    finished, _ = read_episodes([tmp_path / "bag"])
    episode = to_core_episode(finished[0])
    assert episode.length == 3 and episode.executed == [1, 1, 1]
    assert [int(image[0, 0, 0]) for image in episode.images[:3]] == [1, 2, 3]
    missing = [(topics.OBSERVATIONS, o) for o, _ in obs[:3]] + [(topics.ACTIONS, obs[i][1]) for i in (0, 1)]
    write(tmp_path / "missing", missing + [(topics.EPISODE_RESULTS, result(5, 3, 3))])
    episodes, rejected, problems = rebuild_episodes(read_episodes([tmp_path / "missing"])[0])
    assert episodes == [] and rejected == {"inconsistent": 1} and "step_seq 3" in problems[0]


# ----------------------------------------------------------------------------- learner
def learner(tmp_path, bag_dir, **overrides):
    from vla_rl_ros.nodes.learner_node import LearnerNode
    context = rclpy.Context()
    rclpy.init(context=context)
    settings = {**TINY, "graph.bag_dir": str(bag_dir), "train.output_dir": str(tmp_path / "run"), **overrides}
    parameters = [Parameter(k, value=v) for k, v in settings.items()]
    return LearnerNode(context=context, parameter_overrides=parameters), context


def close(node, context):
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_a_restarted_learner_trains_every_redelivered_bag_once(tmp_path, monkeypatch, toy_episodes,
                                                               one_torch_thread):
    """Bags recorded under v0 while the learner was down, announced again after its restart at v1:
    all trained on (the old learner discarded them as '1 version behind'), none twice."""
    isolate_dds(monkeypatch)
    bag_dir = tmp_path / "bags"
    for number in range(4):
        write_bag(bag_dir / f"iter_{number:06d}", toy_episodes, bridge=f"b{number}")
    node, context = learner(tmp_path, bag_dir)
    try:
        node.train_on_bag(str(bag_dir / "iter_000000"))
        assert node.version == 1
    finally:
        close(node, context)
    node, context = learner(tmp_path, bag_dir)  # restarted: the notices of bags 0-3 are re-delivered
    try:
        assert node.version == 1 and len(node.ledger.trained) == len(toy_episodes)
        for number in range(4):
            node._on_bag(TrajectoryBagInfo(bag_path=str(bag_dir / f"iter_{number:06d}"), policy_version=0,
                                           num_episodes=len(toy_episodes)))
        node._train_waiting()
        assert node.version == 2 and len(node.processed) == 4
        trained = node.ledger.trained
        assert len(trained) == 4 * len(toy_episodes) == len(set(trained)), trained
        assert node.ledger.counts.get("stale", 0) == 0
    finally:
        close(node, context)
    node, context = learner(tmp_path, bag_dir, max_policy_lag=0)  # the rule, strictly on-policy
    try:
        write_bag(bag_dir / "iter_000004", toy_episodes, bridge="late")  # recorded under v0, now v2
        node._train_waiting()
        assert node.version == 2 and node.ledger.counts["stale"] == len(toy_episodes)
    finally:
        close(node, context)


def test_a_skipped_update_keeps_the_policy_version(tmp_path, monkeypatch, toy_episodes, one_torch_thread):
    isolate_dds(monkeypatch)
    bag_dir = tmp_path / "bags"
    write_bag(bag_dir / "iter_000000", toy_episodes)
    node, context = learner(tmp_path, bag_dir)
    try:
        skipped = {"ppo/skipped": 1.0, "ppo/skip_reason": "non-finite loss"}
        node.trainer.update = lambda batch, generator=None: dict(skipped)
        metrics = node.train_on_bag(str(bag_dir / "iter_000000"))
        assert metrics["ppo/skipped"] == 1.0 and node.version == 0
        assert not (tmp_path / "run" / "adapters").exists()
        assert node.ledger.trained == [] and node.ledger.counts["skipped_update"] == len(toy_episodes)
        state = ckpt.load_checkpoint(tmp_path / "run")
        assert state["version"] == 0 and state["processed"] == [str(bag_dir / "iter_000000")]
    finally:
        close(node, context)


def test_a_learner_killed_between_its_adapters_and_its_state_resumes_from_the_state(
        tmp_path, monkeypatch, toy_episodes, one_torch_thread):
    isolate_dds(monkeypatch)
    bag_dir = tmp_path / "bags"
    write_bag(bag_dir / "iter_000000", toy_episodes)
    write_bag(bag_dir / "iter_000001", toy_episodes, bridge="second")
    node, context = learner(tmp_path, bag_dir)
    try:
        node.train_on_bag(str(bag_dir / "iter_000000"))
        # Update 2 wrote its adapters, then the process died before saving its state.
        node.policy.save_adapters(str(tmp_path / "run" / "adapters" / "v000002"), 2)
    finally:
        close(node, context)
    node, context = learner(tmp_path, bag_dir)
    try:
        assert node.version == 1 and node.processed == [str(bag_dir / "iter_000000")]
        node._train_waiting()
        assert node.version == 2 and len(node.ledger.trained) == 2 * len(toy_episodes)
        assert len(set(node.ledger.trained)) == len(node.ledger.trained), "an episode was trained on twice"
    finally:
        close(node, context)


def test_an_episode_spanning_two_bags_survives_a_learner_restart(tmp_path, monkeypatch, toy_episodes,
                                                                 one_torch_thread):
    isolate_dds(monkeypatch)
    episode = toy_episodes[0]
    assert episode.length >= 2
    bag_dir = tmp_path / "bags"
    bags = [bag_dir / "iter_000000", bag_dir / "iter_000001"]
    messages = [[], []]
    for t in range(episode.length):
        obs = Observation(image=episode.images[t], instruction=episode.instruction,
                          proprio=episode.proprio[t], task_id=episode.task_id, init_state_id=0, step=t)
        part = messages[0 if t == 0 else 1]  # the first turn in bag 0, the rest in bag 1
        part.append((topics.OBSERVATIONS, convert.observations_to_msg("b", t + 1, [0], [0], [obs],
                                                                      incarnation=3)))
        part.append((topics.ACTIONS, convert.actions_to_msg(
            "b", t + 1, [0], 0, episode.tokens[t][None], episode.actions[t][None],
            episode.log_probs[t][None], np.array([episode.values[t]]), 1.0, incarnation=3)))
    messages[1].append((topics.EPISODE_RESULTS, convert.episode_result_to_msg(
        "b", 0, 0, episode.task_id, 0, episode.env_steps, episode.success, episode.truncated, False,
        num_decisions=episode.length, last_step_seq=episode.length, incarnation=3)))
    for path, part in zip(bags, messages):
        write(path, part)
    node, context = learner(tmp_path, bag_dir)
    try:
        node.train_on_bag(str(bags[0]))  # nothing finished yet: episode 0 is carried
        assert list(node.carry["episodes"]) == [("b", 3, 0, 0)] and node.version == 0
    finally:
        close(node, context)
    node, context = learner(tmp_path, bag_dir)
    try:
        assert list(node.carry["episodes"]) == [("b", 3, 0, 0)], "the carry was lost with the process"
        node.train_on_bag(str(bags[1]))
        assert node.ledger.trained == ["b|3|0|0"] and node.ledger.counts.get("inconsistent", 0) == 0
        assert node.version == 1
    finally:
        close(node, context)
    assert os.path.isdir(bags[0])
