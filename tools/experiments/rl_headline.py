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

``--judge greedy|sampled`` fixes the held-out protocol the summary reports. New runs evaluate that
way; a finished seed that evaluated otherwise is evaluated again (start: the SFT policy; end: its
final adapters, or its more-data SFT policy), and the new evaluations are kept beside the run's own
in its ``arm_result.json`` (``judged``), so a seed is never retrained to be compared.

Writes ``<out>/summary.json``, ``<out>/summary.md`` (a table) and ``<out>/summary.png``::

    .venv/bin/python tools/experiments/rl_headline.py --sft-policy runs/sft/policy \\
        --prm runs/train/prm --demos data/demos/default --seeds 0,1,2 --hours 2

The script puts the repository root and its own folder (for ``analysis``) on ``sys.path``, so it
runs from any directory.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

# The repository root (for vla_rl_ros) and this folder (for analysis), whoever runs or loads the script.
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from analysis.curves import plot_curves, rollout_curves  # noqa: E402
from analysis.headline import ARMS, RESULT_FILE, summarize_arms, write_summary  # noqa: E402
from vla_rl_ros.core.rl.results import write_json_atomic  # noqa: E402

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
    args = parser.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.arm_list = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arm_list if a not in ARMS]
    if unknown or not args.arm_list or not args.seed_list:
        parser.error(f"unknown or empty --arms {unknown or args.arms!r} (choose from {','.join(ARMS)}) "
                     f"or empty --seeds")
    if args.hours <= 0:
        parser.error("--hours must be > 0")
    return args


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


# ---------------------------------------------------------------------------------------- RL arms
def run_rl_arm(args: argparse.Namespace, arm: str, seed: int) -> dict:
    """Train (or resume, or skip) one RL arm for one seed; returns its result record."""
    from vla_rl_ros.core.rl.train_loop import TrainingRun
    folder = arm_dir(args, arm, seed)
    finished = read_result(folder)
    if finished is not None:
        adapters = Path(finished["output_dir"]) / "checkpoints" / "latest" / "adapters"
        return judge_result(args, finished, RL_ARMS[arm], adapters)
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
                  stopped_by_time_budget=summary["stopped_by_time_budget"], ablations=summary["ablations"])
    write_json_atomic(folder / RESULT_FILE, result)
    return result


# ---------------------------------------------------------------------------------------- --judge
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


def _warn_if_arms_coincide(cfg: Any, arm: str) -> None:
    if arm == "rl" and (not cfg.reward.prm_path or cfg.reward.prm_weight == 0):
        print("[rl_headline] the rl arm has no PRM (no --prm / reward.prm_path, or prm_weight 0): "
              "it equals no_prm", file=sys.stderr)


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


# ---------------------------------------------------------------------------------------- more_data
def run_more_data(args: argparse.Namespace, rl_results: list[dict]) -> list[dict] | str:
    """The more-demonstrations arm for every seed, or a sentence saying why it was skipped."""
    probe = load_arm_config(args, [])
    if probe.env.backend != "libero":
        return "skipped: more_data records scripted-expert demonstrations, which only env.backend=libero has"
    if not args.demos:
        raise SystemExit("rl_headline: the more_data arm needs --demos (the SFT policy's demonstrations)")
    rl_by_seed = {r["seed"]: r for r in rl_results}
    missing = [s for s in args.seed_list if s not in rl_by_seed]
    if missing:
        raise SystemExit(f"rl_headline: more_data needs the rl arm's results first (missing seeds "
                         f"{missing}): add rl to --arms")
    target = math.ceil(sum(r["env_steps"] for r in rl_results) / len(rl_results))
    demos = extend_demonstrations(args, probe, target)
    return [_more_data_seed(args, seed, demos, rl_by_seed[seed]) for seed in args.seed_list]


def demo_steps(index: dict) -> int:
    """Expert env steps of every attempted episode in a demo index (failures cost steps too)."""
    return sum(int(e["num_steps"]) for e in index.get("episodes", []))


def extend_demonstrations(args: argparse.Namespace, cfg: Any, target_steps: int) -> dict:
    """Copy ``--demos`` and record extra passes into the copy until they hold >= ``target_steps``.

    Passes go init state chunk by chunk (one chunk = one episode per worker), so the overshoot is
    at most one chunk, not a whole pass. Resumable: the copy's index says what is done, and
    ``extra.json`` keeps the recording wall time across interruptions.
    """
    from vla_rl_ros.core.data.recording import load_index, plan_pass_episodes, record_demonstrations
    from vla_rl_ros.core.envs.splits import train_init_states
    from vla_rl_ros.core.envs.vector import VectorEnv
    folder = arm_dir(args, "more_data")
    copy = folder / "demos"
    if not copy.is_dir():
        staging = folder / "demos.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(args.demos, staging)
        os.replace(staging, copy)  # a half-made copy is never mistaken for the real one
    original = load_index(args.demos)
    base_steps = demo_steps(original)
    noise = float(original.get("action_noise", 0.0))
    if noise == 0:
        print("[rl_headline] the demos have no action noise: extra passes repeat pass 0", file=sys.stderr)
    training = set(train_init_states(cfg.env.num_train_init_states))
    init_ids = sorted({e["init_state_id"] for e in original["episodes"]} & training)
    tasks = [t for t in cfg.env.task_ids if t in {e["task_id"] for e in original["episodes"]}]
    env_cfg = replace(cfg.env, task_ids=tasks)
    ledger_path = folder / "extra.json"
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {"record_wall_s": 0.0}
    envs = None
    demo_pass = 1
    try:
        while demo_steps(load_index(copy)) - base_steps < target_steps:
            for start in range(0, len(init_ids), env_cfg.num_envs):
                chunk = init_ids[start:start + env_cfg.num_envs]
                index = load_index(copy)
                if demo_steps(index) - base_steps >= target_steps:
                    break
                if not plan_pass_episodes(tasks, chunk, index, passes=demo_pass + 1):
                    continue  # recorded by an earlier, interrupted invocation
                envs = envs or VectorEnv(env_cfg)  # started only when there is something to record
                report = record_demonstrations(env_cfg, copy, chunk, progress=not args.no_progress,
                                               vector_env=envs, action_noise=noise, passes=demo_pass + 1)
                ledger["record_wall_s"] += report.wall_s
                write_json_atomic(ledger_path, ledger)
            demo_pass += 1
            if demo_pass > 1000:
                raise RuntimeError("more_data: 1000 demonstration passes did not reach the target env steps")
    finally:
        if envs is not None:
            envs.close()
    ledger.update(target_env_steps=target_steps, extra_env_steps=demo_steps(load_index(copy)) - base_steps,
                  passes=1 + max((e.get("pass", 0) for e in load_index(copy)["episodes"]), default=0),
                  directory=str(copy))
    write_json_atomic(ledger_path, ledger)
    return ledger


def _more_data_seed(args: argparse.Namespace, seed: int, demos: dict, rl_result: dict) -> dict:
    """SFT on the extended demos (seed ``seed``), then the RL arms' held-out evaluation."""
    from vla_rl_ros.core.sft import train_sft
    folder = arm_dir(args, "more_data", seed)
    own_policy = [f"policy.model_path={folder / 'sft' / 'policy'}", "reward.prm_weight=0"]
    finished = read_result(folder)
    if finished is not None:
        return judge_result(args, finished, own_policy, None, start=rl_result["start"])
    # The RL arms' SFT recipe, on more data; its own evaluation is off because the RL protocol
    # (TrainingRun.evaluate) is what every arm is compared with.
    cfg = load_arm_config(args, [f"sft.demo_dir={demos['directory']}", f"sft.output_dir={folder / 'sft'}",
                                 f"sft.seed={seed}", "sft.eval_episodes_per_task=0"])
    if not (folder / "sft" / "sft_result.json").is_file():
        train_sft(cfg, progress=not args.no_progress)
    # The last SFT invocation's wall time (all of it unless SFT itself was interrupted).
    sft_wall = json.loads((folder / "sft" / "sft_result.json").read_text())["wall_s_this_run"]
    started = time.time()  # a zero-iteration run does not clock itself
    last = evaluate_once(args, seed, folder / "eval", own_policy, None)
    wall = demos["record_wall_s"] + sft_wall + time.time() - started
    result = result_record("more_data", seed, rl_result["start"], held_out_counts(last),
                           last.get("eval/protocol", "greedy"), demos["extra_env_steps"], wall, folder)
    result.update(target_env_steps=demos["target_env_steps"], passes=demos["passes"],
                  note="start = the rl arm's SFT baseline of this seed; env_steps = extra expert steps "
                       "(shared by all seeds); wall_s includes the shared recording")
    write_json_atomic(folder / RESULT_FILE, result)
    return result


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) the chosen arms for every seed; write and return the summary."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
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
