"""The node graphs of the package, described once for both launch routes.

``launch/*.launch.py`` (ros2 launch, launch_ros) and ``vla-rl launch`` (plain processes, for
machines without ROS 2's launch packages) both build their nodes from :func:`build_graph`, so
the two routes start the same nodes with the same names, namespaces, parameters and
remappings. This module is ROS-free: launch files import it before any ROS package.

Topology: every bridge publishes on the shared ``/observations`` topic (demultiplexed by the
``bridge_id`` inside each batch); one policy node decodes for all of them. With several bridges
each lives in its own namespace (``bridge_0``, ``bridge_1``...) and its topics are remapped to
the shared global ones; its camera/joint-state topics stay inside its namespace.

Over several hosts the same graph is split with two arguments: ``only`` starts some of its
nodes (``sim_bridge`` on a rollout host; ``sim_bridge,policy,recorder`` beside a learner run
under torchrun), ``bridge_namespace`` names a host's bridges apart from the other hosts'
(``host_b``, or ``host_b_0``, ``host_b_1``... with several), with the same remappings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_rl_ros.graph import topics

PACKAGE = "vla_rl_ros"
GRAPHS = ("train_sim", "eval_sim")
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
SHARED_BRIDGE_TOPICS = (topics.OBSERVATIONS, topics.ACTIONS, topics.EPISODE_RESULTS, topics.TASK_ASSIGNMENTS,
                        topics.TASK_REQUESTS)


@dataclass
class NodeSpec:
    """One node of a graph, in terms both launch routes understand."""

    role: str
    """Which node program: sim_bridge, policy, prm, recorder, learner."""
    name: str
    """ROS node name."""
    namespace: str = ""
    """ROS namespace ('' = root)."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """Flattened parameter overrides, applied after the params file (e.g. ``env.num_envs: 2``)."""
    remappings: list[tuple[str, str]] = field(default_factory=list)
    """``(from, to)`` topic remappings."""
    required: bool = True
    """When this node dies the whole graph stops (otherwise the graph reports it and carries on)."""

    @property
    def executable(self) -> str:
        """``ros2 run vla_rl_ros <executable>`` name (scripts/ros2_run/<executable>)."""
        return self.role

    @property
    def module(self) -> str:
        """Python module whose ``main()`` runs the node."""
        return f"{PACKAGE}.nodes.{self.role}_node"


@dataclass
class GraphSpec:
    """A whole graph: nodes plus what every node shares (params file, log level)."""

    name: str
    params_file: str
    log_level: str
    nodes: list[NodeSpec]


def default_config_file(graph: str) -> str:
    """``config/<graph>.yaml`` of the installed package share, else of the source tree."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        try:
            shared = Path(get_package_share_directory(PACKAGE)) / "config" / f"{graph}.yaml"
            if shared.is_file():
                return str(shared)
        except (PackageNotFoundError, OSError):  # not installed, or no AMENT_PREFIX_PATH
            pass
    except ImportError:
        pass
    return str(Path(__file__).resolve().parents[2] / "config" / f"{graph}.yaml")


# name -> (default, description): the launch arguments of every graph, shared by both routes.
LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "config": ("", "ROS 2 params YAML with the experiment configuration ('' = the package's "
                   "config/<graph>.yaml)"),
    "suite": ("", "LIBERO task suite, e.g. libero_spatial ('' = the config file's env.suite)"),
    "backend": ("", "environment backend: libero or toy ('' = the config file's env.backend)"),
    "num_envs": ("", "environments per bridge ('' = the config file's env.num_envs)"),
    "num_bridges": ("1", "number of sim_bridge nodes (namespaced bridge_0, bridge_1, ...)"),
    "model_path": ("", "policy checkpoint directory ('' = the config file's policy.model_path)"),
    "output_dir": ("", "run directory for adapters, bags and logs ('' = the config file's train.output_dir)"),
    "log_level": ("info", f"ROS log level of every node: {', '.join(LOG_LEVELS)}"),
    "only": ("", "comma-separated roles of the graph to start, e.g. sim_bridge on a rollout host, or "
                 "sim_bridge,policy,recorder when the learner runs under torchrun ('' = every node)"),
    "bridge_namespace": ("", "namespace of this host's bridges, e.g. host_b (with several: host_b_0, "
                             "host_b_1, ...); it is also their bridge_id ('' = bridge_0, bridge_1, ... "
                             "with several bridges, none with one)"),
}


def _overrides(arguments: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if arguments.get("suite"):
        out["env.suite"] = arguments["suite"]
    if arguments.get("backend"):
        out["env.backend"] = arguments["backend"]
    if arguments.get("num_envs"):
        out["env.num_envs"] = int(arguments["num_envs"])
    if arguments.get("model_path"):
        out["policy.model_path"] = arguments["model_path"]
    if arguments.get("output_dir"):
        out["train.output_dir"] = arguments["output_dir"]
        out["graph.bag_dir"] = str(Path(arguments["output_dir"]) / "bags")
    return out


def build_graph(graph: str, overrides: dict[str, Any] | None = None, **arguments: str) -> GraphSpec:
    """The nodes of ``graph`` ('train_sim' or 'eval_sim') for launch ``arguments`` (strings, as launch gives).

    ``overrides`` (flattened ``{"ppo.clip_range": 0.1}``) become parameters of every node, after
    the params file. Raises ValueError naming the argument for an unknown graph, argument or value.
    """
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; graphs: {', '.join(GRAPHS)}")
    unknown = sorted(set(arguments) - set(LAUNCH_ARGUMENTS))
    if unknown:
        raise ValueError(f"unknown launch argument(s) {unknown}; known: {', '.join(LAUNCH_ARGUMENTS)}")
    args = {name: str(default) for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    args.update({k: str(v) for k, v in arguments.items()})
    if args["log_level"] not in LOG_LEVELS:
        raise ValueError(f"log_level={args['log_level']!r}: one of {', '.join(LOG_LEVELS)}")
    if not args["num_bridges"].isdigit() or int(args["num_bridges"]) < 1:
        raise ValueError(f"num_bridges={args['num_bridges']!r}: a positive integer")
    if args["num_envs"] and (not args["num_envs"].isdigit() or int(args["num_envs"]) < 1):
        raise ValueError(f"num_envs={args['num_envs']!r}: a positive integer")
    params_file = args["config"] or default_config_file(graph)
    shared = dict(overrides or {})
    shared.update(_overrides(args))
    cfg = _resolved_config(params_file, shared)
    num_bridges = int(args["num_bridges"])
    uses_prm = bool(cfg.reward.prm_path) and cfg.reward.prm_weight > 0
    consumers = 2 + int(uses_prm)  # policy + recorder (+ prm) must hear the first batch
    nodes = []
    prefix = args["bridge_namespace"]
    if prefix and not prefix.replace("_", "a").isalnum():
        raise ValueError(f"bridge_namespace={prefix!r}: letters, digits and underscores")
    for index in range(num_bridges):
        if prefix:
            namespace = prefix if num_bridges == 1 else f"{prefix}_{index}"
        else:
            namespace = f"bridge_{index}" if num_bridges > 1 else ""
        bridge_params = dict(shared, min_observation_subscribers=consumers)
        if graph == "eval_sim":
            bridge_params["init_states"] = "eval"
            bridge_params["graph.lockstep"] = False  # no learner hands out plans in this graph
        if namespace:
            bridge_params["bridge_id"] = namespace
        nodes.append(NodeSpec("sim_bridge", "sim_bridge", namespace, bridge_params,
                              [(t, "/" + t) for t in SHARED_BRIDGE_TOPICS] if namespace else []))
    nodes.append(NodeSpec("policy", "policy", "", dict(shared, greedy=graph == "eval_sim")))
    if uses_prm:
        nodes.append(NodeSpec("prm", "prm", "", dict(shared), required=False))
    nodes.append(NodeSpec("recorder", "recorder", "", dict(shared)))
    if graph == "train_sim":
        nodes.append(NodeSpec("learner", "learner", "", dict(shared)))
    if args["only"]:
        roles = [r.strip() for r in args["only"].split(",") if r.strip()]
        known = sorted({n.role for n in nodes})
        unknown = sorted(set(roles) - set(known))
        if unknown or not roles:
            raise ValueError(f"only={args['only']!r}: roles of the {graph} graph are {', '.join(known)}")
        nodes = [n for n in nodes if n.role in roles]
    return GraphSpec(graph, params_file, args["log_level"], nodes)


def _resolved_config(params_file: str, flat_overrides: dict[str, Any]):
    """The ExperimentConfig the nodes will see (validated here so a bad file fails before launch)."""
    from vla_rl_ros.core.config import load_config
    return load_config(params_file, [f"{k}={v}" for k, v in flat_overrides.items()])


def node_command(spec: NodeSpec, graph: GraphSpec, python: str) -> list[str]:
    """Command line that runs ``spec`` as a process with the ROS arguments launch_ros would pass."""
    argv = [python, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}"]
    if spec.namespace:
        argv += ["-r", f"__ns:=/{spec.namespace}"]
    argv += ["--params-file", graph.params_file]
    for name, value in spec.parameters.items():
        argv += ["-p", f"{name}:={_yaml_value(value)}"]
    for source, target in spec.remappings:
        argv += ["-r", f"{source}:={target}"]
    argv += ["--log-level", graph.log_level]
    return argv


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'" if value == "" or not value.strip() else value
    return str(value)
