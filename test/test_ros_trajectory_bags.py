"""Trajectory bags: what the recorder writes is what the learner rebuilds, across bag boundaries."""
import numpy as np
import pytest
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from vla_rl_ros.core.envs.base import Observation
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import StepRewardBatch
from vla_rl_ros.nodes import convert
from vla_rl_ros.nodes.trajectory_bags import TrajectoryBagWriter, read_episodes, to_core_episode, typestore


def _step(writer, seq, episode_ids, steps, rng, stamp):
    observations = [Observation(image=np.full((8, 8, 3), seq, np.uint8), instruction="reach red",
                                proprio=np.full(8, seq, np.float32), task_id=1, init_state_id=0, step=s)
                    for s in steps]
    writer.write(topics.OBSERVATIONS, serialize_message(
        convert.observations_to_msg("b", seq, [0, 1], episode_ids, observations)), stamp)
    writer.write(topics.ACTIONS, serialize_message(convert.actions_to_msg(
        "b", seq, [0, 1], 3, rng.integers(0, 256, (2, 7)), rng.uniform(-1, 1, (2, 7)), -np.ones((2, 7)),
        np.array([0.5, 0.25]), 1.5)), stamp + 1)
    writer.write(topics.STEP_REWARDS, serialize_message(StepRewardBatch(
        bridge_id="b", step_seq=seq, env_ids=[0, 1], progress=[0.1 * seq, 0.2], rewards=[0.0, 0.0])),
        stamp + 2)


def test_episodes_are_rebuilt_across_bags_with_progress_and_terminal_observation(tmp_path):
    rng = np.random.default_rng(0)
    store = typestore()
    first = TrajectoryBagWriter(tmp_path / "iter_000000", store)
    _step(first, 1, [10, 11], [0, 0], rng, 100)
    _step(first, 2, [10, 11], [1, 1], rng, 200)
    final = Observation(image=np.full((8, 8, 3), 99, np.uint8), instruction="reach red",
                        proprio=np.full(8, 99, np.float32), task_id=1, init_state_id=4)
    first.write(topics.EPISODE_RESULTS, serialize_message(convert.episode_result_to_msg(
        "b", 0, 10, 1, 4, 2, True, False, False, final_observation=final)), 300)
    first.close()
    second = TrajectoryBagWriter(tmp_path / "iter_000001", store)
    _step(second, 3, [12, 11], [0, 2], rng, 400)  # env 0 started episode 12; env 1 goes on
    second.write(topics.EPISODE_RESULTS, serialize_message(convert.episode_result_to_msg(
        "b", 1, 11, 1, 5, 3, False, True, False, final_observation=final)), 500)
    second.close()

    finished, carry = read_episodes([tmp_path / "iter_000000"])
    assert [(e.env_id, e.episode_id, e.num_steps) for e in finished] == [(0, 10, 2)]
    episode = to_core_episode(finished[0])
    assert episode.success and episode.length == 2 and len(episode.images) == 3
    assert np.all(episode.images[-1] == 99) and episode.env_rewards == [0.0, 1.0]
    assert episode.progress == pytest.approx([0.0, 0.1, 0.2])
    assert episode.values == [0.5, 0.5] and episode.log_probs[0].shape == (7,)

    finished, carry = read_episodes([tmp_path / "iter_000001"], carry)
    assert [(e.env_id, e.episode_id, e.num_steps) for e in finished] == [(1, 11, 3)]
    spanning = to_core_episode(finished[0])
    assert spanning.truncated and not spanning.success and spanning.length == 3
    assert [int(img[0, 0, 0]) for img in spanning.images] == [1, 2, 3, 99]
    assert list(carry["episodes"]) == [("b", 0, 0, 12)]  # still running: kept for the next bag


def test_bags_open_with_a_plain_rosbags_reader(tmp_path):
    writer = TrajectoryBagWriter(tmp_path / "bag", typestore())
    _step(writer, 1, [0, 1], [0, 0], np.random.default_rng(1), 10)
    writer.close()
    store = typestore()
    with Reader(tmp_path / "bag") as reader:
        seen = {c.topic: c.msgtype for c in reader.connections}
        assert seen["/observations"] == "vla_rl_ros/msg/ObservationBatch"
        for connection, _, raw in reader.messages():
            if connection.topic == "/observations":
                msg = store.deserialize_cdr(raw, connection.msgtype)
                assert msg.bridge_id == "b" and msg.images[0].encoding == "rgb8"
    assert get_typestore(Stores.ROS2_KILTED) is not None


def test_episode_without_steps_is_not_usable(tmp_path):
    writer = TrajectoryBagWriter(tmp_path / "bag", typestore())
    writer.write(topics.EPISODE_RESULTS, serialize_message(convert.episode_result_to_msg(
        "b", 0, 1, 0, 0, 0, False, False, True, "worker crashed")), 1)
    writer.close()
    finished, _ = read_episodes([tmp_path / "bag"])
    assert len(finished) == 1 and to_core_episode(finished[0]) is None


def test_an_action_batch_the_bridge_rejected_is_not_training_data(tmp_path):
    rng = np.random.default_rng(3)
    writer = TrajectoryBagWriter(tmp_path / "bag", typestore())
    obs = [Observation(image=np.zeros((8, 8, 3), np.uint8), instruction="reach",
                       proprio=np.zeros(8, np.float32), task_id=0, init_state_id=0)] * 2
    writer.write(topics.OBSERVATIONS,
                 serialize_message(convert.observations_to_msg("b", 1, [0, 1], [5, 6], obs)), 1)
    poisoned = convert.actions_to_msg("b", 1, [0, 1], 0, np.zeros((2, 7)), np.zeros((2, 7)), np.zeros((2, 7)),
                                      np.zeros(2), 1.0)
    poisoned.actions = np.full(14, np.nan, np.float32)
    writer.write(topics.ACTIONS, serialize_message(poisoned), 2)
    applied = convert.actions_to_msg("b", 1, [0, 1], 0, rng.integers(139, 395, (2, 7)), np.zeros((2, 7)),
                                     np.zeros((2, 7)), np.zeros(2), 1.0)
    writer.write(topics.ACTIONS, serialize_message(applied), 3)
    for env_id, episode_id in ((0, 5), (1, 6)):
        writer.write(topics.EPISODE_RESULTS, serialize_message(convert.episode_result_to_msg(
            "b", env_id, episode_id, 0, 0, 1, False, True, False)), 4)
    writer.close()
    finished, _ = read_episodes([tmp_path / "bag"])
    assert [e.num_steps for e in finished] == [1, 1]
    assert all(int(e.tokens[0].min()) >= 139 for e in finished), "the NaN batch's tokens leaked into the data"


def test_prm_scores_arriving_after_the_episode_ended_still_count(tmp_path):
    rng = np.random.default_rng(4)
    writer = TrajectoryBagWriter(tmp_path / "bag", typestore())
    obs = [Observation(image=np.zeros((8, 8, 3), np.uint8), instruction="reach",
                       proprio=np.zeros(8, np.float32), task_id=0, init_state_id=0, step=0)] * 2
    writer.write(topics.OBSERVATIONS,
                 serialize_message(convert.observations_to_msg("b", 1, [0, 1], [5, 6], obs)), 1)
    writer.write(topics.ACTIONS, serialize_message(convert.actions_to_msg(
        "b", 1, [0, 1], 0, rng.integers(139, 395, (2, 7)), np.zeros((2, 7)), np.zeros((2, 7)), np.zeros(2),
        1.0)), 2)
    for env_id, episode_id in ((0, 5), (1, 6)):
        writer.write(topics.EPISODE_RESULTS, serialize_message(convert.episode_result_to_msg(
            "b", env_id, episode_id, 0, 0, 1, True, False, False)), 3)
    writer.write(topics.STEP_REWARDS, serialize_message(StepRewardBatch(
        bridge_id="b", step_seq=1, env_ids=[0, 1], progress=[0.7, 0.9], rewards=[0.07, 0.09])), 4)
    writer.close()
    finished, carry = read_episodes([tmp_path / "bag"])
    scored = [to_core_episode(e).progress.tolist() for e in finished]
    assert scored == [[0.0, pytest.approx(0.7)], [0.0, pytest.approx(0.9)]]
    assert carry["progress"] == {} and carry["episodes"] == {}


# ----------------------------------------------------------------------------- action chunks
K = 4


def _turn(writer, seq, episode_id, step, rng, stamp, chunk=K, progress=None):
    """One decision of a one-env bridge: the observation at env step ``step``, a chunk of ``chunk``."""
    obs = Observation(image=np.full((8, 8, 3), seq, np.uint8), instruction="reach red",
                      proprio=np.full(8, seq, np.float32), task_id=1, init_state_id=0, step=step)
    writer.write(topics.OBSERVATIONS, serialize_message(
        convert.observations_to_msg("b", seq, [0], [episode_id], [obs])), stamp)
    writer.write(topics.ACTIONS, serialize_message(convert.actions_to_msg(
        "b", seq, [0], 1, rng.integers(139, 395, (1, chunk * 7)), rng.uniform(-1, 1, (1, chunk, 7)),
        -np.ones((1, chunk * 7)), np.array([0.5]), 1.5)), stamp + 1)
    if progress is not None:
        writer.write(topics.STEP_REWARDS, serialize_message(StepRewardBatch(
            bridge_id="b", step_seq=seq, env_ids=[0], progress=[progress], rewards=[0.0])), stamp + 2)


def _end(writer, episode_id, num_steps, num_decisions, stamp, success=True):
    writer.write(topics.EPISODE_RESULTS, serialize_message(convert.episode_result_to_msg(
        "b", 0, episode_id, 1, 3, num_steps, success, not success, False, num_decisions=num_decisions)),
        stamp)


def test_chunked_episodes_are_rebuilt_as_turns_with_executed_steps(tmp_path):
    from vla_rl_ros.nodes.trajectory_bags import rebuild_episodes
    rng = np.random.default_rng(5)
    writer = TrajectoryBagWriter(tmp_path / "bag", typestore())
    # 10 env steps in 3 decisions: 4 + 4 + 2 (the episode ended inside the last chunk).
    for seq, step in ((1, 0), (2, 4), (3, 8)):
        _turn(writer, seq, 7, step, rng, seq * 10, progress=0.1 * seq)
    _end(writer, 7, 10, 3, 100)
    writer.close()
    finished, carry = read_episodes([tmp_path / "bag"], chunk_size=K)
    assert [(e.num_steps, e.step_indices, e.chunk_size) for e in finished] == [(3, [0, 4, 8], K)]
    episode = to_core_episode(finished[0], token_range=(139, 395))
    assert episode.length == 3 and episode.executed == [4, 4, 2] and episode.env_steps == 10
    assert episode.tokens[0].shape == (K * 7,) and episode.actions[0].shape == (K, 7)
    assert episode.log_probs[0].shape == (K * 7,) and len(episode.images) == 4
    assert episode.env_rewards == [0.0, 0.0, 1.0]
    assert episode.progress == pytest.approx([0.0, 0.1, 0.2, 0.3])  # keyed by the turn's env step
    episodes, rejected, problems = rebuild_episodes(finished, (139, 395))
    assert len(episodes) == 1 and rejected == {} and problems == []


def test_a_bag_of_another_chunk_size_is_a_named_rejection_that_leaves_the_carry_alone(tmp_path):
    from vla_rl_ros.core.policy.policy import ChunkSizeError
    rng = np.random.default_rng(6)
    first = TrajectoryBagWriter(tmp_path / "iter_000000", typestore())
    _turn(first, 1, 7, 0, rng, 10)  # episode 7 goes on into the next bag
    first.close()
    other = TrajectoryBagWriter(tmp_path / "iter_000001", typestore())
    _turn(other, 2, 7, 4, rng, 20, chunk=1)
    _end(other, 7, 5, 2, 30)
    other.close()
    finished, carry = read_episodes([tmp_path / "iter_000000"], chunk_size=K)
    assert finished == [] and len(carry["episodes"][("b", 0, 0, 7)].tokens) == 1
    with pytest.raises(ChunkSizeError, match=r"iter_000001 holds action chunks of \[1\] action\(s\)"):
        read_episodes([tmp_path / "iter_000001"], carry, chunk_size=K)
    assert len(carry["episodes"][("b", 0, 0, 7)].tokens) == 1, "a rejected bag must not touch the carry"


def test_turns_that_do_not_add_up_are_counted_not_trained_on(tmp_path):
    from vla_rl_ros.nodes.trajectory_bags import rebuild_episodes
    rng = np.random.default_rng(7)
    writer = TrajectoryBagWriter(tmp_path / "bag", typestore())
    _turn(writer, 1, 1, 0, rng, 10)
    _turn(writer, 3, 1, 8, rng, 20)  # the decision at env step 4 never reached the bag
    _end(writer, 1, 10, 3, 30)
    _turn(writer, 4, 2, 0, rng, 40)
    _turn(writer, 5, 2, 4, rng, 50)
    # A stray batch of another chunk size answering the pending observation: the bridge (K = 4)
    # rejected it, so it must not take the place of the real chunk that follows.
    _turn(writer, 6, 2, 8, rng, 60, chunk=2)
    writer.write(topics.ACTIONS, serialize_message(convert.actions_to_msg(
        "b", 6, [0], 1, rng.integers(139, 395, (1, K * 7)), np.zeros((1, K, 7)), -np.ones((1, K * 7)),
        np.zeros(1), 1.5)), 62)
    _end(writer, 2, 9, 3, 70, success=False)
    # An operator ended episode 3 right after its second observation: that chunk never ran.
    _turn(writer, 7, 3, 0, rng, 80)
    _turn(writer, 8, 3, 4, rng, 90)
    _end(writer, 3, 4, 1, 100)
    writer.close()
    finished, _ = read_episodes([tmp_path / "bag"], chunk_size=K)
    episodes, rejected, problems = rebuild_episodes(finished, (139, 395))
    assert rejected == {"inconsistent": 1} and "2 turns recorded, the bridge reported 3" in problems[0]
    assert [e.executed for e in episodes] == [[4, 4, 1], [4]]
    assert episodes[0].actions[2].shape == (K, 7) and not episodes[0].actions[2].any()
    _, rejected, problems = rebuild_episodes(finished, (139, 200))
    assert rejected == {"inconsistent": 3} and "outside the policy's action vocabulary" in problems[-1]
