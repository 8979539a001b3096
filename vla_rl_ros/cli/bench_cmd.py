"""``vla-rl bench TARGET``: benchmarks printed as JSON (and optionally written to ``--out``).

Targets are a small registry (``TARGETS``: name -> function taking the parsed args and the
resolved configuration, returning a JSON-ready dict), so each area adds its own benchmark
with one entry.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import torch

from vla_rl_ros.cli.main import add_config_arguments
from vla_rl_ros.core.config import ExperimentConfig, load_config
from vla_rl_ros.core.config_io import ConfigError


def bench_policy_target(args: argparse.Namespace, cfg: ExperimentConfig) -> dict:
    """Batched decoding of ``cfg.policy`` (default: the small CPU model) at several batch sizes."""
    from vla_rl_ros.core.policy.bench import bench_policy
    sizes = args.batch_sizes or ([1, 8, 32, 64] if cfg.policy.device.startswith("cuda") else [1, 8, 32])
    return bench_policy(cfg.policy, sizes, repeats=args.repeats, warmup=args.warmup,
                        with_update=not args.no_update)


def bench_graph_target(args: argparse.Namespace, cfg: ExperimentConfig) -> dict:
    """Env steps/s of the ROS graph vs the in-process loop (``--repeats`` steps after ``--warmup``)."""
    from vla_rl_ros.bench.graph_bench import bench_graph
    return bench_graph(cfg, steps=args.repeats, warmup=args.warmup)


def bench_latency_target(args: argparse.Namespace, cfg: ExperimentConfig) -> dict:
    """Observation -> safe command latency (p50/p99) through policy + franka_bridge (``--repeats`` steps)."""
    from vla_rl_ros.bench.franka_latency import bench_latency_target as measure
    return measure(args, cfg)


def bench_env_target(args: argparse.Namespace, cfg: ExperimentConfig) -> dict:
    """LIBERO steps/s: 1 and 2 workers, rendering on/off, vs the raw simulator (``--repeats`` steps)."""
    from vla_rl_ros.core.envs.bench import bench_env
    return bench_env(cfg.env, steps=args.repeats, warmup=args.warmup)


TARGETS: dict[str, Callable[[argparse.Namespace, ExperimentConfig], dict]] = {
    "policy": bench_policy_target,
    "graph": bench_graph_target,
    "latency": bench_latency_target,
    "env": bench_env_target,
}


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-sizes {text!r}: expected integers like 1,8,32") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--batch-sizes {text!r}: expected positive integers")
    return sizes


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    parser = sub.add_parser("bench", help="benchmarks (policy, env, graph) printed as JSON")
    parser.add_argument("target", choices=sorted(TARGETS), help="what to measure")
    add_config_arguments(parser)
    parser.add_argument("--out", default=None,
                        help="also write the JSON to this file (e.g. runs/bench/policy.json)")
    parser.add_argument("--batch-sizes", type=_batch_sizes, default=None,
                        help="comma-separated batch sizes (policy default: 1,8,32 on CPU; 1,8,32,64 on GPU)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions per batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    parser.add_argument("--no-update", action="store_true", help="skip the PPO forward+backward timing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve the configuration, run the target, print (and save) its JSON."""
    if args.repeats < 1 or args.warmup < 0 or args.threads < 0:
        raise ConfigError(f"--repeats={args.repeats} must be >= 1, --warmup={args.warmup} and "
                          f"--threads={args.threads} >= 0")
    cfg = load_config(args.config, args.overrides)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = TARGETS[args.target](args, cfg)
    finally:
        torch.set_num_threads(threads_before)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0
