"""``vla-rl train``: VLA-RL in-process (rollouts, PRM, PPO, curriculum, eval, checkpoints).

Re-running the same command after an interruption (even ``kill -9``) resumes exactly from
the last checkpoint in ``train.output_dir``; a different configuration is refused.

Data-parallel: ``torchrun --nproc_per_node N -m vla_rl_ros.cli.main train ...`` runs N ranks
(gloo on the CPU, NCCL with ``policy.device=cuda``), each with its own ``env.num_envs``
environments on a share of every iteration's episodes; rank 0 alone writes the run directory
and prints the summary. A run resumes with any number of ranks (exactly with the same number).
"""
from __future__ import annotations

import argparse
import json

from vla_rl_ros.cli.main import add_config_arguments
from vla_rl_ros.core.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    parser = sub.add_parser("train", help="VLA-RL: trajectory-level PPO with critic, PRM and curriculum",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, then print the summary's headline numbers as JSON."""
    cfg = load_config(args.config, args.overrides, node_name="learner")
    from vla_rl_ros.core.rl import distributed
    from vla_rl_ros.core.rl.train_loop import TrainingRun
    training = TrainingRun(cfg, progress_bar=not args.no_progress, tensorboard=not args.no_tensorboard)
    summary = training.run()
    distributed.shutdown()  # only after success: a job with a dead rank just exits
    if not training.main:
        return 0
    first, last = summary["eval_first"], summary["eval_last"]
    headline = {"output_dir": cfg.train.output_dir, "iterations": summary["iterations"],
                "env_steps": summary["env_steps"], "resumed": summary["resumed"],
                "eval_success_first": first["eval/success_rate"] if first else None,
                "eval_success_last": last["eval/success_rate"] if last else None,
                "train_success_last": summary["train_success_last"],
                "skipped_updates": summary["skipped_updates"],
                "results": f"{cfg.train.output_dir}/results/summary.json"}
    print(json.dumps(headline, indent=1))
    return 0
