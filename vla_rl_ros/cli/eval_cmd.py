"""``vla-rl eval``: success per task on held-out init states, several seeds, 95 % intervals."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vla_rl_ros.cli.main import add_config_arguments
from vla_rl_ros.core.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    parser = sub.add_parser("eval", help="success rates on held-out init states with confidence intervals")
    add_config_arguments(parser)
    parser.add_argument("--policy", default=None,
                        help="policy directory (default: policy.model_path, else <sft.output_dir>/policy)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--episodes-per-task", type=int, default=0,
                        help="held-out init states per task and seed (0 = all held-out states)")
    parser.add_argument("--init-states", default=None, metavar="IDS",
                        help="comma-separated init states instead of the held-out ones (flagged)")
    parser.add_argument("--sample", action="store_true",
                        help="sample actions at policy.temperature instead of greedy decoding")
    parser.add_argument("--videos", type=int, default=0, help="write this many episodes as GIFs")
    parser.add_argument("--output", default=None, help="result JSON path (default: printed only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print (and optionally write) the JSON result."""
    from vla_rl_ros.core.evaluation import evaluate_policy
    cfg = load_config(args.config, args.overrides)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    video_dir = Path(args.output).with_suffix("") if args.output else Path(cfg.sft.output_dir) / "videos"
    import torch

    from vla_rl_ros.core.policy import VLAPolicy
    path = args.policy or cfg.policy.model_path or str(Path(cfg.sft.output_dir) / "policy")
    policy = VLAPolicy.load(path, cfg.policy)
    with torch.no_grad():
        init_ids = [int(i) for i in args.init_states.split(",")] if args.init_states else None
        result = evaluate_policy(policy, cfg.env, seeds=seeds, episodes_per_task=args.episodes_per_task,
                                 init_state_ids=init_ids,
                                 greedy=not args.sample, video_dir=video_dir if args.videos else None,
                                 num_videos=args.videos, progress=not args.no_progress)
    result["policy"] = path
    text = json.dumps(result, indent=1)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    print(text)
    return 0
