"""``vla-rl eval-prm``: measure a process reward model on fresh rollouts of a competent policy.

``vla-rl train-prm`` measures the PRM on a held-out share of its own training data, which is
mostly expert demonstrations: its AUC separates experts from a weak policy's rollouts, and on the
default set it rests on 2 failures. This command measures what RL actually asks of the PRM:
the policy it will train (``policy.model_path``, or ``--policy``, plus optional ``--adapters``)
runs ``--episodes`` episodes on held-out init states, sampled at ``policy.temperature`` as in
rollouts, and the PRM scores every step. Reported: AUC of final and of mean progress (success
vs failure), within-trajectory rank correlation with the pseudo labels, overall and per task,
and one row per trajectory so the numbers can be checked or re-analysed.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vla_rl_ros.cli.main import add_config_arguments
from vla_rl_ros.core.config import load_config
from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.rl.results import write_json_atomic


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval-prm`` subcommand."""
    parser = sub.add_parser("eval-prm", help="measure a PRM on fresh held-out rollouts of the policy",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--prm", default=None, metavar="DIR", help="PRM directory (default reward.prm_path)")
    parser.add_argument("--policy", default=None, metavar="DIR", help="policy (default policy.model_path)")
    parser.add_argument("--adapters", default=None, metavar="DIR", help="LoRA adapters to load on top")
    parser.add_argument("--episodes", type=int, default=30,
                        help="held-out episodes, tasks round-robin (default 30 = 10 per default task)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the rollouts")
    parser.add_argument("--output", default=None, metavar="FILE", help="result JSON (default: printed only)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Roll out, score, measure; print (and optionally write) the JSON result."""
    import torch

    from vla_rl_ros.core.evaluation import hardware_description
    from vla_rl_ros.core.rl.prm import ProcessRewardModel
    from vla_rl_ros.core.rl.prm_data import policy_rollouts
    from vla_rl_ros.core.rl.prm_training import evaluate_prm, separation
    from vla_rl_ros.core.rl.train_loop import build_policy, eval_assignments, make_env

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    overrides = list(args.overrides) + ([f"policy.model_path={args.policy}"] if args.policy else [])
    cfg = load_config(args.config, overrides, node_name="learner")
    prm_dir = args.prm or cfg.reward.prm_path
    if not prm_dir:
        raise ConfigError("vla-rl eval-prm needs a PRM: --prm DIR or reward.prm_path")
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    policy = build_policy(cfg)
    if args.adapters:
        policy.load_adapters(args.adapters)
    prm = ProcessRewardModel.load(prm_dir, cfg.policy)
    prm.check_compatible(policy)  # before the rollouts: a mismatch wastes no simulator time
    assignments = eval_assignments(list(cfg.env.task_ids), args.episodes, cfg.env.num_train_init_states)
    started = time.time()
    env = make_env(cfg.env)
    try:
        episodes = policy_rollouts(env, policy, assignments, seed=args.seed)
    finally:
        env.close()
    episodes = [e for e in episodes if e.length > 0 and not e.aborted]
    if not episodes:
        raise ConfigError("vla-rl eval-prm: every rollout was empty or aborted; nothing to measure")
    metrics = evaluate_prm(prm, episodes)  # scores every step in place
    per_task = {str(task): separation([e for e in episodes if e.task_id == task])
                for task in cfg.env.task_ids}
    result = {"prm": str(prm_dir), "policy": cfg.policy.model_path or None, "adapters": args.adapters,
              "protocol": f"sampled T={cfg.policy.temperature:g}", "seed": args.seed,
              "init_states": "held out", "metrics": metrics, "per_task": per_task,
              "trajectories": [{"task": e.task_id, "init_state": e.init_state_id, "success": bool(e.success),
                                "length": e.length, "final_progress": float(e.progress[-1]),
                                "mean_progress": float(e.progress[1:].mean())} for e in episodes],
              "wall_s": round(time.time() - started, 1), "hardware": hardware_description()}
    if not 0 < metrics["prm/successes"] < metrics["prm/episodes"]:
        result["note"] = "AUC needs both successes and failures; run more episodes or another policy"
    text = json.dumps(result, indent=1, default=float)
    if args.output:
        write_json_atomic(Path(args.output), result)
    print(text)
    return 0
