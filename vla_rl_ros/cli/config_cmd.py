"""``vla-rl config``: print the fully resolved configuration (defaults + file + overrides)."""
from __future__ import annotations

import argparse

import yaml

from vla_rl_ros.cli.main import add_config_arguments
from vla_rl_ros.core.config import dump_params_yaml, load_config


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``config`` subcommand."""
    parser = sub.add_parser("config", help="print the resolved configuration as a ROS params YAML")
    add_config_arguments(parser)
    parser.add_argument("--node", default=None, help="also apply this node's own params block")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve and print."""
    cfg = load_config(args.config, args.overrides, node_name=args.node)
    print(yaml.safe_dump(dump_params_yaml(cfg), sort_keys=False), end="")
    return 0
