"""``vla-rl eval``: success per task on held-out init states, several seeds, 95 % intervals.

``--best-of N`` executes the best of N sampled actions per step (test-time scaling);
``--scaling 1,2,4,...`` measures success against N on the same episodes and plots it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vla_rl_ros.cli.main import add_config_arguments
from vla_rl_ros.core.config import load_config
from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.rl.results import write_json_atomic


def candidate_count(text: str) -> int:
    """An argparse type: N >= 1 candidates per step."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"N must be >= 1, got {value}")
    return value


def candidate_counts(text: str) -> list[int]:
    """An argparse type: comma-separated N values, each >= 1 (e.g. ``1,2,4,8,16``)."""
    values = [candidate_count(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one N, e.g. 1,2,4,8,16")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    parser = sub.add_parser("eval", help="success rates on held-out init states with confidence intervals")
    add_config_arguments(parser)
    parser.add_argument("--policy", default=None,
                        help="policy directory (default: policy.model_path, else <sft.output_dir>/policy)")
    parser.add_argument("--adapters", default=None, metavar="DIR",
                        help="LoRA + value-head directory to load on top of the policy: an RL run's "
                             "<train.output_dir>/checkpoints/latest/adapters, or a learner's versioned one")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--episodes-per-task", type=int, default=0,
                        help="held-out init states per task and seed (0 = all held-out states)")
    parser.add_argument("--init-states", default=None, metavar="IDS",
                        help="comma-separated init states instead of the held-out ones (flagged)")
    parser.add_argument("--held-out-layouts", type=int, default=0, metavar="N",
                        help="also run N held-out fresh layouts per task (random scenes never trained on), "
                             "after the held-out init states: 40 per task gives 150 episodes on 3 tasks")
    parser.add_argument("--sample", action="store_true",
                        help="sample actions at policy.temperature instead of greedy decoding")
    scaling = parser.add_mutually_exclusive_group()
    scaling.add_argument("--best-of", type=candidate_count, default=1, metavar="N",
                         help="sample N actions per step at policy.temperature in one batched decode and "
                              "execute the best-scored one (default 1: a single greedy/--sample decode)")
    scaling.add_argument("--scaling", type=candidate_counts, default=None, metavar="N,N,...",
                         help="success vs N on the same episodes for each N; writes JSON and a PNG plot")
    parser.add_argument("--scorer", choices=("prm", "likelihood"), default=None,
                        help="how best-of-N ranks candidates (default: prm when a PRM is given, "
                             "else likelihood)")
    parser.add_argument("--prm", default=None, metavar="DIR",
                        help="PRM directory for the prm scorer (default: reward.prm_path)")
    parser.add_argument("--videos", type=int, default=0, help="write this many episodes as GIFs")
    parser.add_argument("--output", default=None,
                        help="result JSON path (default: printed only); with --scaling a .json path or a "
                             "directory (default <sft.output_dir>/scaling), the plot beside the JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print (and optionally write) the JSON result."""
    import torch

    from vla_rl_ros.core.policy import VLAPolicy
    from vla_rl_ros.core.rl.best_of_n import choose_scorer
    cfg = load_config(args.config, args.overrides)
    if args.scaling and args.videos:
        raise ConfigError("--videos records single evaluations; leave it out with --scaling")
    path = args.policy or cfg.policy.model_path or str(Path(cfg.sft.output_dir) / "policy")
    policy = VLAPolicy.load(path, cfg.policy)
    adapter_version = _load_adapters(policy, args.adapters) if args.adapters else None
    selecting = args.scaling is not None or args.best_of > 1
    # The PRM is loaded only when candidates are ranked: a plain eval must not need one.
    scorer, scorer_name, prm_path = (choose_scorer(args.scorer, args.prm or cfg.reward.prm_path, policy,
                                                   cfg.policy) if selecting else (None, None, None))
    init_states = [int(i) for i in args.init_states.split(",")] if args.init_states else None
    if args.held_out_layouts:
        from vla_rl_ros.core.envs.splits import HELDOUT_LAYOUT_BASE, eval_init_states
        init_states = (init_states or eval_init_states(cfg.env.num_train_init_states)) + [
            HELDOUT_LAYOUT_BASE + k for k in range(args.held_out_layouts)]
    options = dict(seeds=[int(s) for s in args.seeds.split(",") if s.strip()],
                   episodes_per_task=args.episodes_per_task, init_state_ids=init_states,
                   progress=not args.no_progress)
    provenance = dict(policy=path, adapters=args.adapters, adapter_version=adapter_version,
                      scorer=scorer_name, prm=prm_path, temperature=cfg.policy.temperature)
    with torch.no_grad():
        if args.scaling is not None:
            result, json_path = _scaling(args, cfg, policy, (scorer, scorer_name), options, provenance)
        else:
            result, json_path = _single(args, cfg, policy, scorer, options)
    result.update(provenance)
    if json_path:  # through a temporary file: a kill mid-write must not corrupt the last good result
        write_json_atomic(json_path, result)
    print(json.dumps(result, indent=1))
    return 0


def _load_adapters(policy, directory: str) -> int:
    """The adapters' version; a missing, corrupt or mismatched directory is the user's input error."""
    try:
        return policy.load_adapters(directory)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--adapters {directory}: {err}") from None


def _single(args: argparse.Namespace, cfg, policy, scorer, options: dict) -> tuple[dict, Path | None]:
    from vla_rl_ros.core.evaluation import evaluate_policy
    video_dir = Path(args.output).with_suffix("") if args.output else Path(cfg.sft.output_dir) / "videos"
    result = evaluate_policy(policy, cfg.env, greedy=not args.sample, best_of=args.best_of, scorer=scorer,
                             video_dir=video_dir if args.videos else None, num_videos=args.videos, **options)
    return result, Path(args.output) if args.output else None


def _scaling(args: argparse.Namespace, cfg, policy, named_scorer: tuple, options: dict,
             provenance: dict) -> tuple[dict, Path]:
    """The curve, its JSON and plot rewritten after every N so that a crash keeps the points done."""
    from vla_rl_ros.core.evaluation import evaluate_scaling
    from vla_rl_ros.core.rl.best_of_n import plot_success_vs_n
    output = Path(args.output or Path(cfg.sft.output_dir) / "scaling")
    json_path = output if output.suffix == ".json" else output / "scaling.json"
    scorer, scorer_name = named_scorer
    suite = "toy" if cfg.env.backend == "toy" else cfg.env.suite
    title = f"{suite} tasks {cfg.env.task_ids}: best-of-N, {scorer_name} scorer"

    def plotted(curve: dict) -> dict:
        curve["plot"] = str(plot_success_vs_n(curve["per_n"], json_path.with_suffix(".png"), title))
        return curve

    def save_point(curve: dict) -> None:
        if curve["pending"]:  # the finished curve is written once, by run()
            write_json_atomic(json_path, dict(plotted(curve), **provenance))

    curve = evaluate_scaling(policy, cfg.env, args.scaling, scorer, on_point=save_point, **options)
    return plotted(curve), json_path
