"""graph.lockstep on a real rclpy sim_bridge (toy env): envs park, ask for tasks, run what comes."""
import numpy as np

from fuzz_harness import Harness
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, EpisodeResult, ObservationBatch, TaskAssignment
from vla_rl_ros.nodes import convert, qos
from vla_rl_ros.nodes.sim_bridge_node import SimBridgeNode


def test_lockstep_envs_wait_for_assignments_and_batches_hold_only_running_envs(monkeypatch):
    # TINY: 2 toy envs, tasks 0 and 1, 3-step episodes.
    h = Harness(monkeypatch, SimBridgeNode, **{"graph.action_timeout_s": 5.0, "graph.lockstep": True,
                                               "bridge_id": "b0"})
    node, spin_until = h.node, h.spin_until
    obs = h.listen(ObservationBatch, topics.OBSERVATIONS)
    results = h.listen(EpisodeResult, topics.EPISODE_RESULTS)
    requests = h.listen(TaskAssignment, topics.TASK_REQUESTS, qos.COMMAND)
    act_pub = h.publisher(ActionBatch, topics.ACTIONS)
    task_pub = h.publisher(TaskAssignment, topics.TASK_ASSIGNMENTS, qos.COMMAND)

    def reply(batch):
        count = len(batch.env_ids)
        act_pub.publish(convert.actions_to_msg(batch.bridge_id, batch.step_seq, list(batch.env_ids), 0,
                                               np.zeros((count, 7)), np.zeros((count, 1, 7)),
                                               np.zeros((count, 7)), np.zeros(count), 1.0,
                                               incarnation=batch.incarnation))

    def assign(env_id, task, init_state):
        task_pub.publish(TaskAssignment(bridge_id="b0", env_ids=[env_id], task_ids=[task],
                                        init_state_ids=[init_state]))
    try:
        # Nothing runs before an assignment: both envs ask (again every second), no observation.
        assert spin_until(lambda: len(requests) >= 2 and act_pub.get_subscription_count())
        assert all(list(r.env_ids) == [0, 1] and r.bridge_id == "b0" and not r.task_ids for r in requests)
        assert not obs and node.steps_done == 0
        assign(1, 1, 2)
        assert spin_until(lambda: obs)
        assert list(obs[-1].env_ids) == [1] and list(obs[-1].step_indices) == [0]
        reply(obs[-1])
        assert spin_until(lambda: len(obs) >= 2)
        assign(0, 0, 7)  # while env 1's batch is in flight: env 0 joins the next batch
        h.settle(0.3)
        reply(obs[-1])
        assert spin_until(lambda: len(obs) >= 3)
        assert list(obs[-1].env_ids) == [0, 1] and list(obs[-1].step_indices) == [0, 2]
        asked = len(requests)
        reply(obs[-1])  # env 1's third step ends its episode: it parks and asks at once
        assert spin_until(lambda: results and len(obs) >= 4 and len(requests) > asked)
        (result,) = results
        assert (result.env_id, result.task_id, result.init_state_id, result.num_steps) == (1, 1, 2, 3)
        assert list(requests[-1].env_ids) == [1] and list(obs[-1].env_ids) == [0]
        for _ in range(2):
            reply(obs[-1])
            assert spin_until(lambda n=len(obs) + 1: len(obs) >= n or len(results) == 2)
        assert spin_until(lambda: len(results) == 2)
        assert results[1].env_id == 0 and results[1].task_id == 0 and results[1].init_state_id == 7
        h.settle(1.2)
        assert len(obs) == 5 and node.pending is None  # both parked: the bridge waits, nothing stepped
        assert list(requests[-1].env_ids) == [0, 1] and node.steps_done == 6
    finally:
        h.close()
