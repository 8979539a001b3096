"""The real ``ros2 launch`` of launch/*.launch.py, with the upstream launch sources in ../shared/upstream.

The package is built by the CMake route into an install prefix on AMENT_PREFIX_PATH (what
``colcon build`` + ``source install/setup.bash`` give a ROS 2 user); launch, launch_ros,
ros2cli and ros2launch are pip-installed into a scratch prefix and composition_interfaces is
generated with rosidl (test/helpers/upstream_launch.py). Each graph is then started by
``ros2 launch vla_rl_ros <file>``, looked at from outside through the ROS graph (node names,
parameter services, topics per node), made to do its job, and stopped with SIGINT.

Skipped where ../shared/upstream is absent (a user's clone); CI lays it out, so it runs there.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cmake_route import ROOT, have_cmake_and_ninja, this_package_installed
from dds_domains import isolate_dds
from graph_probe import GraphProbe
from toy_graph_params import write_toy_graph_params
from upstream_launch import (Ros2Launch, build_composition_interfaces, install_launch_packages,
                             ros2_launch_environment, upstream_missing_reason)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(upstream_missing_reason() is not None, reason=str(upstream_missing_reason())),
    pytest.mark.skipif(not have_cmake_and_ninja(), reason="cmake and ninja are installed by tools/setup.sh")]

NODES_UP_S = 120      # four torch-importing processes starting at once on two busy cores
JOB_S = 180           # the graph's job (a policy version, episodes) once it is up


@pytest.fixture(scope="module")
def install_prefixes(tmp_path_factory) -> list[Path]:
    """This package, composition_interfaces and the launch packages, each in an install prefix."""
    work = tmp_path_factory.mktemp("upstream_launch")
    launch_packages = install_launch_packages(work / "launch")
    interfaces = build_composition_interfaces(work / "interfaces")
    return [this_package_installed(tmp_path_factory), interfaces, launch_packages]


@pytest.fixture()
def ros2_launch(install_prefixes, tmp_path, monkeypatch):
    """Starts ``ros2 launch vla_rl_ros FILE ARGS`` in a private DDS domain; kills what is left after."""
    isolate_dds(monkeypatch)  # before the environment is copied: the launched nodes inherit the domain
    monkeypatch.setenv("ROS_LOG_DIR", str(tmp_path / "ros_logs"))
    monkeypatch.setenv("ROS_HOME", str(tmp_path / "ros_home"))   # franka_bridge's e-stop reset token
    started: list[Ros2Launch] = []

    def start(launch_file: str, **arguments: str) -> Ros2Launch:
        env = ros2_launch_environment(install_prefixes)
        started.append(Ros2Launch(env, launch_file, arguments, tmp_path / f"{launch_file}.log"))
        return started[-1]

    yield start
    for launch in started:
        launch.kill()


def graph_nodes(names: set[str]) -> set[str]:
    """``names`` without the node launch_ros may start inside the launch process itself."""
    return {n for n in names if not n.startswith("/launch_ros_")}


def stop_and_check_clean_exit(launch: Ros2Launch, executables: list[str]) -> None:
    """SIGINT to ``ros2 launch``: it must stop every node process and exit 0, with no node dying.

    ``executables``: one entry per node process (an executable started twice appears twice).
    """
    code = launch.interrupt(timeout_s=90)
    output = launch.output()
    assert code == 0, f"ros2 launch exited {code} after SIGINT{launch.tail()}"
    # ros2 launch exits 0 even when it had to SIGKILL a node: each node's own line tells.
    for executable in set(executables):
        clean = re.findall(rf"\[INFO\] \[{executable}-\d+\]: process has finished cleanly", output)
        assert len(clean) == executables.count(executable), \
            f"{executables.count(executable)} {executable} should have finished cleanly{launch.tail()}"
    assert "process has died" not in output, launch.tail()


def test_train_sim_launch_starts_the_training_graph_and_trains(ros2_launch, tmp_path):
    from vla_rl_ros.msg import EpisodeResult, PolicyVersion
    from vla_rl_ros.nodes import qos
    config = write_toy_graph_params(tmp_path, episodes_per_iter=2, action_timeout_s=10.0)
    run = tmp_path / "launched_run"   # not the params file's output_dir: the argument must win
    launch = ros2_launch("train_sim.launch.py", config=str(config), num_envs="1", output_dir=str(run))
    probe = GraphProbe(describe_failure=launch.tail)
    try:
        versions = probe.record(PolicyVersion, "/policy_version", qos.LATCHED)
        results = probe.record(EpisodeResult, "/episode_results", qos.BATCH)
        expected = {"/sim_bridge", "/policy", "/recorder", "/learner"}
        assert graph_nodes(probe.wait_for_nodes(expected, NODES_UP_S)) == expected

        bridge = probe.parameters("/sim_bridge", ["env.backend", "env.num_envs",
                                                  "min_observation_subscribers", "train.output_dir"])
        assert bridge == {"env.backend": "toy", "env.num_envs": 1, "min_observation_subscribers": 2,
                          "train.output_dir": str(run)}
        assert probe.parameters("/policy", ["greedy", "policy.size"]) == {"greedy": False,
                                                                          "policy.size": "tiny"}
        assert probe.parameters("/learner", ["train.output_dir", "graph.bag_dir"]) == \
            {"train.output_dir": str(run), "graph.bag_dir": str(run / "bags")}
        published, _ = probe.wait_for_topics(
            "/sim_bridge", {"/observations", "/episode_results", "/env_0/image_raw"},
            {"/actions", "/task_assignments"})
        assert "/env_1/image_raw" not in published   # num_envs:=1 overrides the file's 2

        probe.wait_for(lambda: any(v.version >= 1 for v in versions), JOB_S, "policy version 1")
        assert results and all(r.env_id == 0 for r in results)
        assert (run / "adapters" / "v000001").is_dir() and sorted((run / "bags").glob("iter_*"))
        assert not (tmp_path / "run").exists(), "the params file's output_dir was used despite output_dir:="
        probe.wait_for(lambda: "loaded policy version 1" in launch.output(), 60, "the policy loading v1")
    finally:
        probe.close()
    stop_and_check_clean_exit(launch, ["sim_bridge", "policy", "recorder", "learner"])


def test_eval_sim_launch_runs_two_namespaced_bridges_on_held_out_states(ros2_launch, tmp_path):
    from vla_rl_ros.msg import EpisodeResult, ObservationBatch
    from vla_rl_ros.nodes import qos
    config = write_toy_graph_params(tmp_path, episodes_per_iter=4, action_timeout_s=10.0)
    launch = ros2_launch("eval_sim.launch.py", config=str(config), num_bridges="2", num_envs="1",
                         log_level="warn")
    probe = GraphProbe(describe_failure=launch.tail)
    try:
        results = probe.record(EpisodeResult, "/episode_results", qos.BATCH)
        observations = probe.record(ObservationBatch, "/observations", qos.BATCH)
        bridges = {"/bridge_0/sim_bridge", "/bridge_1/sim_bridge"}
        expected = bridges | {"/policy", "/recorder"}
        assert graph_nodes(probe.wait_for_nodes(expected, NODES_UP_S)) == expected   # no learner
        for index, bridge in enumerate(sorted(bridges)):
            assert probe.parameters(bridge, ["bridge_id", "init_states", "env.num_envs"]) == \
                {"bridge_id": f"bridge_{index}", "init_states": "eval", "env.num_envs": 1}
            # The shared topics are remapped to the root; the camera stays in the bridge's namespace.
            published, subscribed = probe.wait_for_topics(
                bridge, {"/observations", "/episode_results", f"/bridge_{index}/env_0/image_raw"},
                {"/actions", "/task_assignments"})
            assert not {t for t in published | subscribed if t.startswith(f"/bridge_{index}/observations")}
        assert probe.parameters("/policy", ["greedy"]) == {"greedy": True}

        def two_episodes_from_each_bridge():
            ids = [r.bridge_id for r in results]
            return ids.count("bridge_0") >= 2 and ids.count("bridge_1") >= 2
        probe.wait_for(two_episodes_from_each_bridge, JOB_S, "two episodes from each bridge")
        inits = [r.init_state_id for r in results]
        assert all(i >= 40 for i in inits), f"eval graph must use held-out init states, got {inits}"
        assert {o.bridge_id for o in observations} == {"bridge_0", "bridge_1"}
        bag = tmp_path / "run" / "bags" / "iter_000000" / "metadata.yaml"
        probe.wait_for(bag.is_file, 60, "the recorder's bag of both bridges' episodes")
    finally:
        probe.close()
    stop_and_check_clean_exit(launch, ["sim_bridge", "sim_bridge", "policy", "recorder"])


def write_tiny_franka_params(tmp_path: Path) -> Path:
    """config/franka.yaml with the tiny policy on 32 px frames and 6-step episodes."""
    params = yaml.safe_load((ROOT / "config" / "franka.yaml").read_text())
    shared = params["/**"]["ros__parameters"]
    shared["env"].update(image_size=32, max_episode_steps=6)
    shared["policy"].update(size="tiny", image_size=32)
    shared["safety"]["watchdog_timeout_s"] = 5.0   # a loaded CPU must not make the watchdog the story
    config = tmp_path / "franka_tiny.yaml"
    config.write_text(yaml.safe_dump(params))
    return config


def test_deploy_franka_launch_dry_runs_against_the_fake_driver(ros2_launch, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped

    from fake_franka_driver import FakeFrankaDriver
    from vla_rl_ros.msg import EpisodeResult
    from vla_rl_ros.nodes import qos
    arm = "/arm"   # the driver's topics live here: only the launch's remappings connect the bridge
    remapped = {"camera_topic": f"{arm}/camera/image_raw", "joint_states_topic": f"{arm}/joint_states",
                "eef_pose_topic": f"{arm}/eef_pose", "pose_command_topic": f"{arm}/command/pose",
                "twist_command_topic": f"{arm}/command/twist",
                "gripper_command_topic": f"{arm}/command/gripper"}
    instruction = "put the bowl on the plate"
    launch = ros2_launch("deploy_franka.launch.py", config=str(write_tiny_franka_params(tmp_path)),
                         output_dir=str(tmp_path / "franka_run"), instruction=instruction, **remapped)
    probe = GraphProbe(ros_args=["-r", f"fake_franka_driver:__ns:={arm}"], describe_failure=launch.tail)
    driver = FakeFrankaDriver(context=probe.context)
    probe.add_node(driver)
    try:
        dry_poses = probe.record(PoseStamped, "/dry_run/command/pose", qos.COMMAND)
        diagnostics = probe.record(DiagnosticArray, "/diagnostics", qos.COMMAND)
        results = probe.record(EpisodeResult, "/episode_results", qos.BATCH)
        expected = {"/franka_bridge", "/policy", "/recorder", f"{arm}/fake_franka_driver"}
        # mode eval, no PRM by default: no learner, no prm
        assert graph_nodes(probe.wait_for_nodes(expected, NODES_UP_S)) == expected
        bridge = probe.parameters("/franka_bridge", ["safety.armed", "instruction",
                                                     "min_observation_subscribers", "env.max_episode_steps"])
        assert bridge == {"safety.armed": False, "instruction": instruction, "min_observation_subscribers": 2,
                          "env.max_episode_steps": 6}
        assert probe.parameters("/policy", ["greedy", "policy.size"]) == {"greedy": True,
                                                                          "policy.size": "tiny"}
        probe.wait_for_topics("/franka_bridge", {"/dry_run/command/pose", "/dry_run/command/gripper"},
                              {f"{arm}/camera/image_raw", f"{arm}/joint_states", f"{arm}/eef_pose"})

        probe.wait_for(lambda: results, JOB_S, "the first episode ending at env.max_episode_steps")
        assert results[0].truncated and results[0].num_steps == 6 and results[0].bridge_id == "franka"
        assert len(dry_poses) >= 6, len(dry_poses)
        assert not driver.commands("pose") and not driver.commands("gripper"), "a dry run reached the driver"
        published, _ = probe.topics_of("/franka_bridge")   # long discovered by now
        assert not {t for t in published if t.startswith(f"{arm}/") or t.startswith("/command/")}, \
            f"a dry run must not even have a publisher on the driver's command topics: {published}"
        # Every node reports its rejected inputs on /diagnostics too; the safety layer's status is one.
        safety = probe.wait_for(lambda: [s for array in diagnostics for s in array.status
                                         if s.name == "franka_bridge: safety"], 10, "safety diagnostics")
        assert {kv.key: kv.value for kv in safety[-1].values}["armed"] == "false"
    finally:
        probe.close()
    stop_and_check_clean_exit(launch, ["franka_bridge", "policy", "recorder"])
