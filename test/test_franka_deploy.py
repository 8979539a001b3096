"""The real-arm graph: description, launch file, config file, markers, camera frames, and the
whole deploy graph (franka_bridge + a tiny policy, separate processes) against the fake driver."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_local.xml"))
sys.path.insert(0, str(Path(__file__).parent))

from dds_domains import isolate_dds  # noqa: E402
from file_modules import load_file_module  # noqa: E402
from vla_rl_ros.core.config import load_config  # noqa: E402
from vla_rl_ros.core.config_io import ConfigError  # noqa: E402
from vla_rl_ros.graph.deploy_franka import DEPLOY_ARGUMENTS, build_deploy_graph  # noqa: E402
from vla_rl_ros.graph.description import node_command  # noqa: E402
from vla_rl_ros.graph.processes import stop_processes  # noqa: E402


def roles(graph):
    return [n.role for n in graph.nodes]


def test_deploy_graph_defaults_to_dry_run_evaluation():
    graph = build_deploy_graph()
    assert roles(graph) == ["franka_bridge", "policy", "recorder"]
    assert graph.params_file.endswith("config/franka.yaml")
    bridge, policy = graph.nodes[0], graph.nodes[1]
    assert bridge.parameters["safety.armed"] is False and bridge.remappings == []
    assert bridge.parameters["min_observation_subscribers"] == 2  # policy + recorder
    assert policy.parameters["greedy"] is True
    argv = node_command(bridge, graph, "python")
    assert argv[:3] == ["python", "-m", "vla_rl_ros.nodes.franka_bridge_node"]
    assert "safety.armed:=false" in argv


def test_deploy_graph_rl_mode_remaps_driver_topics_and_arms_on_request():
    graph = build_deploy_graph(mode="rl", armed="true", camera_topic="/cam/color/image_raw",
                               pose_command_topic="/cartesian_pose_controller/target",
                               instruction="open the drawer")
    assert roles(graph) == ["franka_bridge", "policy", "recorder", "learner"]
    bridge = graph.nodes[0]
    assert ("camera/image_raw", "/cam/color/image_raw") in bridge.remappings
    assert ("command/pose", "/cartesian_pose_controller/target") in bridge.remappings
    assert bridge.parameters["safety.armed"] is True and bridge.parameters["instruction"] == "open the drawer"
    assert graph.nodes[1].parameters["greedy"] is False


@pytest.mark.parametrize("arguments, message", [
    ({"mode": "train"}, "mode='train'"), ({"armed": "yes"}, "armed='yes'"),
    ({"speed": "1"}, "unknown launch"),
    ({"use_prm": "true"}, "reward.prm_path"), ({"log_level": "loud"}, "log_level")])
def test_deploy_graph_rejects_bad_arguments_by_name(arguments, message):
    with pytest.raises(ValueError, match=message):
        build_deploy_graph(**arguments)


class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


@pytest.fixture
def launch_stand_in(monkeypatch):
    """launch / launch_ros stand-ins recording what the launch file asks for (they are not on PyPI)."""
    if importlib.util.find_spec("launch_ros") is not None:
        pytest.skip("real launch_ros installed: use ros2 launch")
    import types
    modules = {name: types.ModuleType(name) for name in ("launch", "launch.actions", "launch_ros",
                                                         "launch_ros.actions")}
    modules["launch"].LaunchDescription = type("LaunchDescription", (_Recorded,), {})
    for name in ("DeclareLaunchArgument", "OpaqueFunction", "Shutdown"):
        setattr(modules["launch.actions"], name, type(name, (_Recorded,), {}))
    modules["launch_ros.actions"].Node = type("Node", (_Recorded,), {})
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_launch_file_and_vla_rl_launch_start_the_same_deploy_graph(launch_stand_in, capsys):
    import types

    from vla_rl_ros.cli.main import main as cli_main
    module = load_file_module("launch/deploy_franka.launch.py", "deploy_franka_launch")
    entities = module.generate_launch_description().args[0]
    declared = {e.args[0]: e.kwargs for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert set(declared) == set(DEPLOY_ARGUMENTS)
    assert all(len(kw["description"]) > 10 for kw in declared.values())
    arguments = {"mode": "rl", "camera_topic": "/cam/color/image_raw"}
    configurations = {k: v["default_value"] for k, v in declared.items()} | arguments
    opaque = next(e for e in entities if type(e).__name__ == "OpaqueFunction")
    nodes = opaque.kwargs["function"](types.SimpleNamespace(launch_configurations=configurations))
    via_launch = [(n.kwargs["executable"], n.kwargs["name"], n.kwargs["parameters"][1],
                   list(n.kwargs["remappings"])) for n in nodes]
    graph = build_deploy_graph(**arguments)
    assert via_launch == [(s.executable, s.name, s.parameters, s.remappings) for s in graph.nodes]
    capsys.readouterr()
    argv = ["launch", "deploy_franka", "--dry-run"] + [f"{k}:={v}" for k, v in arguments.items()]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [" ".join(node_command(s, graph, sys.executable)) for s in graph.nodes]


def test_franka_config_is_valid_and_bridge_block_matches_node_parameters():
    from vla_rl_ros.nodes.franka_bridge_node import EXTRA_PARAMETERS
    cfg = load_config(ROOT / "config" / "franka.yaml")
    assert cfg.safety.armed is False and cfg.env.num_envs == 1
    text = (ROOT / "config" / "franka.yaml").read_text()
    template = "\n".join(line[2:] for line in text.split("# franka_bridge:", 1)[1].splitlines())
    block = yaml.safe_load("franka_bridge:" + template)["franka_bridge"]["ros__parameters"]
    assert set(block) == set(EXTRA_PARAMETERS)  # the commented template documents every node parameter
    with pytest.raises(ConfigError, match="safety.max_linear_speed_m_s"):
        load_config(ROOT / "config" / "franka.yaml", ["safety.max_linear_speed_m_s=0"])


def test_markers_show_path_target_workspace_task_and_progress():
    from std_msgs.msg import Header
    from visualization_msgs.msg import Marker

    from vla_rl_ros.nodes import markers
    array = markers.bridge_markers(Header(frame_id="panda_link0"), [[0.5, 0, 0.3], [0.51, 0, 0.3]],
                                   [0.52, 0, 0.3], True, "put the bowl on the plate", 0.42, "armed, stopped",
                                   ([0.25, -0.4, 0.02], [0.75, 0.4, 0.6]), policy_version=3)
    by_ns = {m.ns: m for m in array.markers}
    assert by_ns["eef_path"].type == Marker.LINE_STRIP and len(by_ns["eef_path"].points) == 2
    assert len(by_ns["workspace"].points) == 24  # 12 edges
    assert by_ns["safe_target"].color.r > by_ns["safe_target"].color.g  # red: stopped
    assert by_ns["task"].text == "put the bowl on the plate"
    assert by_ns["prm_progress"].text == "progress 0.42 (policy v3)"
    assert markers.progress_text(None) == "progress n/a"


def test_camera_frames_are_cropped_resized_and_rgb():
    from sensor_msgs.msg import Image

    from vla_rl_ros.nodes.convert import MessageError
    from vla_rl_ros.nodes.franka_bridge_node import camera_frame
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, :, 2] = 255  # channel 2 of a bgr8 frame is red
    msg = Image(height=48, width=64, encoding="bgr8", step=64 * 3, data=frame.tobytes())
    out = camera_frame(msg, 32)
    assert out.shape == (32, 32, 3) and out[..., 0].min() == 255 and out[..., 2].max() == 0
    with pytest.raises(MessageError, match="encoding"):
        camera_frame(Image(height=2, width=2, encoding="mono8", step=2, data=bytes(4)), 32)


@pytest.fixture
def fake_driver(monkeypatch):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from fake_franka_driver import FakeFrankaDriver
    isolate_dds(monkeypatch)
    rclpy.init()
    driver = FakeFrankaDriver()
    executor = SingleThreadedExecutor()
    executor.add_node(driver)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield driver, executor
    executor.shutdown()
    rclpy.shutdown()
    thread.join(timeout=5)


@pytest.mark.slow
def test_deploy_graph_drives_the_fake_arm_end_to_end(fake_driver, tmp_path):
    """franka_bridge + a tiny policy (real processes, built by the deploy description), armed."""
    from std_srvs.srv import SetBool, Trigger

    from vla_rl_ros.msg import EpisodeResult, ObservationBatch
    from vla_rl_ros.nodes import qos
    driver, executor = fake_driver
    results, observation_stamps = [], set()
    driver.create_subscription(EpisodeResult, "episode_results", results.append, qos.BATCH)
    driver.create_subscription(ObservationBatch, "observations",
                               lambda m: observation_stamps.add((m.header.stamp.sec, m.header.stamp.nanosec)),
                               qos.BATCH)
    end_client = driver.create_client(SetBool, "end_episode")
    start_client = driver.create_client(Trigger, "start_episode")
    graph = build_deploy_graph(armed="true", output_dir=str(tmp_path), log_level="warn")
    logs = {}
    processes = []
    for spec in graph.nodes:
        if spec.role not in ("franka_bridge", "policy"):
            continue
        extra = ["-p", "policy.size:=tiny", "-p", "safety.watchdog_timeout_s:=5.0"]
        if spec.role == "franka_bridge":
            extra += ["-p", "min_observation_subscribers:=1",  # no recorder in this test
                      "-p", "env.max_episode_steps:=10"]
        logs[spec.role] = tmp_path / f"{spec.role}.log"
        processes.append(subprocess.Popen(node_command(spec, graph, sys.executable) + extra, cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=logs[spec.role].open("w")))

    def died():
        return [f"{role} exited: {log.read_text()[-3000:]}" for (role, log), p in zip(logs.items(), processes)
                if p.poll() is not None]

    try:
        def answered():  # commands stamped with an observation's stamp answer that observation's action
            return [m for _, m in driver.commands("pose")
                    if (m.header.stamp.sec, m.header.stamp.nanosec) in observation_stamps]

        def call(client, request):
            assert client.wait_for_service(timeout_sec=10)
            future = client.call_async(request)
            while not future.done() and time.monotonic() < deadline + 30:
                time.sleep(0.05)
            return future.result()

        deadline = time.monotonic() + 150
        while not results and time.monotonic() < deadline:  # the 10-step limit ends episode 0
            assert not died(), died()
            time.sleep(0.1)
        tail = {role: log.read_text()[-1500:] for role, log in logs.items()}
        assert results, f"no episode ended: {len(answered())} commands answered observations; {tail}"
        assert results[0].truncated and not results[0].success and results[0].num_steps == 10
        assert len(answered()) >= 10 and driver.commands("gripper") and len(results[0].final_proprio) == 8
        paused_at = len(observation_stamps)
        time.sleep(1.0)
        assert len(observation_stamps) == paused_at, "observations went on between episodes"
        assert call(start_client, Trigger.Request()).success
        while len(observation_stamps) < paused_at + 3 and time.monotonic() < deadline + 30:
            time.sleep(0.05)
        assert call(end_client, SetBool.Request(data=True)).success
        while len(results) < 2 and time.monotonic() < deadline + 30:
            time.sleep(0.05)
        assert results[1].success and not results[1].truncated and results[1].episode_id == 1
    finally:
        stop_processes(processes)
