"""Every node against every class of bad input of issue 26, in-process over real rclpy.

Each test starts one node (tiny models, toy env) beside a client node in one executor, sends
it each class of malformed message or file, then checks that the node still serves: it answers
a good input as before. rclpy re-raises a callback's exception out of ``spin_once``, so a node
that would have died fails the test at the message that killed it. Rejections must be counted.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from bag_helpers import TINY, collect_toy_episodes, write_bag
from fake_franka_driver import FakeFrankaDriver
from fuzz_harness import Harness, adapter_files, bad_actions, bad_observations, good_reply, observations
from vla_rl_ros.core.config import load_config
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import (ActionBatch, EpisodeResult, ObservationBatch, PolicyVersion, StepRewardBatch,
                            TaskAssignment, TrajectoryBagInfo)
from vla_rl_ros.nodes import convert, qos


def test_policy_survives_bad_observations_and_bad_adapter_files(monkeypatch, tmp_path, one_torch_thread):
    from vla_rl_ros.nodes.policy_node import PolicyNode
    h = Harness(monkeypatch, PolicyNode, **{"policy.chunk_size": 1})
    try:
        obs_pub = h.publisher(ObservationBatch, topics.OBSERVATIONS)
        version_pub = h.publisher(PolicyVersion, topics.POLICY_VERSION, qos.LATCHED)
        replies = h.listen(ActionBatch, topics.ACTIONS)
        policy = h.node
        assert h.spin_until(lambda: obs_pub.get_subscription_count() and version_pub.get_subscription_count())
        cases = bad_observations()
        for _, msg in cases:
            obs_pub.publish(msg)
        assert h.spin_until(lambda: policy.rejected_observations == len(cases), 60), \
            (policy.rejected_observations, len(cases))
        assert replies == [], "a malformed batch was answered"

        files = adapter_files(policy.policy, tmp_path)
        for number, (what, directory, sha) in enumerate(files, start=1):
            version_pub.publish(PolicyVersion(version=number, adapter_path=str(directory), sha256=sha))
            assert h.spin_until(lambda: policy.refused_versions == number, 30), f"{what} was not refused"
        assert policy.version == 0

        obs_pub.publish(observations(1))  # still serving, with the weights it had
        assert h.spin_until(lambda: replies, 60)
        reply = convert.actions_from_msg(replies[-1], [0, 1], 1, (policy.policy.arch.action_vocab_start,
                                                                  policy.policy.arch.action_vocab_end))
        assert replies[-1].policy_version == 0 and replies[-1].incarnation == 7
        assert reply.tokens.shape == (2, 7)
        good = tmp_path / "good"
        version_pub.publish(PolicyVersion(version=50, adapter_path=str(good),
                                          sha256=policy.policy.save_adapters(str(good), 50)))
        obs_pub.publish(observations(2))
        assert h.spin_until(lambda: len(replies) >= 2 and replies[-1].policy_version == 50, 60)
        assert policy.rejections.counts == {}, "no callback may have failed unexpectedly"
    finally:
        h.close()


# ----------------------------------------------------------------------------- prm
def test_prm_survives_bad_observations_and_actions(monkeypatch, one_torch_thread):
    from vla_rl_ros.core.rl.prm import ProcessRewardModel
    from vla_rl_ros.core.rl.train_loop import build_policy
    from vla_rl_ros.nodes.prm_node import PrmNode
    cfg = load_config(None, [f"{k}={v}".replace(" ", "") for k, v in TINY.items()])
    prm = ProcessRewardModel(build_policy(cfg))
    h = Harness(monkeypatch, lambda **kw: PrmNode(prm=prm, **kw))
    try:
        obs_pub = h.publisher(ObservationBatch, topics.OBSERVATIONS)
        act_pub = h.publisher(ActionBatch, topics.ACTIONS)
        scores = h.listen(StepRewardBatch, topics.STEP_REWARDS)
        node = h.node
        assert h.spin_until(lambda: obs_pub.get_subscription_count() and act_pub.get_subscription_count())
        cases = bad_observations()
        for _, msg in cases:
            obs_pub.publish(msg)
        assert h.spin_until(lambda: node.rejected_observations == len(cases), 60)
        start, end = node.token_range
        bad = bad_actions(good_reply(observations(1), start), end)
        for seq, (_, msg) in enumerate(bad, start=1):
            obs_pub.publish(observations(seq))  # each bad reply answers a fresh observation
            assert h.spin_until(lambda: ("fuzz", 7, seq) in node.unpaired, 30)
            msg.step_seq = seq
            act_pub.publish(msg)
        # "wrong env ids" and "no entries" do not match their observations; the rest are refused.
        assert h.spin_until(lambda: node.rejected_actions == len(bad), 60), (node.rejected_actions, len(bad))
        assert scores == []
        obs = observations(500)
        obs_pub.publish(obs)
        assert h.spin_until(lambda: ("fuzz", 7, 500) in node.unpaired, 30)
        act_pub.publish(good_reply(obs, start))
        assert h.spin_until(lambda: scores, 60)
        assert scores[-1].step_seq == 500 and scores[-1].incarnation == 7
        assert np.isfinite(scores[-1].progress).all() and node.rejections.counts == {}
    finally:
        h.close()


# ----------------------------------------------------------------------------- recorder
def test_recorder_survives_and_bounds_what_it_records(monkeypatch, tmp_path):
    from vla_rl_ros.nodes.recorder_node import RecorderNode
    from vla_rl_ros.nodes.trajectory_bags import read_episodes
    h = Harness(monkeypatch, RecorderNode, **{"graph.bag_dir": str(tmp_path / "bags"),
                                              "train.episodes_per_iter": 1})
    try:
        pubs = {t: h.publisher(m, t) for t, m in ((topics.OBSERVATIONS, ObservationBatch),
                                                  (topics.ACTIONS, ActionBatch),
                                                  (topics.EPISODE_RESULTS, EpisodeResult))}
        bags = h.listen(TrajectoryBagInfo, topics.TRAJECTORY_BAGS, qos.BAG_NOTICES)
        recorder = h.node
        assert h.spin_until(lambda: all(p.get_subscription_count() for p in pubs.values()))
        for _, msg in bad_observations():
            pubs[topics.OBSERVATIONS].publish(msg)
        for _, msg in bad_actions(good_reply(observations(1), 100), 400):
            pubs[topics.ACTIONS].publish(msg)
        results = [convert.episode_result_to_msg("fuzz", 0, 1, 0, 0, 1, True, False, False, num_decisions=5),
                   convert.episode_result_to_msg("", 0, 1, 0, 0, 1, True, False, False),
                   convert.episode_result_to_msg("fuzz", 0, 1, 0, 0, 1, True, False, False, "x" * 5000)]
        results[2].aborted = False
        nan_final = convert.episode_result_to_msg("fuzz", 0, 1, 0, 0, 1, True, False, False)
        nan_final.final_proprio = [float("nan")] * 8
        big_final = convert.episode_result_to_msg("fuzz", 0, 1, 0, 0, 1, True, False, False)
        big_final.final_image = convert.image_to_msg(np.zeros((600, 600, 3), np.uint8))
        for msg in results + [nan_final, big_final]:
            pubs[topics.EPISODE_RESULTS].publish(msg)
        counts = recorder.rejections.counts
        # Recorded verbatim unless oversized; actions are checked as a bridge would (10 of the 13 fail).
        assert h.spin_until(lambda: counts.get(topics.OBSERVATIONS) == 1 and counts.get(topics.ACTIONS) == 10
                            and counts.get(topics.EPISODE_RESULTS) == 5, 60), counts
        assert bags == [], "a malformed EpisodeResult was counted as an episode"

        obs = observations(1)  # still serving: one good episode makes a bag
        pubs[topics.OBSERVATIONS].publish(obs)
        h.settle(0.1)
        pubs[topics.ACTIONS].publish(good_reply(obs, 100))
        h.settle(0.1)
        for env in (0, 1):
            pubs[topics.EPISODE_RESULTS].publish(convert.episode_result_to_msg(
                "fuzz", env, env, 0, 0, 1, True, False, False, last_step_seq=1, incarnation=7))
        assert h.spin_until(lambda: bags, 30)
        assert bags[0].num_episodes >= 1 and not any(k.endswith("_errors") for k in counts)
        finished, _ = read_episodes([bags[0].bag_path])
        assert {e.episode_id for e in finished} <= {0, 1} and all(e.num_steps == 1 for e in finished)
        size = sum(f.stat().st_size for f in Path(bags[0].bag_path).iterdir())
        assert size < 200_000, f"the oversized observation reached the bag ({size} bytes)"
    finally:
        h.close()


# ----------------------------------------------------------------------------- learner
@pytest.fixture(scope="module")
def toy_episodes():
    return collect_toy_episodes()


def test_learner_survives_bad_bags_notices_and_results(monkeypatch, tmp_path, toy_episodes, one_torch_thread):
    from vla_rl_ros.nodes.learner_node import LearnerNode
    bag_dir = tmp_path / "bags"
    bag_dir.mkdir()
    # Bad files, already there when the learner starts (it takes every complete bag of its dir).
    write_bag(bag_dir / "iter_000000", toy_episodes, token=10 ** 9)  # beyond the vocabulary
    write_bag(bag_dir / "iter_000001", toy_episodes, log_prob=float("nan"))
    garbage = bag_dir / "iter_000002"
    garbage.mkdir()
    (garbage / "metadata.yaml").write_text("rosbag2_bagfile_information: [not, a, bag")
    (garbage / "iter_000002.mcap").write_bytes(np.random.bytes(2048))
    truncated = bag_dir / "iter_000003"
    write_bag(truncated, toy_episodes)
    mcap = truncated / "iter_000003.mcap"
    mcap.write_bytes(mcap.read_bytes()[:3000])
    h = Harness(monkeypatch, LearnerNode, **{"graph.bag_dir": str(bag_dir),
                                             "train.output_dir": str(tmp_path / "run")})
    try:
        learner = h.node
        notice_pub = h.publisher(TrajectoryBagInfo, topics.TRAJECTORY_BAGS, qos.BAG_NOTICES)
        result_pub = h.publisher(EpisodeResult, topics.EPISODE_RESULTS)
        versions = h.listen(PolicyVersion, topics.POLICY_VERSION, qos.LATCHED)
        assert h.spin_until(lambda: len(learner.processed) + len(learner.refused) == 4, 120), \
            (learner.processed, learner.refused)
        assert learner.version == 0 and len(learner.refused) == 2 and learner.rejected_bags == 2
        assert learner.ledger.counts.get("inconsistent", 0) >= 3, learner.ledger.counts  # 1e9 tokens, NaN
        assert h.spin_until(lambda: notice_pub.get_subscription_count()
                            and result_pub.get_subscription_count())
        for path in ("/etc", str(tmp_path), str(bag_dir / ".." / "x"), "", str(bag_dir / "iter_999999")):
            notice_pub.publish(TrajectoryBagInfo(bag_path=path, num_episodes=3))
        bad_result = convert.episode_result_to_msg("fuzz", 0, 1, 0, 0, 1, True, False, False, num_decisions=9)
        result_pub.publish(bad_result)
        assert h.spin_until(lambda: learner.rejections.counts.get("bag_notices", 0) >= 4
                            and learner.rejections.counts.get("episode_results") == 1, 30), \
            learner.rejections.counts

        write_bag(bag_dir / "iter_000004", toy_episodes)  # still serving: a good bag is a new version
        notice_pub.publish(TrajectoryBagInfo(bag_path=str(bag_dir / "iter_000004"), num_episodes=3))
        assert h.spin_until(lambda: learner.version == 1 and any(v.version == 1 for v in versions), 180)
        assert len(learner.ledger.trained) == len(toy_episodes)
        assert not any(k.endswith("_errors") for k in learner.rejections.counts), learner.rejections.counts
    finally:
        h.close()


# ----------------------------------------------------------------------------- sim_bridge
def test_sim_bridge_survives_bad_actions_and_assignments(monkeypatch):
    from vla_rl_ros.nodes.sim_bridge_node import SimBridgeNode
    h = Harness(monkeypatch, SimBridgeNode, bridge_id="fuzz", **{"graph.action_timeout_s": 30.0})
    try:
        act_pub = h.publisher(ActionBatch, topics.ACTIONS)
        task_pub = h.publisher(TaskAssignment, topics.TASK_ASSIGNMENTS, qos.COMMAND)
        seen = h.listen(ObservationBatch, topics.OBSERVATIONS)
        bridge = h.node
        assert h.spin_until(lambda: seen and act_pub.get_subscription_count())
        first = seen[-1]
        # Tokens in the integer range are not the bridge's business: it runs the continuous actions,
        # and the learner refuses episodes of off-vocabulary tokens (the learner test below).
        in_range = ("token id 1e9", "token beyond the vocabulary")
        bad = [(n, m) for n, m in bad_actions(good_reply(first, 100), 400) if n not in in_range]
        for _, msg in bad:
            act_pub.publish(msg)
        other_run = good_reply(first, 100)
        other_run.incarnation = first.incarnation + 1  # a late reply to the previous run of the bridge
        act_pub.publish(other_run)
        assert h.spin_until(lambda: bridge.rejected_actions == len(bad), 30), bridge.rejected_actions
        bad_picks = (([0], [9], [0]), ([7], [0], [0]), ([0, 1], [0], [0]), ([0], [0], [99]))
        for env_ids, task_ids, inits in bad_picks:
            task_pub.publish(TaskAssignment(bridge_id="fuzz", env_ids=env_ids, task_ids=task_ids,
                                            init_state_ids=inits))
        for _ in range(8):  # a flood: the queue stays bounded, the overflow is counted
            task_pub.publish(TaskAssignment(bridge_id="fuzz", env_ids=[0], task_ids=[1], init_state_ids=[1]))
            h.settle(0.05)
        assert h.spin_until(lambda: bridge.rejections.counts.get("task_assignments", 0) >= 4 + 4, 30), \
            bridge.rejections.counts
        assert bridge.steps_done == 0 and max(len(q) for q in bridge.assignments) <= 4
        act_pub.publish(good_reply(first, 100))  # still serving: the good reply steps both envs
        assert h.spin_until(lambda: len(seen) >= 2 and seen[-1].step_seq == first.step_seq + 1, 30)
        assert bridge.steps_done == 2 and seen[-1].incarnation == first.incarnation
        assert not any(k.endswith("_errors") for k in bridge.rejections.counts)
    finally:
        h.close()


# ----------------------------------------------------------------------------- franka_bridge
def test_franka_bridge_survives_bad_sensors_commands_and_actions(monkeypatch, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from vla_rl_ros.nodes.franka_bridge_node import FrankaBridgeNode
    monkeypatch.setenv("ROS_HOME", str(tmp_path / "ros_home"))
    h = Harness(monkeypatch, FrankaBridgeNode, **{"env.num_envs": 1, "safety.control_rate_hz": 10.0,
                                                  "instruction": "put the bowl on the plate"})
    try:
        driver = h.add(FakeFrankaDriver(context=h.context))
        seen = h.listen(ObservationBatch, topics.OBSERVATIONS)
        twists = h.listen(TwistStamped, "dry_run/command/twist", qos.COMMAND)
        diagnostics = h.listen(DiagnosticArray, "/diagnostics", qos.COMMAND)
        act_pub = h.publisher(ActionBatch, topics.ACTIONS)
        pose_pub = h.publisher(PoseStamped, "eef_pose", qos.SENSOR_VIZ)
        image_pub = h.publisher(Image, "camera/image_raw", qos.SENSOR_VIZ)
        joint_pub = h.publisher(JointState, "joint_states", qos.SENSOR_VIZ)
        text_pub = h.publisher(String, "instruction", qos.LATCHED)
        reward_pub = h.publisher(StepRewardBatch, topics.STEP_REWARDS)
        assert h.spin_until(lambda: seen, 30)
        bridge = h.node
        for quaternion in ((0.0, 0.0, 0.0, 0.0), (float("nan"), 0.0, 0.0, 1.0)):
            pose = PoseStamped()
            pose.pose.position.x, pose.pose.position.z = 0.5, 0.3
            (pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z,
             pose.pose.orientation.w) = quaternion
            pose_pub.publish(pose)
        for image in (Image(height=32, width=32, encoding="rgb8", step=7, data=bytes(32 * 96)),
                      Image(height=32, width=32, encoding="yuv422", step=96, data=bytes(32 * 96)),
                      Image(height=0, width=0, encoding="rgb8", step=0, data=b""),
                      Image(height=32, width=32, encoding="rgb8", step=96, data=bytes(10))):
            image_pub.publish(image)
        joint_pub.publish(JointState(name=["panda_finger_joint1", "panda_finger_joint2"],
                                     position=[float("nan"), 0.04]))
        joint_pub.publish(JointState(name=["panda_finger_joint1", "panda_finger_joint2"], position=[0.04]))
        text_pub.publish(String(data=""))
        h.settle(0.2)  # a latched topic: the subscription keeps only the last message
        text_pub.publish(String(data="x" * 5000))
        reward_pub.publish(StepRewardBatch(bridge_id="franka", progress=[float("nan")]))
        reward_pub.publish(StepRewardBatch(bridge_id="franka", progress=[]))
        pending = seen[-1]
        for _, msg in bad_actions(good_reply(pending, 100), 400):
            act_pub.publish(msg)
        h.settle(1.0)
        assert bridge.safety.rejected_poses >= 2 and bridge.instruction == "put the bowl on the plate"
        assert np.isfinite(bridge.fingers).all()

        # Still serving: a good action on the latest observation moves the (dry-run) arm.
        def moving() -> bool:
            return any(np.abs([t.twist.linear.x, t.twist.linear.y, t.twist.linear.z]).max() > 0
                       for t in twists)
        deadline = time.monotonic() + 30
        while not moving() and time.monotonic() < deadline:
            latest = seen[-1]
            reply = good_reply(latest, 100)
            reply.actions = np.array([0.5, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0], np.float32)
            act_pub.publish(reply)
            h.spin_until(lambda: seen[-1].step_seq > latest.step_seq, 2.0)
        assert moving(), "no motion after a good action"
        keys = {}
        h.spin_until(lambda: diagnostics and {kv.key for kv in diagnostics[-1].status[0].values} >= {
            "rejected_camera_images", "rejected_joint_states", "rejected_instructions",
            "rejected_step_rewards"}, 10)
        keys = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
        assert int(keys["rejected_camera_images"]) >= 1 and int(keys["rejected_joint_states"]) >= 1
        assert int(keys["rejected_instructions"]) == 2 and int(keys["rejected_eef_poses"]) >= 2
        assert not any(k.endswith("_errors") for k in bridge.rejections.counts), bridge.rejections.counts
        assert driver.commands("pose") == [], "dry run: nothing reaches the driver"
    finally:
        h.close()
