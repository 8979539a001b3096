"""The headline's arm plumbing, shared by its RL arms (``rl_headline.py``) and ``more_data``.

How an arm's config is built, where its seeds live, how a finished seed is read back and judged
by ``--judge``, and the one held-out evaluation every start and end is made with. ``args`` is
``rl_headline.py``'s parsed command line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from analysis.headline import RESULT_FILE
from vla_rl_ros.core.rl.results import write_json_atomic

RL_ARMS = {"rl": [], "rl_critic": ["ppo.advantage_estimator=critic"], "no_prm": ["reward.prm_weight=0"],
           "no_curriculum": ["curriculum.enabled=false"],
           "no_warmup": ["ppo.advantage_estimator=critic", "ppo.critic_warmup_iters=0"]}
"""Each RL arm's switch on top of the full method."""
JUDGES = ("as-run", "greedy", "sampled")
"""Held-out protocols ``--judge`` can report (as-run: each seed as it evaluated itself)."""
UNREACHED_ITERATIONS = 1_000_000
"""Iteration cap of RL arms: the time budget ends them, not this."""
DEFAULT_EVAL_EPISODES = 150
"""50 held-out episodes per task of the 3 default tasks: the 10 held-out init states, then 40 held-out
layouts each (splits.held_out_contexts). 150 a point resolves about +15 points at a 50 % start."""


def load_arm_config(args: argparse.Namespace, forced: list[str]) -> Any:
    """Experiment defaults <- ``--config`` / ``--set`` <- what the arm itself must fix."""
    from vla_rl_ros.core.config import load_config
    defaults = [f"train.iterations={UNREACHED_ITERATIONS}", f"train.eval_episodes={DEFAULT_EVAL_EPISODES}"]
    links = ([f"policy.model_path={args.sft_policy}"] if args.sft_policy else []) + \
        ([f"reward.prm_path={args.prm}"] if args.prm else [])
    # Evaluate only at iteration 0 (the SFT baseline) and at the end: intermediate evaluations
    # would spend the arm's time budget on something else than training. An interval no run
    # reaches does that whatever train.iterations is (the loop always evaluates at the end).
    judged = [] if args.judge == "as-run" else [f"train.eval_sample={args.judge == 'sampled'}"]
    return load_config(args.config, defaults + args.overrides + links + judged + forced
                       + [f"train.eval_every={UNREACHED_ITERATIONS}"], node_name="learner")


def arm_dir(args: argparse.Namespace, arm: str, seed: int | None = None) -> Path:
    """Folder of one arm (and seed)."""
    folder = Path(args.out) / arm
    return folder if seed is None else folder / f"seed{seed}"


def read_result(folder: Path) -> dict | None:
    """A finished arm seed's result, or None."""
    path = folder / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def judge_result(args: argparse.Namespace, result: dict, forced: list[str], adapters: Path | None,
                 start: dict | None = None, may_evaluate: bool = True) -> dict | None:
    """``result`` as ``--judge`` reports it, evaluating again (once, then kept) if it evaluated otherwise.

    ``forced`` is what the seed's own runs fixed (its arm's switch, or its more-data SFT policy);
    ``adapters`` is loaded on top for the end evaluation (None: the policy alone is the end);
    ``start``, if given, is the start already judged (more_data's is the rl arm's). With
    ``may_evaluate`` False, a result that would need an evaluation gives None instead.
    """
    from vla_rl_ros.core.rl.train_loop import eval_protocol
    if args.judge == "as-run":
        return result
    wanted = eval_protocol(load_arm_config(args, forced))
    if result["protocol"] == wanted:
        return result
    judged = result.setdefault("judged", {})
    if wanted not in judged and not may_evaluate:
        return None
    if wanted not in judged:
        if adapters is not None and not (adapters / "adapter.json").is_file():
            raise SystemExit(f"rl_headline: cannot judge {result['arm']} seed {result['seed']} {args.judge}: "
                             f"its final adapters {adapters} are missing")
        seed, folder = result["seed"], arm_dir(args, result["arm"], result["seed"]) / "judged" / args.judge
        if start is None:  # greedy: the one start evaluation every arm and seed shares
            start = held_out_counts(shared_greedy_start(args) if args.judge == "greedy"
                                    else evaluate_once(args, seed, folder / "start", forced, None))
        end = held_out_counts(evaluate_once(args, seed, folder / "end", forced, adapters))
        judged[wanted] = {"start": start, "end": end, "gain_points": 100.0 * (end["rate"] - start["rate"])}
        write_json_atomic(arm_dir(args, result["arm"], seed) / RESULT_FILE, result)
    as_run = {key: result[key] for key in ("protocol", "start", "end", "gain_points")}
    return {**result, "protocol": wanted, **judged[wanted], "as_run": as_run}


def shared_greedy_start(args: argparse.Namespace) -> dict:
    """The SFT start's greedy held-out evaluation, made once for every RL arm and seed.

    Greedy decoding of one policy on the fixed held-out contexts does not depend on the seed nor
    on an arm's switch (PRM, curriculum, estimator), so each seed evaluating it again (150
    LIBERO episodes, ~5 min on 2 cores) would only repeat the same episodes. Kept in
    ``<out>/start_greedy.json``; the iteration-0 evaluation of every RL seed is this one.
    """
    path = Path(args.out) / "start_greedy.json"
    if path.is_file():
        return json.loads(path.read_text())
    start = evaluate_once(args, 0, Path(args.out) / "start_greedy", [], None)
    write_json_atomic(path, start)
    return start


def evaluate_once(args: argparse.Namespace, seed: int, output: Path, forced: list[str],
                  adapters: Path | None) -> dict:
    """One held-out evaluation exactly as an RL arm's start and end are made (a zero-iteration run)."""
    from vla_rl_ros.core.rl.train_loop import TrainingRun
    shutil.rmtree(output, ignore_errors=True)  # an interrupted evaluation starts over
    cfg = load_arm_config(args, forced + ["train.iterations=0", f"train.seed={seed}",
                                          f"train.output_dir={output}"])
    run = TrainingRun(cfg, progress_bar=False, tensorboard=False)
    if adapters is not None:
        run.policy.load_adapters(str(adapters))
    try:
        return run.run()["eval_last"]
    finally:
        if run.env is not None and hasattr(run.env, "close"):
            run.env.close()


def held_out_counts(evaluation: dict) -> dict:
    """A held-out evaluation's rate, wins, episodes and Wilson interval (wins pool across seeds)."""
    episodes, rate = int(evaluation["eval/episodes"]), evaluation["eval/success_rate"]
    return {"rate": rate, "wins": round(rate * episodes), "episodes": episodes,
            "ci95": [evaluation["eval/ci_low"], evaluation["eval/ci_high"]]}


def result_record(arm: str, seed: int, start: dict, end: dict, protocol: str, env_steps: int,
                  wall_s: float, output_dir: Path) -> dict:
    """Start/end held-out success (with counts, for pooled intervals), gain in points, costs."""
    return {"arm": arm, "seed": seed, "protocol": protocol,
            "start": start, "end": end,
            "gain_points": 100.0 * (end["rate"] - start["rate"]), "env_steps": int(env_steps),
            "wall_s": round(float(wall_s), 1), "output_dir": str(output_dir)}


def copy_directory_once(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` unless it is there; a half-made copy is never taken for the real one."""
    if target.is_dir():
        return
    staging = target.with_name(f"{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted copy
    shutil.copytree(source, staging)
    os.replace(staging, target)
