"""The ``vla-rl`` command: the ROS-free entry point to every job of the package.

Each subcommand lives in its own module of this package exposing ``register(subparsers)``;
the module adds its parser and sets ``func`` (called with the parsed args, returns an exit code).
Modules are imported only when their subcommand runs, so ``vla-rl --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Before torch loads its OpenMP runtime: spinning worker threads collapse on a shared 2-core CPU
# (measured: SFT with 2 threads beside the simulators and a test run went from 0.7 to 11.5 s a
# step; with passive waiting, 1.1 s). The user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from vla_rl_ros.core.config_io import ConfigError  # noqa: E402

# subcommand -> (module, one-line help). Order is the order shown in --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train-graph": ("vla_rl_ros.cli.train_graph_cmd", "the main job: the train_sim ROS 2 graph learns from "
                    "the embedded default, then a held-out evaluation and a report"),
    "run": ("vla_rl_ros.cli.run_cmd", "the in-process pipeline from scratch (demos, SFT, PRM, RL)"),
    "demos": ("vla_rl_ros.cli.demos_cmd", "record scripted-expert LIBERO demonstrations as MCAP bags"),
    "sft": ("vla_rl_ros.cli.sft_cmd", "imitation (SFT) of the small VLA on recorded demonstrations"),
    "train-prm": ("vla_rl_ros.cli.train_prm_cmd", "train the process reward model on pseudo progress labels"),
    "eval-prm": ("vla_rl_ros.cli.eval_prm_cmd", "measure a PRM on fresh held-out rollouts of the policy"),
    "train": ("vla_rl_ros.cli.train_cmd", "VLA-RL: trajectory-level PPO (group or critic advantages)"),
    "eval": ("vla_rl_ros.cli.eval_cmd", "success rates on held-out init states with confidence intervals"),
    "bench": ("vla_rl_ros.cli.bench_cmd", "benchmarks (policy, env, graph) printed as JSON"),
    "launch": ("vla_rl_ros.cli.launch_cmd", "start a ROS 2 graph (train_sim, ...) without ros2 launch"),
    "viz-bag": ("vla_rl_ros.cli.viz_bag_cmd", "camera frames and rviz markers of recorded episodes (a bag)"),
    "config": ("vla_rl_ros.cli.config_cmd", "print the resolved configuration as a ROS params YAML"),
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--set KEY=VALUE`` (repeatable), shared by every subcommand."""
    parser.add_argument("--config", default=None,
                        help="ROS 2 params YAML (e.g. config/train_sim.yaml); defaults apply without it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set ppo.clip_range=0.1 (repeatable)")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Parser with every subcommand's help; only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="vla-rl", description="VLA-RL for vision-language-action policies, ROS-free entry point.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name == chosen:
            importlib.import_module(module_name).register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vla-rl``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"vla-rl {args.command}: configuration error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # The project's own error types (BagError, TaskError, CheckpointError, ...) carry a
        # message written for the user; anything else is a bug and keeps its traceback.
        if not type(err).__module__.startswith("vla_rl_ros."):
            raise
        print(f"vla-rl {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vla-rl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
