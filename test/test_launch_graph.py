"""Both launch routes start the same graph: launch/*.launch.py (launch_ros) and ``vla-rl launch``.

launch_ros is not on PyPI. Where it is missing, a stand-in with the same call signatures
records what the launch file asks for (Node keyword arguments, declared arguments); the test
then compares that, node by node, with the command lines ``vla-rl launch --dry-run`` runs.
"""
import importlib.util
import shlex
import sys
import types
from pathlib import Path

import pytest
import yaml

from file_modules import load_file_module
from vla_rl_ros.cli.main import main as cli_main
from vla_rl_ros.graph.description import LAUNCH_ARGUMENTS, build_graph

ROOT = Path(__file__).resolve().parents[1]


def _real_launch_ros() -> bool:
    try:
        return importlib.util.find_spec("launch_ros") is not None
    except (ImportError, ValueError):
        return False


class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


@pytest.fixture()
def launch_modules(monkeypatch):
    """The real launch packages where installed, else a recording stand-in."""
    if _real_launch_ros():
        return False
    launch = types.ModuleType("launch")
    actions = types.ModuleType("launch.actions")
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    launch.LaunchDescription = type("LaunchDescription", (_Recorded,), {})
    for name in ("DeclareLaunchArgument", "OpaqueFunction", "Shutdown"):
        setattr(actions, name, type(name, (_Recorded,), {}))
    ros_actions.Node = type("Node", (_Recorded,), {})
    launch.actions, launch_ros.actions = actions, ros_actions
    for name, module in {"launch": launch, "launch.actions": actions, "launch_ros": launch_ros,
                         "launch_ros.actions": ros_actions}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return True


def _load_launch_file(graph: str):
    return load_file_module(f"launch/{graph}.launch.py", f"{graph}_launch").generate_launch_description()


def _launch_route(graph: str, arguments: dict) -> set:
    description = _load_launch_file(graph)
    entities = description.args[0]
    declared = {e.args[0]: e.kwargs for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert set(declared) == set(LAUNCH_ARGUMENTS)
    assert all(kw["description"] and "default_value" in kw for kw in declared.values())
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"][0]
    defaults = {k: v["default_value"] for k, v in declared.items()}
    context = types.SimpleNamespace(launch_configurations=defaults)
    context.launch_configurations.update(arguments)
    nodes = opaque.kwargs["function"](context)
    out = set()
    for node in nodes:
        kw = node.kwargs
        params_file, overrides = kw["parameters"]
        assert kw["package"] == "vla_rl_ros" and kw["ros_arguments"][0] == "--log-level"
        out.add((kw["namespace"], kw["name"], kw["executable"], params_file,
                 yaml.safe_dump(overrides, sort_keys=True), tuple(kw["remappings"]), kw["ros_arguments"][1],
                 kw["on_exit"] is not None))
    return out


def _process_route(graph: str, arguments: dict, capsys) -> set:
    argv = ["launch", graph, "--dry-run"] + [f"{k}:={v}" for k, v in arguments.items()]
    capsys.readouterr()
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    spec_by_role = {}
    for spec in build_graph(graph, **arguments).nodes:
        spec_by_role.setdefault(spec.module, []).append(spec)
    out = set()
    for line in printed.strip().splitlines():
        words = shlex.split(line)
        module = words[2]
        rest = words[words.index("--ros-args") + 1:]
        name, namespace, params_file, overrides, remaps, level = "", "", "", {}, [], ""
        pairs = list(zip(rest[::2], rest[1::2]))
        for flag, value in pairs:
            if flag == "-r" and value.startswith("__node:="):
                name = value.split(":=", 1)[1]
            elif flag == "-r" and value.startswith("__ns:="):
                namespace = value.split(":=", 1)[1].lstrip("/")
            elif flag == "-r":
                remaps.append(tuple(value.split(":=", 1)))
            elif flag == "-p":
                key, raw = value.split(":=", 1)
                overrides[key] = yaml.safe_load(raw)
            elif flag == "--params-file":
                params_file = value
            elif flag == "--log-level":
                level = value
        required = next(s.required for s in spec_by_role[module]
                        if s.name == name and s.namespace == namespace)
        executable = module.rsplit(".", 1)[1].removesuffix("_node")
        out.add((namespace, name, executable, params_file, yaml.safe_dump(overrides, sort_keys=True),
                 tuple(remaps), level, required))
    return out


@pytest.mark.parametrize("graph, arguments", [
    ("train_sim", {}),
    ("train_sim", {"num_bridges": "2", "backend": "toy", "num_envs": "3", "log_level": "debug",
                   "output_dir": "runs/launch_test"}),
    ("eval_sim", {"suite": "libero_goal", "model_path": "/models/sft"}),
])
def test_launch_file_and_process_launcher_start_the_same_graph(launch_modules, graph, arguments, capsys):
    via_launch = _launch_route(graph, arguments)
    via_processes = _process_route(graph, arguments, capsys)
    assert via_launch == via_processes
    roles = sorted(entry[2] for entry in via_launch)
    expected = ["learner", "policy", "recorder"] if graph == "train_sim" else ["policy", "recorder"]
    bridges = int(arguments.get("num_bridges", "1"))
    assert roles == sorted(expected + ["sim_bridge"] * bridges)
    if bridges > 1:
        namespaced = sorted(e for e in via_launch if e[2] == "sim_bridge")
        assert [e[0] for e in namespaced] == ["bridge_0", "bridge_1"]
        assert ("observations", "/observations") in namespaced[0][5]


def test_every_node_of_the_graph_has_both_executables():
    setup_text = (ROOT / "setup.py").read_text()
    for spec in build_graph("train_sim").nodes + build_graph("eval_sim").nodes:
        launcher = ROOT / "scripts" / "ros2_run" / spec.executable
        assert launcher.is_file() and launcher.stat().st_mode & 0o111, launcher
        assert spec.module in launcher.read_text()
        assert importlib.util.find_spec(spec.module) is not None
    assert '"sim_bridge", "policy", "prm", "recorder", "learner"' in setup_text


def test_bad_launch_arguments_are_refused_clearly(capsys):
    cases = ((["num_envs:=zero"], "num_envs='zero'"), (["colour:=red"], "unknown launch argument"),
             (["suite"], "NAME:=VALUE"), (["env_typo:=1", "--dry-run"], "unknown launch argument"))
    for argv, reason in cases:
        assert cli_main(["launch", "train_sim", *argv, "--dry-run"]) == 2
        assert reason in capsys.readouterr().err


def test_a_broken_config_file_fails_before_any_node_starts(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    ppo: {clip_rnage: 0.1}\n")
    assert cli_main(["launch", "train_sim", f"config:={bad}"]) == 2
    assert "ppo.clip_rnage" in capsys.readouterr().err


def test_config_and_set_options_reach_every_node(tmp_path, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text("/**:\n  ros__parameters:\n    env: {backend: toy, task_ids: [0]}\n")
    assert cli_main(["launch", "train_sim", "--config", str(config), "--set", "ppo.clip_range=0.1",
                     "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert all(f"--params-file {config}" in line and "-p ppo.clip_range:=0.1" in line for line in lines)


def test_only_the_training_graph_runs_in_lockstep():
    """config/train_sim.yaml ships graph.lockstep; eval_sim has no learner to hand out plans."""
    train = {n.name: n.parameters for n in build_graph("train_sim").nodes}
    evaluation = {n.name: n.parameters for n in build_graph("eval_sim", config="config/train_sim.yaml").nodes}
    assert "graph.lockstep" not in train["sim_bridge"]  # the file's value (true) applies
    assert evaluation["sim_bridge"]["graph.lockstep"] is False
    assert evaluation["sim_bridge"]["init_states"] == "eval" and "learner" not in evaluation
