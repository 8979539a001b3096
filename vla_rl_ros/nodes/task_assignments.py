"""The learner node's task assignments: its plan, handed to the bridges' env slots.

A mixin of :class:`~vla_rl_ros.nodes.learner_node.LearnerNode` (it uses the node's ``dispatch``
(nodes/plan_dispatch.py), ``assign_pub``, ``rejections``, ``curriculum`` and ``processed``): the
messages in and out; which slot runs which context is decided in PlanDispatcher.
"""
from __future__ import annotations

from std_msgs.msg import Header

from vla_rl_ros.msg import EpisodeResult, TaskAssignment
from vla_rl_ros.nodes import convert


class TaskAssignments:
    """EpisodeResult and task requests in, TaskAssignments out."""

    def _on_episode(self, msg: EpisodeResult) -> None:
        try:
            convert.check_episode_result(msg)
        except convert.MessageError as err:
            self.rejections("episode_results", str(err))
            return
        if (msg.aborted or msg.task_id not in self.curriculum.task_ids) and not self.dispatch.lockstep:
            return  # the bridge draws that env's next task itself
        self._assign(self.dispatch.finished((msg.bridge_id, int(msg.env_id)), len(self.processed)))

    def _on_task_request(self, msg: TaskAssignment) -> None:
        try:
            slots = convert.task_request_from_msg(msg)
        except convert.MessageError as err:
            self.rejections("task_requests", str(err))
            return
        self._assign(self.dispatch.requested(slots, len(self.processed)))

    def _check_stall(self) -> None:
        stalls = self.dispatch.stalls
        self._assign(self.dispatch.check_stall(len(self.processed)))
        if self.dispatch.stalls > stalls:
            self.get_logger().warning(f"lockstep: envs waited {self.dispatch.stall_after_s:.0f} s, the "
                                      "plan out and no episode finished (lost with a bridge or recorder): "
                                      "the next plan goes out")

    def _assign(self, pairs) -> None:
        for (bridge_id, env_id), (task, init_state) in pairs:
            self.assign_pub.publish(TaskAssignment(
                header=Header(stamp=self.get_clock().now().to_msg()), bridge_id=bridge_id,
                env_ids=[env_id], task_ids=[task], init_state_ids=[init_state]))
