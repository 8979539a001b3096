"""The sim_bridge node in-process over real rclpy with the toy env: stepping, resets, rejections."""
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from dds_domains import isolate_dds
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, EpisodeResult, ObservationBatch, TaskAssignment
from vla_rl_ros.nodes import convert, qos
from vla_rl_ros.nodes.sim_bridge_node import SimBridgeNode


@pytest.fixture(params=[1])
def bridge(monkeypatch, request):
    """A toy bridge with 2 envs (3-step episodes; chunks of ``request.param``) and a client node."""
    isolate_dds(monkeypatch)
    context = rclpy.Context()
    rclpy.init(context=context)
    chunk = request.param
    overrides = [Parameter(name, value=value) for name, value in (
        ("env.backend", "toy"), ("env.image_size", 32), ("env.task_ids", [0, 1]), ("env.num_envs", 2),
        ("env.max_episode_steps", 3 if chunk == 1 else 7), ("graph.action_timeout_s", 1.0),
        ("bridge_id", "b0"), ("policy.chunk_size", chunk))]
    node = SimBridgeNode(context=context, parameter_overrides=overrides)
    client = Node("bridge_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    for n in (node, client):
        executor.add_node(n)
    seen = {"obs": [], "results": []}
    client.create_subscription(ObservationBatch, topics.OBSERVATIONS, seen["obs"].append, qos.BATCH)
    client.create_subscription(EpisodeResult, topics.EPISODE_RESULTS, seen["results"].append, qos.BATCH)
    act_pub = client.create_publisher(ActionBatch, topics.ACTIONS, qos.BATCH)
    task_pub = client.create_publisher(TaskAssignment, topics.TASK_ASSIGNMENTS, qos.COMMAND)
    reset = client.create_client(Trigger, topics.RESET_SERVICE)

    def spin_until(predicate, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            executor.spin_once(timeout_sec=0.05)
        return predicate()

    def reply(obs, actions=None):
        values = np.zeros((2, chunk, 7)) if actions is None else np.asarray(actions).reshape(2, -1, 7)
        width = values.shape[1] * 7
        act_pub.publish(convert.actions_to_msg(obs.bridge_id, obs.step_seq, list(obs.env_ids), 0,
                                               np.zeros((2, width)), values, np.zeros((2, width)),
                                               np.zeros(2), 1.0, incarnation=obs.incarnation))
    assert spin_until(lambda: seen["obs"] and act_pub.get_subscription_count() and reset.service_is_ready())
    yield node, seen, reply, task_pub, reset, spin_until, executor
    executor.shutdown()
    node.destroy_node()
    client.destroy_node()
    rclpy.shutdown(context=context)


def test_steps_on_actions_and_ends_episodes_at_the_time_limit(bridge):
    node, seen, reply, _, _, spin_until, _ = bridge
    for step in range(3):
        reply(seen["obs"][-1])
        assert spin_until(lambda: len(seen["obs"]) >= step + 2)
    assert spin_until(lambda: len(seen["results"]) >= 2)
    assert all(r.truncated and r.num_steps == 3 and r.bridge_id == "b0" for r in seen["results"])
    assert seen["results"][0].final_image.height == 32
    latest = seen["obs"][-1]
    assert list(latest.step_indices) == [0, 0] and set(latest.episode_ids).isdisjoint({0, 1})


def test_bad_actions_and_assignments_are_rejected_and_a_silent_policy_is_reported(bridge):
    node, seen, reply, task_pub, _, spin_until, executor = bridge
    first = seen["obs"][-1]
    reply(first, np.full((2, 7), np.nan))
    task_pub.publish(TaskAssignment(bridge_id="b0", env_ids=[0], task_ids=[5], init_state_ids=[0]))
    spin_until(lambda: False, timeout=1.5)  # longer than graph.action_timeout_s
    assert node.steps_done == 0 and node.rejected_actions == 1, "NaN actions must not step the env"
    assert not node.reported_missing, "a policy that answered (badly) is not missing"
    assert not any(node.assignments)
    assert len(seen["obs"]) >= 2 and seen["obs"][-1].step_seq == first.step_seq  # re-sent, same step
    spin_until(lambda: node.reported_missing, timeout=1.5)  # silent since the re-send: now it is missing
    assert node.reported_missing
    reply(first)
    assert spin_until(lambda: node.steps_done == 2 and not node.reported_missing)


def test_reset_service_starts_the_assigned_tasks_now(bridge):
    node, seen, _, task_pub, reset, spin_until, _ = bridge
    task_pub.publish(TaskAssignment(bridge_id="b0", env_ids=[1], task_ids=[1], init_state_ids=[45]))
    assert spin_until(lambda: any(node.assignments))
    future = reset.call_async(Trigger.Request())
    assert spin_until(future.done) and future.result().success
    assert spin_until(lambda: any(r.aborted for r in seen["results"]))
    aborted = [r for r in seen["results"] if r.aborted]
    assert [(r.env_id, r.reason) for r in aborted] == [(1, "reset requested")]
    assert node.episode_tasks[1] == (1, 45)
    assert spin_until(lambda: seen["obs"][-1].task_ids[1] == 1)


@pytest.mark.parametrize("bridge", [3], indirect=True)
def test_chunks_run_to_the_end_and_only_decision_points_are_observed(bridge):
    node, seen, reply, _, _, spin_until, _ = bridge
    assert node.chunk_size == 3
    first = seen["obs"][-1]
    reply(first, np.zeros((2, 1, 7)))  # a chunk of 1 for a bridge of 3: rejected, no step taken
    reply(first, np.full((2, 3, 7), np.nan))  # so is a chunk with NaN in it
    spin_until(lambda: node.rejected_actions == 2, timeout=5)
    assert node.rejected_actions == 2 and node.steps_done == 0
    # 7-step episodes in chunks of 3: decisions at env steps 0, 3 and 6; the last chunk runs 1 action.
    indices = []
    for decision in range(3):
        latest = seen["obs"][-1]
        indices.append(list(latest.step_indices))
        reply(latest)
        assert spin_until(lambda: node.decisions_done == 2 * (decision + 1))
        assert spin_until(lambda: len(seen["obs"]) and seen["obs"][-1].step_seq > latest.step_seq)
    assert indices == [[0, 0], [3, 3], [6, 6]]
    assert spin_until(lambda: len(seen["results"]) >= 2)
    assert [(r.num_steps, r.num_decisions, r.truncated) for r in seen["results"]] == [(7, 3, True)] * 2
    assert node.steps_done == 2 * 7 and list(seen["obs"][-1].step_indices) == [0, 0]
