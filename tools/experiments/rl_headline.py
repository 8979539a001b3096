"""Experiment: the headline comparison of ``vla-rl train`` with its ablations and with more demos + SFT.

Arms (each seed of each arm in its own folder ``<out>/<arm>/seed<k>``):

- ``rl``: the best recipe (PPO from the SFT checkpoint on group advantages, PRM reward, curriculum);
- ``rl_critic``: the paper's estimator instead (critic, GAE, critic warm-up);
- ``no_prm`` (``reward.prm_weight=0``), ``no_curriculum`` (``curriculum.enabled=false``): one switch
  off the best recipe each; ``no_warmup`` (``ppo.critic_warmup_iters=0``) off the critic arm;
- ``more_data`` (LIBERO only): extra expert passes recorded into a copy of the demos until the
  expert env steps reach the mean env steps the ``rl`` arm used, then SFT with the same recipe on
  all of it, evaluated with the same held-out protocol (so it needs the ``rl`` arm's results).

RL arms get ``train.time_budget_s = hours * 3600``, an iteration cap no run reaches, and the
held-out evaluation (``train.eval_episodes``, default 150) only at the start and at the end, so
``eval_first`` is the SFT baseline. Rerunning the same command skips finished arms (their
``arm_result.json``) and resumes unfinished ones from their last checkpoint.

``--extend DIR`` makes a longer-budget run out of a finished shorter one: each RL seed of DIR (the
same arms, config and ``--set``, a smaller ``--hours``) is copied into ``--out`` and resumed to
``--hours``, so the longer run's first updates are the shorter run's own and DIR stays as it was.
Each seed's ``evaluations`` then hold the held-out success at every budget it was judged at.

``--judge greedy|sampled`` fixes the held-out protocol the summary reports. New runs evaluate that
way; a finished seed that evaluated otherwise is evaluated again (start: the SFT policy; end: its
final adapters, or its more-data SFT policy), and the new evaluations are kept beside the run's own
in its ``arm_result.json`` (``judged``), so a seed is never retrained to be compared.

Writes ``<out>/summary.json``, ``<out>/summary.md`` (a table) and ``<out>/summary.png``::

    .venv/bin/python tools/experiments/rl_headline.py --sft-policy runs/sft/policy \\
        --prm runs/train/prm --demos data/demos/default --seeds 0,1,2 --hours 2

The script puts the repository root and its own folder (for ``analysis``) on ``sys.path``, so it
runs from any directory. The arms' shared plumbing is in ``headline_arms.py``, ``more_data`` in
``headline_more_data.py``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

# The repository root (for vla_rl_ros) and this folder (for analysis), whoever runs or loads the script.
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from analysis.curves import plot_curves, rollout_curves  # noqa: E402
from analysis.headline import ARMS, RESULT_FILE, summarize_arms, write_summary  # noqa: E402
from headline_arms import (JUDGES, RL_ARMS, arm_dir, copy_directory_once, held_out_counts,  # noqa: E402
                           judge_result, load_arm_config, read_result, result_record, shared_greedy_start)
from headline_more_data import run_more_data  # noqa: E402
from vla_rl_ros.core.rl.results import write_json_atomic  # noqa: E402


# ---------------------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="params YAML (as for vla-rl train)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed to every arm (repeatable)")
    parser.add_argument("--sft-policy", default=None, metavar="DIR", help="SFT checkpoint RL starts from")
    parser.add_argument("--prm", default=None, metavar="DIR", help="process reward model (reward.prm_path)")
    parser.add_argument("--demos", default=None, metavar="DIR",
                        help="demonstrations the SFT policy was trained on (more_data copies them)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--hours", type=float, default=2.0, help="wall-clock budget of each RL arm and seed")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    parser.add_argument("--out", default="runs/experiments/headline", help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    parser.add_argument("--judge", choices=JUDGES, default="as-run",
                        help="held-out protocol to report: as each seed evaluated itself "
                             "(train.eval_sample), greedy, or sampled at policy.temperature; finished "
                             "seeds evaluated otherwise are evaluated again and kept (default as-run)")
    parser.add_argument("--extend", default=None, metavar="DIR",
                        help="continue DIR's finished RL seeds (the same arms, config and --set, a smaller "
                             "--hours) to --hours in --out; DIR is left as it was")
    args = parser.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.arm_list = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arm_list if a not in ARMS]
    if unknown or not args.arm_list or not args.seed_list:
        parser.error(f"unknown or empty --arms {unknown or args.arms!r} (choose from {','.join(ARMS)}) "
                     f"or empty --seeds")
    if args.hours <= 0:
        parser.error("--hours must be > 0")
    if args.extend and Path(args.extend).resolve() == Path(args.out).resolve():
        parser.error("--extend must name another folder than --out (the shorter run stays as it was)")
    return args


# ---------------------------------------------------------------------------------------- RL arms
def run_rl_arm(args: argparse.Namespace, arm: str, seed: int) -> dict:
    """Train (or resume, or skip) one RL arm for one seed; returns its result record."""
    from vla_rl_ros.core.rl.train_loop import TrainingRun
    folder = arm_dir(args, arm, seed)
    finished = read_result(folder)
    if finished is not None:
        adapters = Path(finished["output_dir"]) / "checkpoints" / "latest" / "adapters"
        return judge_result(args, finished, RL_ARMS[arm], adapters)
    if args.extend:
        continue_shorter_run(args, arm, seed)
    cfg = load_arm_config(args, RL_ARMS[arm] + [f"train.seed={seed}", f"train.output_dir={folder / 'train'}",
                                                f"train.time_budget_s={args.hours * 3600}"])
    _warn_if_arms_coincide(cfg, arm)
    run = TrainingRun(cfg, progress_bar=not args.no_progress, tensorboard=not args.no_tensorboard)
    if args.judge == "greedy":
        run.evals = [shared_greedy_start(args)]  # a resumed run keeps its own (resume() restores them)
    try:
        summary = run.run()
    finally:
        if run.env is not None and hasattr(run.env, "close"):
            run.env.close()  # LIBERO workers must not outlive their arm
    first, last = summary["eval_first"], summary["eval_last"]
    if first is None or last is None:
        raise RuntimeError(f"{arm} seed {seed}: no held-out evaluation (train.eval_episodes must be > 0)")
    result = result_record(arm, seed, held_out_counts(first), held_out_counts(last),
                           last.get("eval/protocol", "greedy"), summary["env_steps"], summary["wall_s"],
                           folder / "train")
    result.update(iterations=summary["iterations"], resumed=summary["resumed"],
                  stopped_by_time_budget=summary["stopped_by_time_budget"], ablations=summary["ablations"],
                  evaluations=[{"iteration": e["iteration"], "env_steps": e["env_steps"],
                                **held_out_counts(e)} for e in run.evals], extended_from=args.extend)
    write_json_atomic(folder / RESULT_FILE, result)
    return result


def continue_shorter_run(args: argparse.Namespace, arm: str, seed: int) -> None:
    """Copy ``--extend``'s finished seed into ``--out`` once; the training run then resumes it.

    Refused by name when the seed has not finished there or its budget was not smaller than
    ``--hours``: continuing either would not be a longer run of the same experiment.
    """
    folder = arm_dir(args, arm, seed)
    if (folder / "train").is_dir():
        return  # copied by an earlier, interrupted invocation: the run resumes from its own checkpoint
    source = Path(args.extend) / arm / f"seed{seed}"
    shorter = read_result(source)
    if shorter is None:
        raise SystemExit(f"rl_headline: --extend {args.extend}: {arm} seed {seed} has not finished there")
    from vla_rl_ros.core.config import load_config
    budget = load_config(str(source / "train" / "config.yaml"), [], node_name="learner").train.time_budget_s
    if budget >= args.hours * 3600:
        raise SystemExit(f"rl_headline: --extend {args.extend}: {arm} seed {seed} had a budget of "
                         f"{budget:.0f} s, not less than --hours {args.hours:g}")
    copy_directory_once(source / "train", folder / "train")


def _warn_if_arms_coincide(cfg: Any, arm: str) -> None:
    if arm == "rl" and (not cfg.reward.prm_path or cfg.reward.prm_weight == 0):
        print("[rl_headline] the rl arm has no PRM (no --prm / reward.prm_path, or prm_weight 0): "
              "it equals no_prm", file=sys.stderr)


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) the chosen arms for every seed; write and return the summary."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.extend and (Path(args.extend) / "start_greedy.json").is_file() \
            and not (out / "start_greedy.json").is_file():
        # The same start policy judged the same way: the longer run's seeds share it too.
        shutil.copyfile(Path(args.extend) / "start_greedy.json", out / "start_greedy.json")
    per_arm: dict[str, list[dict] | str] = {}
    # rl first: more_data's budget is the env steps rl used.
    for arm in sorted(args.arm_list, key=ARMS.index):
        if arm in RL_ARMS:
            per_arm[arm] = [run_rl_arm(args, arm, seed) for seed in args.seed_list]
        else:
            rl_results = per_arm.get("rl") or _finished(args, "rl")
            per_arm[arm] = run_more_data(args, rl_results)
    # Arms not invoked still belong in the table when their seeds are on disk: reading them is free,
    # and a summary that silently drops finished arms misleads whoever reads it later.
    read_back = {arm: runs for arm in ARMS if arm not in per_arm and (runs := _already_judged(args, arm))}
    merged = {**per_arm, **read_back}  # disjoint: read_back holds only arms not invoked
    per_arm = {arm: merged[arm] for arm in ARMS if arm in merged}  # the table's order
    rl_results = per_arm.get("rl") or _finished(args, "rl")
    summary = {"hours": args.hours, "seeds": args.seed_list, "judge": args.judge, "config": args.config,
               "overrides": args.overrides,
               "sft_policy": args.sft_policy, "prm": args.prm, "demos": args.demos,
               "read_back": list(read_back), **summarize_arms(per_arm, rl_results)}
    summary["curves"] = rollout_curves(out, [arm for arm in per_arm if arm in RL_ARMS])
    write_summary(out, summary)
    plot_curves(summary["curves"], summary["runs"], out / "curves.png")
    return summary


def _finished(args: argparse.Namespace, arm: str) -> list[dict]:
    """Results of an RL arm already on disk for the chosen seeds (judged; for arms not rerun)."""
    done = [s for s in args.seed_list if read_result(arm_dir(args, arm, s)) is not None]
    return [run_rl_arm(args, arm, s) for s in done]  # finished seeds are only read (and judged)


def _already_judged(args: argparse.Namespace, arm: str) -> list[dict]:
    """Finished seeds of an arm this invocation did not name, only if reporting them costs nothing.

    A seed whose held-out evaluations under ``--judge`` do not exist yet is left out (with a line
    on stderr), because judging it takes an evaluation the user did not ask this invocation for.
    """
    found = []
    for seed in args.seed_list:
        result = read_result(arm_dir(args, arm, seed))
        if result is None:
            continue
        # Decoding settings alone decide the protocol, so more_data needs none of its own overrides.
        judged = judge_result(args, result, RL_ARMS.get(arm, []), None, may_evaluate=False)
        if judged is None:
            print(f"[rl_headline] {arm} seed {seed} is not in the table: it was not evaluated "
                  f"{args.judge} yet (add {arm} to --arms to evaluate it)", file=sys.stderr)
            continue
        found.append(judged)
    return found


if __name__ == "__main__":
    main()
