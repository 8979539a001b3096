"""``vla-rl launch GRAPH [NAME:=VALUE ...]``: start a node graph as processes, without ros2 launch.

The node list, names, namespaces, parameters and remappings come from
:mod:`vla_rl_ros.graph.description`, the same description ``launch/<graph>.launch.py`` uses.
Ctrl-C (or SIGTERM) is forwarded to every node, which then shuts down cleanly; a node that
ignores it is terminated, then killed. When a required node dies the whole graph stops and the
command exits non-zero; a non-required node's death is reported and the graph carries on.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from vla_rl_ros.cli.main import add_config_arguments
from vla_rl_ros.core.config_io import flatten, parse_overrides
from vla_rl_ros.graph.deploy_franka import GRAPH as DEPLOY_GRAPH
from vla_rl_ros.graph.deploy_franka import build_deploy_graph
from vla_rl_ros.graph.description import GRAPHS, LAUNCH_ARGUMENTS, GraphSpec, build_graph, node_command

STOP_GRACE_S = 10.0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``launch`` subcommand."""
    arguments = "\n".join(f"  {name}:=VALUE  {text} (default {default!r})"
                          for name, (default, text) in LAUNCH_ARGUMENTS.items())
    parser = sub.add_parser(
        "launch", help="start a ROS 2 graph (train_sim, eval_sim, ...) without ros2 launch",
        description="Start a node graph as processes (the same graph as ros2 launch vla_rl_ros "
                    "<graph>.launch.py).", epilog="launch arguments:\n" + arguments,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph", choices=GRAPHS + (DEPLOY_GRAPH,),
                        help=f"which graph to start ({DEPLOY_GRAPH}: real arm, arguments in docs/franka.md)")
    add_config_arguments(parser)
    # REMAINDER so that options may follow the launch arguments (argparse cannot interleave them).
    parser.add_argument("arguments", nargs=argparse.REMAINDER, metavar="NAME:=VALUE",
                        help="launch arguments (see below)")
    parser.add_argument("--dry-run", action="store_true", help="print each node's command line and exit")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="stop the graph after this many seconds (0 = run until Ctrl-C)")
    parser.set_defaults(func=run)


def parse_launch_arguments(items: list[str]) -> dict[str, str]:
    """``["suite:=libero_goal"]`` -> ``{"suite": "libero_goal"}``, with ros2 launch's syntax."""
    out = {}
    for item in items:
        if ":=" not in item:
            raise ValueError(f"launch argument {item!r}: expected NAME:=VALUE, e.g. num_envs:=2")
        name, value = item.split(":=", 1)
        out[name] = value
    return out


@dataclass
class Supervisor:
    """Runs a graph's processes; stops them all on a signal or when a required one dies."""

    graph: GraphSpec
    python: str = sys.executable
    log_dir: str = ""
    """When set, each node's output goes to ``<log_dir>/<namespace>_<name>.log`` instead of the terminal."""
    processes: dict = field(default_factory=dict)
    stop_requested: bool = False
    log = staticmethod(lambda text: print(f"[vla-rl launch] {text}", file=sys.stderr, flush=True))

    def start(self) -> None:
        """Spawn every node (each in its own session, so only we decide which signal it gets)."""
        for spec in self.graph.nodes:
            self._spawn(spec)

    def _spawn(self, spec) -> str:
        env = dict(os.environ)
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        label = f"/{spec.namespace}/{spec.name}" if spec.namespace else f"/{spec.name}"
        output = None
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            output = open(os.path.join(self.log_dir, label.strip("/").replace("/", "_") + ".log"), "ab")
        process = subprocess.Popen(node_command(spec, self.graph, self.python), env=env,
                                   start_new_session=True, stdout=output,
                                   stderr=subprocess.STDOUT if output else None)
        if output:
            output.close()  # the child holds its own descriptor
        self.processes[label] = (spec, process)
        self.log(f"started {label} (pid {process.pid}{', required' if spec.required else ''})")
        return label

    def restart(self, label: str) -> None:
        """Start node ``label`` again after it died (what an operator or a respawn policy does)."""
        spec, process = self.processes[label]
        if process.poll() is None:
            raise RuntimeError(f"node {label} is still running (pid {process.pid})")
        self._spawn(spec)

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True

    def wait(self, duration_s: float = 0.0) -> int:
        """Supervise until a signal, ``duration_s`` or a required node's death; returns the exit code."""
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        deadline = time.monotonic() + duration_s if duration_s > 0 else None
        code = 0
        reported = set()
        try:
            while not self.stop_requested:
                if deadline is not None and time.monotonic() >= deadline:
                    self.log(f"duration {duration_s:g} s reached")
                    break
                failed = self._check(reported)
                if failed is not None:
                    code = failed
                    break
                time.sleep(0.1)
            if self.stop_requested:
                self.log("interrupted: stopping every node")
                code = code or 130
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return code

    def _check(self, reported: set) -> int | None:
        for label, (spec, process) in self.processes.items():
            status = process.poll()
            if status is None or label in reported:
                continue
            reported.add(label)
            if spec.required:
                self.log(f"required node {label} exited with code {status}: stopping the graph")
                return status if status else 1
            self.log(f"node {label} exited with code {status} (not required: the graph carries on)")
        return None

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGINT to every live node, SIGTERM after ``grace_s``, SIGKILL after twice that."""
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            alive = [p for _, p in self.processes.values() if p.poll() is None]
            if not alive:
                return
            for process in alive:
                try:
                    process.send_signal(sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + wait_s
            while time.monotonic() < end and any(p.poll() is None for p in alive):
                time.sleep(0.05)


def run(args: argparse.Namespace) -> int:
    """Build the graph, then print it (``--dry-run``) or run it."""
    late = argparse.ArgumentParser(prog="vla-rl launch", add_help=False)
    late.add_argument("--dry-run", action="store_true")
    late.add_argument("--duration", type=float, default=None)
    late.add_argument("--config", default=None)
    late.add_argument("--set", dest="overrides", action="append", default=[])
    options, launch_arguments = late.parse_known_args(args.arguments)
    args.dry_run = args.dry_run or options.dry_run
    args.duration = options.duration if options.duration is not None else args.duration
    args.config = options.config or args.config
    args.overrides = list(args.overrides) + options.overrides
    try:
        named = parse_launch_arguments(launch_arguments)
        if args.config and "config" not in named:
            named["config"] = args.config
        overrides = flatten(parse_overrides(args.overrides))
        if args.graph == DEPLOY_GRAPH:
            if overrides:
                raise ValueError(f"--set is not supported by {DEPLOY_GRAPH}; edit its params file")
            graph = build_deploy_graph(**named)
        else:
            graph = build_graph(args.graph, overrides=overrides, **named)
    except ValueError as err:  # includes ConfigError from the params file
        print(f"vla-rl launch: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for spec in graph.nodes:
            print(" ".join(node_command(spec, graph, sys.executable)))
        return 0
    supervisor = Supervisor(graph)
    supervisor.start()
    return supervisor.wait(args.duration)
