"""The headline's ``more_data`` arm: the ``rl`` arm's env steps spent on expert demonstrations + SFT.

Extra scripted-expert passes are recorded into a copy of ``--demos`` until their env steps reach
the mean env steps the ``rl`` arm used; then, per seed, SFT with the same recipe on all of it,
evaluated with the RL arms' held-out protocol. LIBERO only (the toy backend has no expert).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from headline_arms import (RESULT_FILE, arm_dir, copy_directory_once, evaluate_once, held_out_counts,
                           judge_result, load_arm_config, read_result, result_record)
from vla_rl_ros.core.envs.splits import is_fresh_layout, is_held_out
from vla_rl_ros.core.rl.results import write_json_atomic


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
    return [more_data_seed(args, seed, demos, rl_by_seed[seed]) for seed in args.seed_list]


def demo_steps(index: dict) -> int:
    """Expert env steps of every attempted episode in a demo index (failures cost steps too)."""
    return sum(int(e["num_steps"]) for e in index.get("episodes", []))


def replayed_contexts(index: dict, num_train_init_states: int) -> list[int]:
    """The demos' own training contexts, fixed init states and fresh layouts alternating.

    Extra passes replay the start's mix, so the arm measures the quantity of expert data and not a
    shift of its mix: replaying only the init states (as this arm first did) left 14 % of the episodes
    on layouts while 80 % of the held-out episodes are layouts. Alternating keeps a partial last
    pass, and every chunk of workers, at the same mix. Held-out ids are never replayed.
    """
    ids = sorted({int(e["init_state_id"]) for e in index["episodes"]})
    training = [i for i in ids if not is_held_out(i, num_train_init_states)]
    states = [i for i in training if not is_fresh_layout(i)]
    layouts = [i for i in training if is_fresh_layout(i)]
    paired = [i for pair in zip(states, layouts) for i in pair]
    shorter = min(len(states), len(layouts))
    return paired + states[shorter:] + layouts[shorter:]


def extend_demonstrations(args: argparse.Namespace, cfg: Any, target_steps: int) -> dict:
    """Copy ``--demos`` and record extra passes into the copy until they hold >= ``target_steps``.

    Passes go context chunk by chunk (one chunk = one episode per worker), so the overshoot is
    at most one chunk, not a whole pass. Resumable: the copy's index says what is done, and
    ``extra.json`` keeps the recording wall time across interruptions.
    """
    from vla_rl_ros.core.data.recording import load_index, plan_pass_episodes, record_demonstrations
    from vla_rl_ros.core.envs.vector import VectorEnv
    folder = arm_dir(args, "more_data")
    copy = folder / "demos"
    copy_directory_once(Path(args.demos), copy)
    original = load_index(args.demos)
    base_steps = demo_steps(original)
    noise = float(original.get("action_noise", 0.0))
    if noise == 0:
        print("[rl_headline] the demos have no action noise: extra passes repeat pass 0", file=sys.stderr)
    contexts = replayed_contexts(original, cfg.env.num_train_init_states)
    tasks = [t for t in cfg.env.task_ids if t in {e["task_id"] for e in original["episodes"]}]
    env_cfg = replace(cfg.env, task_ids=tasks)
    ledger_path = folder / "extra.json"
    fresh = {"record_wall_s": 0.0, "contexts": contexts}
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else fresh
    if ledger.get("contexts") != contexts:
        raise SystemExit(f"rl_headline: {copy} was recorded on other contexts than the demos' training "
                         f"contexts (an older rule or other demos): move {folder} away to record it again")
    envs = None
    demo_pass = 1
    try:
        while demo_steps(load_index(copy)) - base_steps < target_steps:
            for start in range(0, len(contexts), env_cfg.num_envs):
                chunk = contexts[start:start + env_cfg.num_envs]
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
    written = dict(ledger)
    ledger.update(target_env_steps=target_steps, extra_env_steps=demo_steps(load_index(copy)) - base_steps,
                  passes=1 + max((e.get("pass", 0) for e in load_index(copy)["episodes"]), default=0),
                  directory=str(copy))
    if ledger != written:  # a rerun with nothing left to record leaves the finished folder as it was
        write_json_atomic(ledger_path, ledger)
    return ledger


def more_data_seed(args: argparse.Namespace, seed: int, demos: dict, rl_result: dict) -> dict:
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
