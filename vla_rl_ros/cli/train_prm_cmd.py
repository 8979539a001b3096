"""``vla-rl train-prm``: train the process reward model on automatically labelled trajectories.

Trajectories: recorded demonstrations (``--demos DIR``, repeatable; with the toy backend,
oracle demonstrations are generated when no directory is given) plus rollouts of the policy
(``reward.prm_rollout_episodes``, training init states). Each is segmented (gripper events,
end-effector stops) into pseudo progress labels; a held-out share measures the PRM (AUC of
success vs failure, within-trajectory rank correlation). Output: ``--out`` or
``reward.prm_path`` or ``<train.output_dir>/prm``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vla_rl_ros.cli.main import add_config_arguments
from vla_rl_ros.core.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train-prm`` subcommand."""
    parser = sub.add_parser("train-prm", help="train the process reward model on pseudo progress labels",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--demos", action="append", default=[], metavar="DIR",
                        help="demonstration directory written by `vla-rl demos` (repeatable)")
    parser.add_argument("--out", default="", help="where to write the PRM (default reward.prm_path)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Collect, label, train, measure, save; prints the held-out metrics as JSON."""
    import numpy as np
    import torch

    from vla_rl_ros.core.rl import prm_data
    from vla_rl_ros.core.rl.prm import ProcessRewardModel
    from vla_rl_ros.core.rl.prm_training import evaluate_prm, train_prm
    from vla_rl_ros.core.rl.train_loop import build_policy, make_env

    cfg = load_config(args.config, args.overrides, node_name="learner")
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    torch.manual_seed(cfg.train.seed)
    out = Path(args.out or cfg.reward.prm_path or Path(cfg.train.output_dir) / "prm")
    policy = build_policy(cfg)
    tokenizer = policy.action_tokenizer
    episodes = []
    for directory in args.demos:
        episodes += prm_data.load_demo_episodes(directory, tokenizer, list(cfg.env.task_ids),
                                                policy.chunk_size)
    rng = np.random.default_rng(cfg.train.seed)
    env = make_env(cfg.env)
    try:
        if cfg.env.backend == "toy" and not args.demos:
            count = max(cfg.reward.prm_rollout_episodes, len(cfg.env.task_ids))
            assignments = [(cfg.env.task_ids[k % len(cfg.env.task_ids)],
                            int(rng.integers(0, cfg.env.num_train_init_states))) for k in range(count)]
            episodes += prm_data.toy_oracle_episodes(env, tokenizer, assignments, noise=0.3,
                                                     seed=cfg.train.seed)
        if cfg.reward.prm_rollout_episodes:
            assignments = [(cfg.env.task_ids[k % len(cfg.env.task_ids)],
                            int(rng.integers(0, cfg.env.num_train_init_states)))
                           for k in range(cfg.reward.prm_rollout_episodes)]
            episodes += prm_data.policy_rollouts(env, policy, assignments, seed=cfg.train.seed)
    finally:
        env.close()
    episodes = [e for e in episodes if e.length > 0 and not e.aborted]
    if not episodes:
        print("vla-rl train-prm: no trajectories (give --demos or reward.prm_rollout_episodes > 0)")
        return 2
    train_set, held_out = prm_data.split_held_out(episodes, cfg.reward.prm_heldout_fraction, cfg.train.seed)
    prm = ProcessRewardModel(build_policy(cfg))
    losses = train_prm(prm, train_set, epochs=cfg.reward.prm_epochs, lr=cfg.reward.prm_lr,
                       batch_size=cfg.reward.prm_batch_size,
                       generator=torch.Generator().manual_seed(cfg.train.seed), progress=not args.no_progress)
    metrics = {"prm/train_loss_first": losses[0], "prm/train_loss_last": losses[-1],
               "prm/train_episodes": len(train_set),
               "prm/train_successes": sum(e.success for e in train_set)}
    if held_out:
        metrics.update(evaluate_prm(prm, held_out))
    prm.save(out, metrics)
    print(json.dumps({"prm_path": str(out), **metrics}, indent=1, default=float))
    return 0
