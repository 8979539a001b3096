"""``vla-rl sft``: imitation of recorded demonstrations by the VLA (resumes from its checkpoint)."""
from __future__ import annotations

import argparse
import json

from vla_rl_ros.cli.main import add_config_arguments
from vla_rl_ros.core.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sft`` subcommand."""
    parser = sub.add_parser("sft", help="imitation (SFT) of the small VLA on recorded demonstrations")
    add_config_arguments(parser)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many steps in this run (a resumable checkpoint stays)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train and print the summary (without the norm statistics) as JSON."""
    from vla_rl_ros.core.sft import train_sft
    cfg = load_config(args.config, args.overrides)
    result = train_sft(cfg, progress=not args.no_progress, max_steps=args.max_steps)
    result.pop("norm_stats", None)
    print(json.dumps(result, indent=1))
    return 0
