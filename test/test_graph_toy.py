"""The training graph over real DDS (loopback) on the toy environment, started as `vla-rl launch` does.

bridge + policy + recorder + learner run as separate processes; a test node watches the
topics. Checked: episodes end with EpisodeResults, bags are written and announced, the learner
advances the policy version and the policy node loads it; malformed messages (wrong image size,
NaN actions, unknown task id) are rejected with a logged reason and the graph keeps running;
a killed policy is reported and, once restarted, the graph carries on with the latest version;
a restarted learner resumes from its last version.
"""
import dataclasses
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from dds_domains import fresh_domain_id, isolate_dds
from vla_rl_ros.cli.launch_cmd import Supervisor
from vla_rl_ros.graph import topics
from vla_rl_ros.graph.description import build_graph
from vla_rl_ros.msg import ActionBatch, EpisodeResult, ObservationBatch, PolicyVersion, StepRewardBatch, \
    TaskAssignment, TrajectoryBagInfo
from vla_rl_ros.core.rl import checkpoint as ckpt
from vla_rl_ros.nodes import convert, qos
from toy_graph_params import write_toy_graph_params

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


class Watcher:
    """A test node recording what the graph publishes."""

    def __init__(self, log_dir: Path | None = None):
        self.log_dir = log_dir  # the graph's node logs, quoted when a wait times out
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("graph_watcher", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.results, self.bags, self.versions, self.observations = [], [], [], []
        self.step_rewards = []
        node = self.node
        node.create_subscription(EpisodeResult, topics.EPISODE_RESULTS, self.results.append, qos.BATCH)
        node.create_subscription(TrajectoryBagInfo, topics.TRAJECTORY_BAGS, self.bags.append, qos.COMMAND)
        node.create_subscription(PolicyVersion, topics.POLICY_VERSION, self.versions.append, qos.LATCHED)
        node.create_subscription(ObservationBatch, topics.OBSERVATIONS, self.observations.append, qos.BATCH)
        node.create_subscription(StepRewardBatch, topics.STEP_REWARDS, self.step_rewards.append, qos.BATCH)
        self.obs_pub = node.create_publisher(ObservationBatch, topics.OBSERVATIONS, qos.BATCH)
        self.action_pub = node.create_publisher(ActionBatch, topics.ACTIONS, qos.BATCH)
        self.task_pub = node.create_publisher(TaskAssignment, topics.TASK_ASSIGNMENTS, qos.COMMAND)

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            self.executor.spin_once(timeout_sec=0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}{self.log_tails()}")

    def log_tails(self, lines: int = 12) -> str:
        """The last lines of every node log: what a timed-out wait needs to be diagnosed."""
        if self.log_dir is None:
            return ""
        tails = [f"\n--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                 for log in sorted(self.log_dir.glob("*.log"))]
        return "".join(tails) or f"\n(no node logs in {self.log_dir})"

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def _log(log_dir: Path, name: str) -> str:
    path = log_dir / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def toy_training_graph(tmp_path: Path):
    """The train_sim graph on the toy env with the tiny policy: 2 envs, 4-step episodes, 2 per bag."""
    config = write_toy_graph_params(tmp_path, episodes_per_iter=2, action_timeout_s=3.0)
    return build_graph("train_sim", config=str(config))


@pytest.fixture()
def toy_graph(tmp_path, monkeypatch):
    isolate_dds(monkeypatch)
    supervisor = Supervisor(toy_training_graph(tmp_path), log_dir=str(tmp_path / "logs"))
    watcher = Watcher(tmp_path / "logs")
    supervisor.start()
    try:
        yield supervisor, watcher, tmp_path
    finally:
        supervisor.stop(grace_s=10.0)
        watcher.close()


def test_training_graph_runs_rejects_bad_messages_and_survives_faults(toy_graph):
    supervisor, watcher, tmp_path = toy_graph
    logs = tmp_path / "logs"

    # 1. Rollouts flow, bags are written and the learner advances the policy version.
    watcher.wait_for(lambda: any(v.version >= 1 for v in watcher.versions), 240, "policy version 1")
    assert len(watcher.results) >= 2 and all(r.num_steps >= 1 for r in watcher.results)
    # The learner trained on an announced bag; the bag itself is on disk (the announcement may
    # predate this watcher's discovery of the recorder under heavy load, so it is not required here).
    first_bag = tmp_path / "run" / "bags" / "iter_000000"
    assert (first_bag / "iter_000000.mcap").is_file() and (first_bag / "metadata.yaml").is_file()
    assert all(b.num_episodes == 2 and not b.partial for b in watcher.bags)
    watcher.wait_for(lambda: "loaded policy version 1" in _log(logs, "policy"), 60, "policy loading v1")

    # 2. Malformed messages are rejected with a reason; nobody crashes.
    latest = watcher.observations[-1]
    small = convert.observations_to_msg("intruder", 1, [0], [0], [convert.Observation(
        image=np.zeros((8, 8, 3), np.uint8), instruction="x", proprio=np.zeros(8, np.float32), task_id=0,
        init_state_id=0)])
    watcher.obs_pub.publish(small)
    nan = convert.actions_to_msg(latest.bridge_id, latest.step_seq, list(latest.env_ids), 0,
                                 np.zeros((2, 7)), np.zeros((2, 7)), np.zeros((2, 7)), np.zeros(2), 1.0)
    nan.actions = np.full(14, np.nan, np.float32)
    watcher.action_pub.publish(nan)
    watcher.task_pub.publish(TaskAssignment(bridge_id=latest.bridge_id, env_ids=[0], task_ids=[7],
                                            init_state_ids=[0]))
    watcher.wait_for(lambda: "size 8x8, expected 32x32" in _log(logs, "policy"), 30, "policy rejecting image")
    watcher.wait_for(lambda: "unknown task id 7" in _log(logs, "sim_bridge"), 30, "bridge rejecting task")
    watcher.wait_for(lambda: "actions.actions: contains NaN" in _log(logs, "sim_bridge"), 30,
                     "bridge rejecting NaN actions")
    count = len(watcher.results)
    watcher.wait_for(lambda: len(watcher.results) >= count + 2, 120, "episodes after the malformed messages")
    assert all(p.poll() is None for _, p in supervisor.processes.values()), "a node died"

    # 3. Kill the policy mid-iteration: reported, and the graph resumes when it returns.
    _, policy = supervisor.processes["/policy"]
    policy.send_signal(signal.SIGKILL)
    policy.wait(timeout=10)
    watcher.wait_for(lambda: "policy missing" in _log(logs, "sim_bridge"), 30, "bridge reporting the policy")
    count = len(watcher.results)
    supervisor.restart("/policy")
    watcher.wait_for(lambda: len(watcher.results) >= count + 2, 180, "episodes after the policy restart")
    assert "policy is back" in _log(logs, "sim_bridge")
    version_now = max(v.version for v in watcher.versions)
    watcher.wait_for(lambda: _log(logs, "policy").count(f"loaded policy version {version_now}") >= 1, 60,
                     "restarted policy loading the latched version")

    # 4. Kill the learner: on restart it resumes from its last version (no retraining from v0).
    _, learner = supervisor.processes["/learner"]
    learner.send_signal(signal.SIGKILL)
    learner.wait(timeout=10)
    version_before = max(v.version for v in watcher.versions)
    supervisor.restart("/learner")
    watcher.wait_for(lambda: "resumed from policy version" in _log(logs, "learner"), 120, "learner resume")
    resumed = int(_log(logs, "learner").split("resumed from policy version ")[-1].split()[0])
    assert resumed >= version_before
    watcher.wait_for(lambda: max(v.version for v in watcher.versions) > resumed, 240,
                     "a version after resume")
    bags = sorted((tmp_path / "run" / "bags").glob("iter_*"))
    assert len(bags) >= 3 and len({b.name for b in bags}) == len(bags)

    # 5. Offline training: a fresh learner trains on recorded bags, one version per bag. It runs
    #    in a DDS domain of its own so that its versions do not reach the running graph.
    offline_bags = tmp_path / "offline_bags"
    offline_bags.mkdir()
    complete = [b for b in bags if (b / "metadata.yaml").is_file()][:3]
    for bag in complete:
        shutil.copytree(bag, offline_bags / bag.name)
    from rclpy.parameter import Parameter

    from vla_rl_ros.nodes.learner_node import LearnerNode
    os.environ["ROS_DOMAIN_ID"] = fresh_domain_id()
    offline_context = rclpy.Context()
    rclpy.init(context=offline_context)
    overrides = [Parameter("offline_bag_dir", value=str(offline_bags)),
                 Parameter("train.output_dir", value=str(tmp_path / "offline")),
                 Parameter("env.backend", value="toy"), Parameter("env.task_ids", value=[0, 1]),
                 Parameter("env.image_size", value=32), Parameter("policy.size", value="tiny"),
                 Parameter("policy.image_size", value=32), Parameter("ppo.minibatch_size", value=8),
                 Parameter("ppo.advantage_estimator", value="critic")]  # as the graph's (toy_graph_params)
    offline = LearnerNode(context=offline_context, parameter_overrides=overrides)
    try:
        assert len(offline.processed) == len(complete) == 3 and 2 <= offline.version <= 3
        assert (tmp_path / "offline" / "adapters" / f"v{offline.version:06d}").is_dir()
    finally:
        offline.destroy_node()
        rclpy.shutdown(context=offline_context)


def test_a_learner_that_starts_late_trains_on_bags_announced_before_it_joined(tmp_path, monkeypatch):
    """A 7B learner loads for minutes while rollouts already run: the bags recorded meanwhile
    must not be lost to it. Here the learner starts only after the bridge has stopped, so every
    bag it can hear of was announced before it existed."""
    isolate_dds(monkeypatch)
    graph = toy_training_graph(tmp_path)
    without_learner = dataclasses.replace(graph, nodes=[n for n in graph.nodes if n.role != "learner"])
    learner_only = dataclasses.replace(graph, nodes=[n for n in graph.nodes if n.role == "learner"])
    rollouts = Supervisor(without_learner, log_dir=str(tmp_path / "logs"))
    learner = Supervisor(learner_only, log_dir=str(tmp_path / "logs"))
    watcher = Watcher(tmp_path / "logs")
    rollouts.start()
    try:
        watcher.wait_for(lambda: len(watcher.bags) >= 2, 180, "two bags announced")
        # The recorder stops too: one still running could close and announce another bag after the
        # snapshot below (a partial one, at its shutdown), which the learner would rightly take.
        for label in ("/sim_bridge", "/recorder"):
            _, process = rollouts.processes[label]
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
        settle = time.monotonic() + 2.0  # every notice already sent reaches the watcher
        while time.monotonic() < settle:
            watcher.executor.spin_once(timeout_sec=0.1)
        announced = {b.bag_path for b in watcher.bags}
        assert all(b.policy_version == 0 for b in watcher.bags)
        # What the learner may take is what is on disk now. The recorder's last bag (closed partial
        # at its shutdown) can be on disk without its notice reaching the watcher: a publisher that
        # exits right after sending is not retried. The learner scans the folder, so it takes it too.
        recorded = {str(p) for p in (tmp_path / "run" / "bags").glob("iter_*")}
        assert announced <= recorded, (announced, recorded)

        learner.start()
        watcher.wait_for(lambda: any(v.version >= 1 for v in watcher.versions), 180,
                         "policy version 1 from a bag announced before the learner started")
        state = ckpt.load_checkpoint(tmp_path / "run")
        processed = set(state["processed"])
        assert processed and processed <= recorded, (processed, recorded)
        assert min(announced) in processed  # bags are taken in iteration order: the first one first
        assert "learner ready at policy version 0" in _log(tmp_path / "logs", "learner")
    finally:
        learner.stop(grace_s=10.0)
        rollouts.stop(grace_s=10.0)
        watcher.close()


def test_two_namespaced_bridges_share_one_policy(tmp_path, monkeypatch):
    isolate_dds(monkeypatch)
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "env": {"backend": "toy", "task_ids": [0, 1], "num_envs": 1, "image_size": 32,
                "max_episode_steps": 3},
        "policy": {"size": "tiny", "image_size": 32},
        "train": {"episodes_per_iter": 4, "output_dir": str(tmp_path / "run"), "torch_threads": 1},
        "graph": {"action_timeout_s": 30.0, "bag_dir": str(tmp_path / "run" / "bags")}}}}))
    graph = build_graph("eval_sim", config=str(config), num_bridges="2")
    supervisor = Supervisor(graph, log_dir=str(tmp_path / "logs"))
    watcher = Watcher(tmp_path / "logs")
    supervisor.start()
    try:
        def both_bridges_finished_two():
            ids = [r.bridge_id for r in watcher.results]
            return ids.count("bridge_0") >= 2 and ids.count("bridge_1") >= 2
        watcher.wait_for(both_bridges_finished_two, 180, "two episodes from each bridge")
        inits = [r.init_state_id for r in watcher.results]
        assert all(i >= 40 for i in inits), f"eval graph must use held-out init states, got {inits}"
        assert {o.bridge_id for o in watcher.observations} == {"bridge_0", "bridge_1"}
        bag = tmp_path / "run" / "bags" / "iter_000000" / "metadata.yaml"
        watcher.wait_for(bag.is_file, 60, "the recorder's bag of both bridges' episodes")
        assert all(b.num_episodes == 4 for b in watcher.bags), watcher.bags
    finally:
        supervisor.stop(grace_s=10.0)
        watcher.close()


def test_prm_death_is_reported_and_training_goes_on(tmp_path, monkeypatch):
    """The PRM is not required: `vla-rl launch` reports its death, the learner keeps producing versions."""
    import re
    import subprocess
    import sys

    from vla_rl_ros.core.config import load_config
    from vla_rl_ros.core.rl.prm import ProcessRewardModel
    from vla_rl_ros.core.rl.train_loop import build_policy
    isolate_dds(monkeypatch)
    settings = {"env": {"backend": "toy", "task_ids": [0, 1], "num_envs": 2, "image_size": 32,
                        "max_episode_steps": 4},
                "policy": {"size": "tiny", "image_size": 32},
                "reward": {"prm_path": str(tmp_path / "prm"), "prm_weight": 0.1},
                # every toy episode of the untrained policy fails: group estimators would make no version
                "ppo": {"advantage_estimator": "critic"},
                "train": {"episodes_per_iter": 2, "output_dir": str(tmp_path / "run"), "torch_threads": 1},
                "graph": {"action_timeout_s": 30.0, "bag_dir": str(tmp_path / "run" / "bags")}}
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({"/**": {"ros__parameters": settings}}))
    ProcessRewardModel(build_policy(load_config(config))).save(tmp_path / "prm")
    launcher = subprocess.Popen([sys.executable, "-m", "vla_rl_ros.cli.main", "launch", "train_sim",
                                 f"config:={config}", "--duration", "600"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # The nodes write to the launcher's stderr, a pipe here: it must be drained all the time, or
    # once 64 KiB of node logs pile up every node blocks in a write and the graph stalls.
    lines = []
    drain = threading.Thread(target=lambda: lines.extend(launcher.stderr), daemon=True)
    drain.start()
    watcher = Watcher()
    try:
        pids = {}
        deadline = time.monotonic() + 120
        while len(pids) < 5 and time.monotonic() < deadline and launcher.poll() is None:
            pids = {name: int(pid) for line in list(lines)
                    for name, pid in re.findall(r"started /(\w+) \(pid (\d+)", line)}
            time.sleep(0.1)
        assert set(pids) == {"sim_bridge", "policy", "prm", "recorder", "learner"}, "".join(lines)
        try:
            watcher.wait_for(lambda: any(v.version >= 1 for v in watcher.versions), 240, "policy version 1")
            # Under load the PRM can fall so far behind that it has scored nothing by version 1;
            # the bag check below needs at least one score published before the PRM is killed.
            watcher.wait_for(lambda: watcher.step_rewards, 240, "the PRM's first step rewards")
            os.kill(pids["prm"], signal.SIGKILL)
            before = max(v.version for v in watcher.versions)
            watcher.wait_for(lambda: max(v.version for v in watcher.versions) >= before + 2, 240,
                             "versions after the PRM died")
        except AssertionError as err:
            raise AssertionError(f"{err}; the graph's log ends:\n{''.join(lines)[-4000:]}") from None
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=60)
        drain.join(timeout=10)
        rest = "".join(lines)
        assert re.search(r"node /prm exited with code -?\d+ \(not required: the graph carries on\)",
                         rest), rest
        # The PRM works beside the control loop and its scores are recorded. (On the toy env it
        # falls far behind the bridge, so few episodes end fully scored: the learner then uses
        # outcome-only rewards for them.)
        from rosbags.rosbag2 import Reader
        scored = 0
        for bag in sorted((tmp_path / "run" / "bags").glob("iter_*")):
            assert (bag / "metadata.yaml").is_file(), f"{bag} was not closed on shutdown"
            with Reader(bag) as reader:
                scored += sum(c.msgcount for c in reader.connections if c.topic == "/step_rewards")
        assert scored > 0, "the PRM's step rewards never reached a bag"
    finally:
        if launcher.poll() is None:
            # SIGINT first: the launcher stops its nodes (each in its own session); a SIGKILL alone
            # would leave them running after a failed test, eating the CPU of every later test.
            launcher.send_signal(signal.SIGINT)
            try:
                launcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                launcher.kill()
        watcher.close()


def test_action_chunks_flow_through_the_training_graph(tmp_path, monkeypatch):
    """K = 2 on 5-step episodes: decisions at env steps 0, 2 and 4 (the last runs 1 action); the
    recorder's bags carry the chunk size and the learner trains on the turns."""
    isolate_dds(monkeypatch)
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "env": {"backend": "toy", "task_ids": [0, 1], "num_envs": 2, "image_size": 32,
                "max_episode_steps": 5},
        "policy": {"size": "tiny", "image_size": 32, "chunk_size": 2},
        "ppo": {"critic_warmup_iters": 0, "minibatch_size": 4},
        "train": {"episodes_per_iter": 2, "output_dir": str(tmp_path / "run"), "torch_threads": 1},
        "graph": {"action_timeout_s": 30.0, "bag_dir": str(tmp_path / "run" / "bags")}}}}))
    supervisor = Supervisor(build_graph("train_sim", config=str(config)), log_dir=str(tmp_path / "logs"))
    watcher = Watcher(tmp_path / "logs")
    supervisor.start()
    try:
        watcher.wait_for(lambda: any(v.version >= 1 for v in watcher.versions), 240, "policy version 1")
        assert all(v.chunk_size == 2 for v in watcher.versions if v.version >= 1)
        results = [r for r in watcher.results if not r.aborted]
        assert results and all(r.num_decisions == (r.num_steps + 1) // 2 for r in results), \
            [(r.num_steps, r.num_decisions) for r in results]
        assert all(r.num_steps == 5 for r in results if r.truncated)
        assert {i for o in watcher.observations for i in o.step_indices} <= {0, 2, 4}
        assert all(b.chunk_size == 2 and b.num_steps >= b.num_decisions for b in watcher.bags), watcher.bags
        watcher.wait_for(lambda: "policy version 1 from" in _log(tmp_path / "logs", "learner"), 30,
                         "the learner's log of version 1")
        assert "not training on" not in _log(tmp_path / "logs", "learner")  # every turn added up
        assert "rejected ActionBatch" not in _log(tmp_path / "logs", "sim_bridge")
    finally:
        supervisor.stop(grace_s=10.0)
        watcher.close()
