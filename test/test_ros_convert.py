"""Conversions between core values and messages: exact round trips and clear rejection of bad data."""
import numpy as np
import pytest

from vla_rl_ros.core.envs.base import Observation
from vla_rl_ros.msg import TaskAssignment
from vla_rl_ros.nodes import convert


def _observations(count=2, size=16):
    rng = np.random.default_rng(1)
    return [Observation(image=rng.integers(0, 255, (size, size, 3), dtype=np.uint8), instruction=f"task {i}",
                        proprio=rng.normal(size=8).astype(np.float32), task_id=i, init_state_id=0, step=i)
            for i in range(count)]


def _batch(count=2, size=16):
    return convert.observations_to_msg("b0", 3, list(range(count)), [10 + i for i in range(count)],
                                       _observations(count, size))


def _actions(count=2, actions=None):
    rng = np.random.default_rng(2)
    actions = rng.uniform(-1, 1, (count, 7)) if actions is None else actions
    return convert.actions_to_msg("b0", 3, list(range(count)), 4, rng.integers(0, 256, (count, 7)), actions,
                                  -np.ones((count, 7)), np.zeros(count), 1.5)


def test_image_round_trip_is_exact():
    image = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)
    msg = convert.image_to_msg(image)
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", 12, 10, 30)
    assert np.array_equal(convert.image_from_msg(msg), image)


@pytest.mark.parametrize("mutate, reason", [
    (lambda m: setattr(m, "encoding", "bgr8"), "encoding"),
    (lambda m: setattr(m, "step", 29), "step"),
    (lambda m: setattr(m, "data", bytes(10)), "data bytes"),
    (lambda m: setattr(m, "height", 0), "empty"),
])
def test_malformed_images_are_rejected_with_reason(mutate, reason):
    msg = convert.image_to_msg(np.zeros((12, 10, 3), np.uint8))
    mutate(msg)
    with pytest.raises(convert.MessageError, match=reason):
        convert.image_from_msg(msg)


def test_wrong_image_size_is_rejected():
    with pytest.raises(convert.MessageError, match="size 16x16, expected 32x32"):
        convert.observations_from_msg(_batch(size=16), image_size=32)


def test_observation_batch_round_trip():
    observations = _observations()
    back = convert.observations_from_msg(_batch(), image_size=16, known_task_ids=[0, 1])
    assert back.bridge_id == "b0" and back.step_seq == 3 and back.episode_ids == [10, 11]
    assert back.images.shape == (2, 16, 16, 3) and back.instructions == ["task 0", "task 1"]
    for original, decoded in zip(observations, back.observations):
        assert np.array_equal(original.image, decoded.image)
        assert np.allclose(original.proprio, decoded.proprio)
        assert (original.task_id, original.step) == (decoded.task_id, decoded.step)


@pytest.mark.parametrize("mutate, reason", [
    (lambda m: setattr(m, "task_ids", [0, 7]), r"unknown task id\(s\) \[7\]"),
    (lambda m: setattr(m, "instructions", ["only one"]), "instructions: 1 entries, expected 2"),
    (lambda m: setattr(m, "proprio", np.full(15, 0.0, np.float32)), "proprio: 15 values"),
    (lambda m: setattr(m, "proprio", np.full(16, np.nan, np.float32)), "NaN"),
    (lambda m: setattr(m, "env_ids", [1, 1]), "duplicates"),
    (lambda m: setattr(m, "env_ids", []), "empty batch"),
    (lambda m: setattr(m, "instructions", ["", "x"]), "empty instruction"),
    (lambda m: setattr(m, "instructions", ["pick " * 300, "x"]), "1500 characters, at most 1000"),
    (lambda m: setattr(m, "proprio", np.full(16, 1e9, np.float32)), "magnitude 1e\\+09 exceeds 1000"),
])
def test_malformed_observation_batches_are_rejected(mutate, reason):
    msg = _batch()
    mutate(msg)
    with pytest.raises(convert.MessageError, match=reason):
        convert.observations_from_msg(msg, image_size=16, known_task_ids=[0, 1])


def test_a_state_reading_model_rejects_batches_without_proprio():
    msg = _batch()
    msg.proprio, msg.proprio_dim = [], 0
    assert convert.observations_from_msg(msg, image_size=16).proprio.shape == (2, 0)
    with pytest.raises(convert.MessageError, match="proprio_dim is 0: the model reads the robot state"):
        convert.observations_from_msg(msg, image_size=16, min_proprio_dim=8)


def test_action_batch_round_trip():
    msg = _actions()
    back = convert.actions_from_msg(msg, [0, 1])
    assert msg.chunk_size == 1 and back.chunk_size == 1
    assert back.actions.shape == (2, 1, 7) and back.tokens.shape == (2, 7) and back.policy_version == 4
    assert np.allclose(back.actions[:, 0], np.asarray(msg.actions).reshape(2, 7))


def _chunks(count=2, k=4, seed=5):
    rng = np.random.default_rng(seed)
    return (rng.integers(139, 395, (count, k * 7)), rng.uniform(-1, 1, (count, k, 7)),
            -rng.uniform(0, 3, (count, k * 7)), rng.normal(size=count))


def test_a_chunk_batch_round_trips_in_the_policy_layout():
    tokens, actions, log_probs, values = _chunks()
    msg = convert.actions_to_msg("b0", 3, [0, 1], 2, tokens, actions, log_probs, values, 1.0)
    assert msg.chunk_size == 4 and len(msg.actions) == len(msg.action_tokens) == 2 * 4 * 7
    back = convert.actions_from_msg(msg, [0, 1], chunk_size=4, token_range=(139, 395))
    assert back.actions.shape == (2, 4, 7) and np.allclose(back.actions, actions)
    # Action k of entry i sits at tokens[i, 7k:7k+7], as VLAPolicy.decode lays them out.
    assert np.array_equal(back.tokens, tokens) and np.allclose(back.log_probs, log_probs)
    with pytest.raises(convert.MessageError, match="tokens: 21 per entry, expected 4 x 7"):
        convert.actions_to_msg("b0", 3, [0, 1], 2, tokens[:, :21], actions, log_probs, values, 1.0)


def _chunk_msg():
    return convert.actions_to_msg("b0", 3, [0, 1], 2, *_chunks(), 1.0)


@pytest.mark.parametrize("mutate, kwargs, reason", [
    (lambda m: None, {"chunk_size": 8}, "chunk_size=4: this node runs chunks of 8"),
    (lambda m: setattr(m, "chunk_size", 0), {}, r"chunk_size=0, expected 1\.\.36"),
    (lambda m: setattr(m, "chunk_size", 3), {}, "actions.actions: 56 values, expected 2 x 3 x 7"),
    (lambda m: setattr(m, "actions", np.asarray(m.actions)[:-7]), {}, "actions.actions: 49 values"),
    (lambda m: setattr(m, "action_tokens", np.asarray(m.action_tokens)[:-1]), {}, "action_tokens: 55 values"),
    (lambda m: m.actions.__setitem__(40, np.inf), {}, r"actions: contains NaN or inf \(entries \[1\]\)"),
    (lambda m: m.token_log_probs.__setitem__(3, np.nan), {}, r"token_log_probs: contains NaN or inf"),
    (lambda m: m.values.__setitem__(0, np.nan), {}, "values: contains NaN"),
    (lambda m: m.action_tokens.__setitem__(9, -5), {}, r"outside the action vocabulary \[0, 2147483648\)"),
    (lambda m: m.action_tokens.__setitem__(9, 7), {"token_range": (139, 395)}, r"e\.g\. \[7\]"),
])
def test_malformed_chunks_are_rejected_with_the_field_named(mutate, kwargs, reason):
    msg = _chunk_msg()
    mutate(msg)
    with pytest.raises(convert.MessageError, match=reason):
        convert.actions_from_msg(msg, [0, 1], **kwargs)


@pytest.mark.parametrize("bad, reason", [
    (np.full((2, 7), np.nan), "NaN"),
    (np.full((2, 7), 1e6), "magnitude"),
])
def test_non_finite_or_huge_actions_are_rejected(bad, reason):
    with pytest.raises(convert.MessageError, match=reason):
        convert.actions_from_msg(_actions(actions=bad), [0, 1])


def test_misaligned_actions_are_rejected():
    with pytest.raises(convert.MessageError, match="do not match the pending batch"):
        convert.actions_from_msg(_actions(), [0, 1, 2])
    msg = _actions()
    msg.values = np.zeros(1, np.float32)
    with pytest.raises(convert.MessageError, match="values: 1 values"):
        convert.actions_from_msg(msg)
    msg = _actions()
    msg.action_dim = 6
    with pytest.raises(convert.MessageError, match="action_dim=6"):
        convert.actions_from_msg(msg)


def test_task_assignments_are_checked():
    msg = TaskAssignment(bridge_id="b0", env_ids=[0, 1], task_ids=[2, 9], init_state_ids=[3, 4])
    with pytest.raises(convert.MessageError, match="unknown task id 9"):
        convert.task_assignments_from_msg(msg, 2, {0, 1, 2})
    msg.task_ids = [2, 1]
    assert convert.task_assignments_from_msg(msg, 2, {0, 1, 2}) == [(0, 2, 3), (1, 1, 4)]
    msg.init_state_ids = [3, 50]  # neither a fixed init state nor a fresh layout id
    with pytest.raises(convert.MessageError, match="init state 50 does not exist"):
        convert.task_assignments_from_msg(msg, 2, {0, 1, 2})
    msg.init_state_ids = [3, 270516]  # a fresh training layout, as the learner's plan draws them
    assert convert.task_assignments_from_msg(msg, 2, {0, 1, 2}) == [(0, 2, 3), (1, 1, 270516)]
    msg.env_ids = [0, 5]
    with pytest.raises(convert.MessageError, match="env_id 5 outside"):
        convert.task_assignments_from_msg(msg, 2, {0, 1, 2})


def test_task_requests_name_a_bridge_and_its_waiting_envs_only():
    request = TaskAssignment(bridge_id="b0", env_ids=[1, 0])
    assert convert.task_request_from_msg(request) == [("b0", 1), ("b0", 0)]
    for bad in (TaskAssignment(bridge_id="", env_ids=[0]), TaskAssignment(bridge_id="b0", env_ids=[]),
                TaskAssignment(bridge_id="b0", env_ids=[0], task_ids=[1], init_state_ids=[2])):
        with pytest.raises(convert.MessageError, match="task request: a bridge id and env ids only"):
            convert.task_request_from_msg(bad)


def test_episode_result_carries_terminal_observation():
    final = _observations(1)[0]
    msg = convert.episode_result_to_msg("b0", 1, 5, 0, 3, 12, True, False, False, final_observation=final)
    assert np.array_equal(convert.image_from_msg(msg.final_image), final.image)
    assert np.allclose(msg.final_proprio, final.proprio) and msg.success and msg.num_steps == 12
    assert msg.num_decisions == 12  # K = 1: one decision per step
    chunked = convert.episode_result_to_msg("b0", 1, 5, 0, 3, 12, True, False, False, num_decisions=2)
    assert (chunked.num_steps, chunked.num_decisions) == (12, 2)


def test_episode_results_that_do_not_add_up_are_rejected():
    final = _observations(1)[0]
    good = convert.episode_result_to_msg("b0", 1, 5, 0, 3, 12, True, False, False, final_observation=final,
                                         num_decisions=2, incarnation=9)
    assert convert.check_episode_result(good, image_size=16) is good and good.incarnation == 9
    bad = [(dict(num_decisions=13), "12 env steps in 13 decisions"),
           (dict(num_decisions=0), "12 env steps in 0 decisions"),
           (dict(bridge_id=""), "bridge_id: empty"), (dict(reason="x" * 2000), "2000 characters"),
           (dict(final_proprio=[float("nan")] * 8), "final_proprio: contains NaN")]
    for fields, reason in bad:
        msg = convert.episode_result_to_msg("b0", 1, 5, 0, 3, 12, True, False, False, final_observation=final,
                                            num_decisions=2)
        for key, value in fields.items():
            setattr(msg, key, value)
        with pytest.raises(convert.MessageError, match=reason):
            convert.check_episode_result(msg, image_size=16)
    with pytest.raises(convert.MessageError, match="size 16x16, expected 32x32"):
        convert.check_episode_result(good, image_size=32)
    aborted = convert.episode_result_to_msg("b0", 1, 5, 0, 3, 2, False, False, True, "worker crashed",
                                            num_decisions=3)  # a crashed worker: fewer steps than decisions
    assert convert.check_episode_result(aborted) is aborted


def test_recorded_messages_are_bounded_by_the_graph_frames():
    assert convert.max_message_bytes(2, 128) == 2 * (2 * 3 * 128 * 128 + 65536)
    frame_4096 = 4096 * 4096 * 3
    assert frame_4096 > 10 * convert.max_message_bytes(8, 224), "the 48 MB frame of issue 26 stays out"
