"""``sim_bridge``: N simulated environments behind the graph's observation/action interface.

Publishes one ObservationBatch per decision point, applies the matching ActionBatch (by
``bridge_id``, ``incarnation`` and ``step_seq``; stale, foreign or malformed batches, and chunks of
another size than ``policy.chunk_size``, are dropped with a logged reason and counted), emits an EpisodeResult
when an episode ends and resets that environment to the next task: the one the curriculum
assigned (TaskAssignment), else a uniformly drawn training task. Each environment runs its whole
chunk of K actions (``step_chunk``: fewer when its episode ends inside the chunk) and is observed
once, after it, so the next ObservationBatch comes K control steps later; episode results and
the step counters count environment steps.
A policy that stays silent for ``graph.action_timeout_s`` is reported and the pending batch is
re-sent until it answers, so no step is lost when the policy node restarts.
Every run of the node has its own ``incarnation`` (its start time in ns), carried by its
observations and episode results: step_seq and episode ids restart at every run, so a restarted
bridge's episodes never collide with the previous run's (nor are a late reply to the previous run
applied). Task assignments queue at most ``MAX_QUEUED_ASSIGNMENTS`` per env (oldest dropped, counted).

With ``graph.lockstep`` an environment never draws a task itself: it starts, and after each
episode stays, parked until an assignment comes, asking for one on ``task_requests`` (every
``REQUEST_EVERY_S`` while it waits). Parked envs are left out of the ObservationBatches; an env
assigned while a batch is in flight joins the next one (its reset waits for the step, which
moves every running env).
"""
from __future__ import annotations

import sys
import time
from collections import deque

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.envs.base import ACTION_DIM, StepResult, VectorEnvLike
from vla_rl_ros.core.envs.splits import eval_init_states, train_init_states
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import ActionBatch, EpisodeResult, ObservationBatch, TaskAssignment
from vla_rl_ros.nodes import convert, qos
from vla_rl_ros.nodes.params import ExperimentParameters
from vla_rl_ros.nodes.rejections import Rejections
from vla_rl_ros.nodes.runner import run_node

EXTRA_PARAMETERS = {
    "bridge_id": ("", "Identity echoed in every batch; '' = the node's fully qualified name."),
    "init_states": ("train", "Which init states episodes start from when no task is assigned: 'train' "
                             "(ids below env.num_train_init_states) or 'eval' (the held-out rest)."),
    "min_observation_subscribers": (1, "Start stepping only once this many nodes subscribe to observations "
                                       "(policy, recorder, prm), so the first steps are not lost."),
}
MAX_QUEUED_ASSIGNMENTS = 4
"""Task assignments kept per env (the curriculum sends one per finished episode)."""
REQUEST_EVERY_S = 1.0
"""graph.lockstep: how often parked envs repeat their request (one lost, or a learner restarted)."""


def make_environments(cfg) -> VectorEnvLike:
    """The vectorised environment of ``cfg.env`` (LIBERO workers or the toy env)."""
    from vla_rl_ros.core.envs.vector import make_vector_env
    return make_vector_env(cfg)


class SimBridgeNode(Node):
    """Steps a VectorEnvLike in lock-step with the policy's ActionBatches."""

    def __init__(self, env: VectorEnvLike | None = None, **kwargs) -> None:
        super().__init__("sim_bridge", **kwargs)
        self.params = ExperimentParameters(self, EXTRA_PARAMETERS)
        cfg = self.params.config
        extra = self.params.extra_values
        self.bridge_id = extra["bridge_id"] or self.get_fully_qualified_name()
        self.min_subscribers = int(extra["min_observation_subscribers"])
        self.env = env if env is not None else make_environments(cfg.env)
        self.num_envs = self.env.num_envs
        self.chunk_size = int(cfg.policy.chunk_size)
        if self.chunk_size > 1 and not hasattr(self.env, "step_chunk"):
            raise ConfigError(f"policy.chunk_size={self.chunk_size}: {type(self.env).__name__} has no "
                              "step_chunk, so it runs one action per observation only")
        self.task_ids = list(cfg.env.task_ids)
        self.rng = np.random.default_rng(cfg.env.seed)
        split = extra["init_states"]
        if split not in ("train", "eval"):
            raise ConfigError(f"init_states={split!r}: 'train' or 'eval'")
        self.init_state_pool = (train_init_states if split == "train" else eval_init_states)(
            cfg.env.num_train_init_states)
        self.assignments: list[deque] = [deque(maxlen=MAX_QUEUED_ASSIGNMENTS) for _ in range(self.num_envs)]
        self.incarnation = time.time_ns()
        self.next_episode_id = 0
        self.episode_ids = [0] * self.num_envs
        self.episode_tasks = [(0, 0)] * self.num_envs
        self.episode_steps = [0] * self.num_envs
        self.episode_decisions = [0] * self.num_envs
        self.episode_last_seq = [0] * self.num_envs
        self.step_seq = 0
        self.pending: ObservationBatch | None = None
        self.published_at = 0.0
        self.reported_missing = False
        self.episodes_done = 0
        self.steps_done = 0
        self.decisions_done = 0
        self.rejected_actions = 0
        self.rejected_pending = False
        self.rejections = Rejections(self)
        guard = self.rejections.guard
        self.lockstep = bool(cfg.graph.lockstep)
        self.parked: set[int] = set(range(self.num_envs)) if self.lockstep else set()
        """Envs with no episode running (graph.lockstep): waiting for a TaskAssignment."""
        self.requested_at = 0.0

        self.obs_pub = self.create_publisher(ObservationBatch, topics.OBSERVATIONS, qos.BATCH)
        self.result_pub = self.create_publisher(EpisodeResult, topics.EPISODE_RESULTS, qos.BATCH)
        self.create_subscription(ActionBatch, topics.ACTIONS, guard("actions", self._on_actions), qos.BATCH)
        self.create_subscription(TaskAssignment, topics.TASK_ASSIGNMENTS, guard("task_assignments",
                                 self._on_assignment), qos.COMMAND)
        self.create_service(Trigger, topics.RESET_SERVICE, self._on_reset_request)
        self.request_pub = (self.create_publisher(TaskAssignment, topics.TASK_REQUESTS, qos.COMMAND)
                            if self.lockstep else None)
        self.viz_images = [self.create_publisher(Image, topics.viz_image(i), qos.SENSOR_VIZ)
                           for i in range(self.num_envs)]
        self.viz_joints = [self.create_publisher(JointState, topics.viz_joint_states(i), qos.SENSOR_VIZ)
                           for i in range(self.num_envs)]
        self.observations = {} if self.lockstep else self._reset_envs(list(range(self.num_envs)))
        self.create_timer(0.05, self._watchdog)
        self.started = time.monotonic()
        self.create_timer(10.0, self._log_rate)
        self.viz_timer = self.create_timer(1.0 / cfg.graph.viz_rate_hz, self._publish_viz)
        self.get_logger().info(f"bridge {self.bridge_id} (incarnation {self.incarnation}): {self.num_envs} "
                               f"{cfg.env.backend} envs, tasks {self.task_ids}, chunks of {self.chunk_size}")

    # ------------------------------------------------------------------ episodes
    def _next_assignment(self, env_id: int) -> tuple[int, int]:
        if self.assignments[env_id]:
            return self.assignments[env_id].popleft()
        return (int(self.rng.choice(self.task_ids)), int(self.rng.choice(self.init_state_pool)))

    def _reset_envs(self, env_ids: list[int]) -> dict:
        picks = [self._next_assignment(i) for i in env_ids]
        fresh = self.env.reset(picks, env_ids)
        out = {}
        for env_id, pick, obs in zip(env_ids, picks, fresh):
            self.episode_ids[env_id] = self.next_episode_id
            self.next_episode_id += 1
            self.episode_tasks[env_id] = pick
            self.episode_steps[env_id] = 0
            self.episode_decisions[env_id] = self.episode_last_seq[env_id] = 0
            out[env_id] = obs
        return out

    def _finish(self, env_id: int, success: bool, truncated: bool, aborted: bool, reason: str = "") -> None:
        task_id, init_id = self.episode_tasks[env_id]
        self.result_pub.publish(convert.episode_result_to_msg(
            self.bridge_id, env_id, self.episode_ids[env_id], task_id, init_id, self.episode_steps[env_id],
            success, truncated, aborted, reason, self._header(), self.observations.get(env_id),
            num_decisions=self.episode_decisions[env_id], last_step_seq=self.episode_last_seq[env_id],
            incarnation=self.incarnation))
        self.episodes_done += 1

    # ------------------------------------------------------------------ stepping
    def _header(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg(), frame_id=self.bridge_id)

    def _publish_observations(self) -> None:
        env_ids = [i for i in range(self.num_envs) if i not in self.parked]
        if not env_ids:  # graph.lockstep: every env waits for an assignment
            self.pending = None
            return
        self.step_seq += 1
        self.pending = convert.observations_to_msg(
            self.bridge_id, self.step_seq, env_ids, [self.episode_ids[i] for i in env_ids],
            [self.observations[i] for i in env_ids], self._header(), self.incarnation)
        self.obs_pub.publish(self.pending)
        self.published_at = time.monotonic()
        self.rejected_pending = False

    def _on_actions(self, msg: ActionBatch) -> None:
        if msg.bridge_id != self.bridge_id:
            return  # another bridge's reply on the shared topic
        try:  # validate first: a malformed batch is reported even when it is also stale
            batch = convert.actions_from_msg(msg, chunk_size=self.chunk_size)
            if (self.pending is None or msg.step_seq != self.pending.step_seq
                    or msg.incarnation != self.incarnation):
                self.get_logger().debug(f"ignoring actions for step {msg.step_seq} (stale or duplicate)")
                return
            batch = convert.actions_from_msg(msg, list(self.pending.env_ids), self.chunk_size)
        except convert.MessageError as err:
            # No env steps: the episode goes on from the same observation, re-sent by the watchdog.
            self.rejected_actions += 1
            self.rejected_pending = (self.pending is not None and msg.step_seq == self.pending.step_seq
                                     and msg.incarnation == self.incarnation)
            self.get_logger().warning(f"rejected ActionBatch step {msg.step_seq} "
                                      f"({self.rejected_actions} so far): {err}")
            return
        env_ids = list(self.pending.env_ids)
        self.pending = None
        if self.reported_missing:
            self.get_logger().info("policy is back: actions received again")
            self.reported_missing = False
        self._apply(batch.actions, batch.step_seq, env_ids)

    def _step_chunks(self, chunks: np.ndarray) -> list[StepResult]:
        if hasattr(self.env, "step_chunk"):
            return self.env.step_chunk(chunks)
        results = self.env.step(chunks[:, 0])  # K = 1 here (checked at start-up)
        for result in results:
            result.info.setdefault("executed", 1)
        return results

    def _apply(self, chunks: np.ndarray, step_seq: int, env_ids: list[int] | None = None) -> None:
        """Run the batch's chunks [B, K, 7] to their end (or their episode's), then observe once.

        B is the batch's ``env_ids`` (default all); envs outside the batch are parked (not running).
        """
        env_ids = list(range(self.num_envs)) if env_ids is None else env_ids
        every = np.zeros((self.num_envs, self.chunk_size, ACTION_DIM), np.float32)
        every[env_ids] = np.asarray(chunks, np.float32).reshape(len(env_ids), self.chunk_size, ACTION_DIM)
        results = self._step_chunks(every)
        self.decisions_done += len(env_ids)
        done_ids = []
        for env_id in env_ids:
            result = results[env_id]
            executed = int(result.info.get("executed", self.chunk_size))
            self.steps_done += executed
            self.episode_steps[env_id] += executed
            self.episode_decisions[env_id] += 1
            self.episode_last_seq[env_id] = step_seq
            self.observations[env_id] = result.observation
            if result.done:
                self._finish(env_id, result.success, result.truncated, result.aborted,
                             str(result.info.get("reason", "")) if result.aborted else "")
                done_ids.append(env_id)
        self._start_next(done_ids)
        self._publish_observations()

    def _start_next(self, finished: list[int]) -> None:
        """Reset the finished envs (streaming) or those with an assignment (lockstep; the rest park)."""
        newly_parked = False
        if self.lockstep:
            self.parked.update(finished)
            ready = [i for i in sorted(self.parked) if self.assignments[i]]
            self.parked.difference_update(ready)
            newly_parked = any(i in self.parked for i in finished)
            finished = ready
        if finished:
            self.observations.update(self._reset_envs(finished))
        if newly_parked:  # ask at once; the watchdog repeats it while they wait
            self._request_tasks()

    def _request_tasks(self) -> None:
        waiting = [i for i in sorted(self.parked) if not self.assignments[i]]
        if not waiting:
            return
        self.request_pub.publish(TaskAssignment(header=self._header(), bridge_id=self.bridge_id,
                                                env_ids=waiting, task_ids=[], init_state_ids=[]))
        self.requested_at = time.monotonic()

    def _watchdog(self) -> None:
        if self.lockstep and self.parked and time.monotonic() - self.requested_at >= REQUEST_EVERY_S:
            self._request_tasks()
        if self.pending is None and (self.step_seq == 0 or self.lockstep):
            # The first batch once the consumers listen; in lockstep also the first after all parked.
            if self.obs_pub.get_subscription_count() >= self.min_subscribers:
                self._start_next([])
                self._publish_observations()
            return
        if self.pending is None:
            return
        waited = time.monotonic() - self.published_at
        timeout = self.params.config.graph.action_timeout_s
        if waited < timeout:
            return
        if self.rejected_pending:
            self.get_logger().warning(f"the actions for step {self.pending.step_seq} were rejected; "
                                      "re-sending the batch")
        else:
            self.get_logger().error(
                f"no actions for step {self.pending.step_seq} after {waited:.1f} s "
                f"(graph.action_timeout_s={timeout}): policy missing; re-sending the batch")
            self.reported_missing = True
        self.rejected_pending = False
        self.obs_pub.publish(self.pending)
        self.published_at = time.monotonic()

    def _log_rate(self) -> None:
        elapsed = time.monotonic() - self.started
        self.get_logger().info(f"rollout/env_steps={self.steps_done} rollout/decisions={self.decisions_done} "
                               f"rollout/episodes={self.episodes_done} "
                               f"rollout/env_steps_per_s={self.steps_done / max(elapsed, 1e-9):.1f} "
                               f"rollout/rejected_action_batches={self.rejected_actions} "
                               f"{self.rejections.summary('bridge')}")

    # ------------------------------------------------------------------ commands
    def _on_assignment(self, msg: TaskAssignment) -> None:
        if msg.bridge_id and msg.bridge_id != self.bridge_id:
            return
        try:
            picks = convert.task_assignments_from_msg(msg, self.num_envs, set(self.task_ids))
        except convert.MessageError as err:
            self.rejections("task_assignments", f"TaskAssignment: {err}")
            return
        for env_id, task_id, init_id in picks:
            if len(self.assignments[env_id]) == MAX_QUEUED_ASSIGNMENTS:
                self.rejections("task_assignments", f"env {env_id} already has {MAX_QUEUED_ASSIGNMENTS} "
                                                    "queued; the oldest is dropped")
            self.assignments[env_id].append((task_id, init_id))

    def _on_reset_request(self, request, response):
        """Abort running episodes of envs with a queued assignment and start the assigned tasks now."""
        env_ids = [i for i in range(self.num_envs) if self.assignments[i] and i not in self.parked]
        for env_id in env_ids:
            self._finish(env_id, False, False, True, "reset requested")
        if env_ids:
            self.observations.update(self._reset_envs(env_ids))
            if self.pending is not None:
                self._publish_observations()  # the old step_seq is now stale; its actions are ignored
        response.success = True
        response.message = f"reset envs {env_ids}"
        return response

    def _publish_viz(self) -> None:
        header = self._header()
        for env_id, obs in self.observations.items():
            if self.viz_images[env_id].get_subscription_count():
                self.viz_images[env_id].publish(convert.image_to_msg(obs.image, header))
            if self.viz_joints[env_id].get_subscription_count():
                proprio = np.asarray(obs.proprio, np.float64)
                self.viz_joints[env_id].publish(JointState(
                    header=header, name=[f"proprio_{j}" for j in range(proprio.size)],
                    position=proprio.tolist()))

    def destroy_node(self) -> None:
        """Close the environments (worker processes) with the node."""
        try:
            self.env.close()
        finally:
            super().destroy_node()


def main(args=None) -> int:
    """Console entry point ``vla-rl-sim-bridge``."""
    return run_node(SimBridgeNode, args)


if __name__ == "__main__":
    sys.exit(main())
