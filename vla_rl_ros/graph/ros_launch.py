"""launch_ros description of a graph (what ``ros2 launch vla_rl_ros <graph>.launch.py`` runs).

Imports ``launch`` and ``launch_ros`` only inside the function: they exist on a ROS 2
installation, not on PyPI. The node list comes from :func:`vla_rl_ros.graph.description.build_graph`,
evaluated once the launch arguments are known (an OpaqueFunction), exactly as ``vla-rl launch``
evaluates it.
"""
from __future__ import annotations

from vla_rl_ros.graph.description import LAUNCH_ARGUMENTS, PACKAGE, GraphSpec, NodeSpec, build_graph


def node_action(spec: NodeSpec, graph: GraphSpec):
    """A launch_ros ``Node`` for ``spec``; a required node that exits shuts the whole launch down."""
    from launch.actions import Shutdown
    from launch_ros.actions import Node

    from vla_rl_ros.cli.launch_cmd import STOP_GRACE_S
    return Node(package=PACKAGE, executable=spec.executable, name=spec.name, namespace=spec.namespace,
                parameters=[graph.params_file, dict(spec.parameters)],
                remappings=list(spec.remappings),
                ros_arguments=["--log-level", graph.log_level],
                output="screen", emulate_tty=True,
                # launch's own default is SIGTERM 5 s after Ctrl-C's SIGINT: a learner finishing
                # its update outlasts that, and was killed on its way out (exit -15, "process has
                # died"). The same grace as `vla-rl launch` gives, before SIGTERM and before SIGKILL.
                sigterm_timeout=str(STOP_GRACE_S), sigkill_timeout=str(STOP_GRACE_S),
                on_exit=Shutdown(reason=f"required node {spec.name} exited") if spec.required else None)


def generate(graph_name: str):
    """Launch description of ``graph_name``: every argument of LAUNCH_ARGUMENTS declared and described."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    def nodes(context, *args, **kwargs):
        values = {name: context.launch_configurations.get(name, default)
                  for name, (default, _) in LAUNCH_ARGUMENTS.items()}
        graph = build_graph(graph_name, **values)
        return [node_action(spec, graph) for spec in graph.nodes]

    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, (default, description) in LAUNCH_ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=nodes)])
