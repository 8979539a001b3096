"""``vla-rl viz-bag BAG... --out DIR``: camera frames and rviz markers of recorded episodes, as a bag.

The work is :func:`vla_rl_ros.nodes.bag_viz.write_viz_bag`; replay the result with
``ros2 bag play DIR`` and ``rviz/vla_rl_ros.rviz``, or open its ``.mcap`` in Foxglove.
"""
from __future__ import annotations

import argparse
import sys

from vla_rl_ros.cli.main import add_config_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``viz-bag`` subcommand."""
    parser = sub.add_parser("viz-bag", help="camera frames and rviz markers of recorded episodes, as a bag",
                            description=__doc__.splitlines()[0])
    add_config_arguments(parser)  # every subcommand takes them (the bags carry what this needs)
    parser.add_argument("bags", nargs="+", help="trajectory bag directories (the recorder's iter_*)")
    parser.add_argument("--out", required=True, help="output bag directory (must not exist)")
    parser.add_argument("--frame", default="panda_link0", help="frame of the markers (sim: 'world')")
    parser.add_argument("--rate", type=float, default=20.0, help="replay rate of the steps in Hz")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the visualisation bag; a missing or unreadable input is a one-line error (exit 2)."""
    from vla_rl_ros.nodes.bag_viz import write_viz_bag
    try:
        counts = write_viz_bag(args.bags, args.out, args.frame, args.rate)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"vla-rl viz-bag: {err}", file=sys.stderr)
        return 2
    print(f"vla-rl viz-bag: {counts['episodes']} episodes, {counts['steps']} steps -> {args.out}")
    return 0
