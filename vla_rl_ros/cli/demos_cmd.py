"""``vla-rl demos``: record scripted-expert demonstrations (or measure the expert with --dry-run)."""
from __future__ import annotations

import argparse
import json
import sys

from vla_rl_ros.cli.main import add_config_arguments
from vla_rl_ros.core.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demos`` subcommand."""
    parser = sub.add_parser("demos", help="record scripted-expert LIBERO demonstrations as MCAP bags")
    add_config_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="run the expert without rendering or writing; print success rates as JSON")
    parser.add_argument("--init-states", default=None, metavar="IDS",
                        help="comma-separated init-state or training layout ids (default: "
                             "0..demos.episodes_per_task-1, then demos.fresh_layouts_per_task layouts)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Record (or dry-run) and print the report as JSON."""
    from dataclasses import replace

    from vla_rl_ros.core.data.recording import record_demonstrations
    from vla_rl_ros.core.envs.splits import (HELDOUT_LAYOUT_BASE, TRAIN_LAYOUT_BASE, check_init_state_id,
                                             is_held_out, train_init_states)
    cfg = load_config(args.config, args.overrides)
    training = train_init_states(cfg.env.num_train_init_states)
    if args.init_states:
        init_ids = [int(v) for v in args.init_states.split(",")]
        try:
            for init_id in init_ids:
                check_init_state_id(init_id)
        except ValueError as error:
            print(f"vla-rl demos: {error}", file=sys.stderr)
            return 2
        held_out = [i for i in init_ids if is_held_out(i, cfg.env.num_train_init_states)]
        if held_out:
            print(f"vla-rl demos: init states {held_out} are held out for evaluation "
                  f"(training ids are 0..{len(training) - 1} and layouts "
                  f"{TRAIN_LAYOUT_BASE}..{HELDOUT_LAYOUT_BASE - 1})",
                  file=sys.stderr)
            return 2
    else:
        layouts = range(TRAIN_LAYOUT_BASE, TRAIN_LAYOUT_BASE + cfg.demos.fresh_layouts_per_task)
        init_ids = training[:cfg.demos.episodes_per_task or None] + list(layouts)
    env_cfg = replace(cfg.env, render=False) if args.dry_run else cfg.env
    report = record_demonstrations(env_cfg, cfg.demos.output_dir, init_ids, write=not args.dry_run,
                                   retry_failed=cfg.demos.retry_failed, progress=not args.no_progress,
                                   action_noise=cfg.demos.action_noise, passes=cfg.demos.passes)
    result = dict(suite=env_cfg.suite, task_ids=list(env_cfg.task_ids), init_state_ids=init_ids,
                  dry_run=args.dry_run, output_dir=None if args.dry_run else cfg.demos.output_dir,
                  **report.as_dict())
    print(json.dumps(result, indent=1))
    return 0
