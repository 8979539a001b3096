"""``vla-rl train-graph``: the main job. The train_sim ROS 2 graph learns, then reports.

Starts the train_sim graph (sim bridge, policy, PRM, recorder, learner as processes over
loopback DDS, as ``vla-rl launch train_sim`` and ``ros2 launch vla_rl_ros train_sim.launch.py``
start it) from the embedded default (``checkpoints/default``: the chunked SFT policy and its PRM)
unless ``policy.model_path`` / ``reward.prm_path`` say otherwise, prints the learner's progress
every ``--status-every`` seconds, stops after ``--hours``, then evaluates the start and the final
policy on held-out contexts (``train.eval_episodes``), writes plots (success vs version and vs
env steps, per-task bars) and ``results/summary.json`` under ``train.output_dir``, and prints
where everything is. ``--from-scratch`` first builds the start itself (``vla-rl run``'s demos,
SFT and PRM stages). Rerunning the same command resumes: the learner continues from its
checkpoint, the recorder numbers its bags on, and the start's evaluation is kept.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from vla_rl_ros.cli.main import add_config_arguments
from vla_rl_ros.core.config import load_config
from vla_rl_ros.core.config_io import flatten, parse_overrides

DEFAULT_HOURS = 1.0
"""Long enough for ~25 updates of 32 LIBERO episodes on a 2-core CPU, short enough to wait for."""
REPOSITORY = Path(__file__).resolve().parents[2]
EMBEDDED_POLICY = REPOSITORY / "checkpoints" / "default" / "policy"
EMBEDDED_PRM = REPOSITORY / "checkpoints" / "default" / "prm"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train-graph`` subcommand."""
    parser = sub.add_parser("train-graph", help="the main job: the train_sim ROS 2 graph learns for a "
                            "while, then a held-out evaluation and a report", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--hours", type=float, default=DEFAULT_HOURS, help="how long the graph trains")
    parser.add_argument("--from-scratch", action="store_true",
                        help="build the start first (demonstrations, SFT, PRM), not checkpoints/default")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    parser.add_argument("--status-every", type=float, default=30.0, metavar="S",
                        help="seconds between progress lines")
    parser.set_defaults(func=run)


def shown(path: str) -> str:
    """``path`` relative to the repository when inside it: reports and results name no machine's folders.

    The nodes get the absolute path (they may run from any directory); what is printed and kept
    does not need it.
    """
    if not path:  # a new model (the toy graph): nothing to name
        return path
    try:
        return str(Path(path).resolve().relative_to(REPOSITORY))
    except ValueError:
        return path


def starting_point(args: argparse.Namespace) -> list[str]:
    """``--set`` items that point the graph at its start, unless the user set them."""
    cfg = load_config(args.config, args.overrides)
    chosen = set(flatten(parse_overrides(args.overrides)))
    extra = []
    if args.from_scratch:
        from vla_rl_ros.cli.main import main as vla_rl
        common = (["--config", args.config] if args.config else []) + [f"--set={o}" for o in args.overrides]
        code = vla_rl(["run", "--stages", "demos,sft,train-prm"] + common)
        if code:
            raise SystemExit(code)
        policy, prm = Path(cfg.sft.output_dir) / "policy", Path(cfg.reward.prm_path or
                                                                Path(cfg.train.output_dir) / "prm")
    elif cfg.env.backend == "libero":
        policy, prm = EMBEDDED_POLICY, EMBEDDED_PRM
    else:  # the toy graph starts from a fresh tiny policy: the embedded default is a LIBERO model
        return extra
    if not cfg.policy.model_path and "policy.model_path" not in chosen:
        extra.append(f"policy.model_path={policy}")
    if not cfg.reward.prm_path and "reward.prm_path" not in chosen and cfg.reward.prm_weight > 0:
        extra.append(f"reward.prm_path={prm}")
    return extra


def learner_progress(out: Path) -> dict[str, Any] | None:
    """The learner's last update as its checkpoint records it (None before the first)."""
    from vla_rl_ros.core.rl import checkpoint as ckpt
    try:
        state = ckpt.load_checkpoint(out)
    except Exception:  # noqa: BLE001 - being replaced right now: the next look sees it
        return None
    return {"history": state["history"], "version": state["version"]} if state else None


def report_progress(out: Path, started: float, stop: threading.Event, every_s: float) -> None:
    """Print one line per ``every_s``: policy version, rollout success, env steps and their rate."""
    while not stop.wait(every_s):
        progress = learner_progress(out)
        if not progress or not progress["history"]:
            print(f"[train-graph] {time.time() - started:6.0f} s: waiting for the first update "
                  f"(node logs in {out / 'logs'})", file=sys.stderr, flush=True)
            continue
        last = progress["history"][-1]
        steps = int(last.get("rollout/env_steps", 0))
        elapsed = time.time() - started
        print(f"[train-graph] {elapsed:6.0f} s: policy version {progress['version']}, rollout success "
              f"{last.get('rollout/success_rate', float('nan')):.2f} over {last.get('rollout/episodes', 0)} "
              f"episodes, {steps} env steps", file=sys.stderr, flush=True)


def evaluate(cfg: Any, out: Path, adapters: str | None) -> dict[str, Any]:
    """Held-out evaluation of the start (``adapters`` None) or of the start plus ``adapters``."""
    from vla_rl_ros.core.rl.train_loop import TrainingRun, make_env
    run = TrainingRun(cfg, progress_bar=False, tensorboard=False, ranks=None)
    if adapters:
        run.policy.load_adapters(adapters)
    run.env = make_env(cfg.env)
    try:
        return run.evaluate()
    finally:
        run.env.close()


def run(args: argparse.Namespace) -> int:
    """Start the graph, supervise it for ``--hours``, then evaluate, plot and report."""
    from vla_rl_ros.cli.launch_cmd import Supervisor
    from vla_rl_ros.core.rl.results import write_json_atomic, write_results
    from vla_rl_ros.graph.description import build_graph
    overrides = list(args.overrides) + starting_point(args)
    cfg = load_config(args.config, overrides)
    out = Path(cfg.train.output_dir)
    graph = build_graph("train_sim", overrides=flatten(parse_overrides(overrides)),
                        **({"config": args.config} if args.config else {}))
    supervisor = Supervisor(graph, log_dir=str(out / "logs"))
    started = time.time()
    print(f"[train-graph] the train_sim graph for {args.hours:g} h from {shown(cfg.policy.model_path)}; "
          f"node logs in {out / 'logs'}; Ctrl-C stops it (rerun to resume)", file=sys.stderr, flush=True)
    stop = threading.Event()
    printer = threading.Thread(target=report_progress, args=(out, started, stop, args.status_every),
                               daemon=True)
    supervisor.start()
    printer.start()
    try:
        code = supervisor.wait(args.hours * 3600)
    finally:
        stop.set()
    if code:
        print(f"[train-graph] the graph stopped with code {code}; rerun the same command to resume",
              file=sys.stderr)
        return code
    progress = learner_progress(out) or {"history": [], "version": 0}
    history = [{**h, "iteration": int(h.get("learner/version", i + 1))}
               for i, h in enumerate(progress["history"])]
    evals = []
    if not args.no_eval:
        start_file = out / "results" / "eval_start.json"
        if start_file.is_file():
            evals.append(json.loads(start_file.read_text()))
        else:
            evals.append(evaluate(cfg, out, None))
            write_json_atomic(start_file, evals[0])
        if progress["version"]:
            final = evaluate(cfg, out, str(out / "adapters" / f"v{progress['version']:06d}"))
            final.update({"iteration": progress["version"],
                          "env_steps": history[-1].get("rollout/env_steps", 0) if history else 0})
            evals.append(final)
    summary = {"route": "graph (train_sim)", "policy_versions": progress["version"],
               "env_steps": history[-1].get("rollout/env_steps", 0) if history else 0,
               "wall_s_this_run": round(time.time() - started, 1), "start": shown(cfg.policy.model_path),
               "eval_first": evals[0] if evals else None, "eval_last": evals[-1] if len(evals) > 1 else None}
    if len(evals) > 1:
        summary["eval_gain"] = evals[-1]["eval/success_rate"] - evals[0]["eval/success_rate"]
    folder = write_results(out, history, evals, summary)
    print_report(out, folder, summary)
    return 0


def print_report(out: Path, folder: Path, summary: dict[str, Any]) -> None:
    """The one-screen report: what was learned and where everything is."""
    lines = [f"policy versions: {summary['policy_versions']}, env steps: {summary['env_steps']}"]
    for label, key in (("held-out success at the start", "eval_first"),
                       ("held-out success now", "eval_last")):
        e = summary.get(key)
        if e:
            lines.append(f"{label}: {e['eval/success_rate']:.3f} [{e['eval/ci_low']:.3f}, "
                         f"{e['eval/ci_high']:.3f}] over {e['eval/episodes']} episodes "
                         f"({e['eval/protocol']})")
    lines += [f"plots and summary: {folder}/ (success_vs_iteration.png, success_vs_env_steps.png, "
              "per_task_success.png, summary.json)",
              f"adapters (one directory per policy version): {out / 'adapters'}",
              f"learner checkpoint: {out / 'checkpoints' / 'latest'}; trajectory bags: the graph.bag_dir",
              f"node logs: {out / 'logs'}; rerun the same command to train on from here"]
    print("\n".join(["", "== vla-rl train-graph =="] + lines), flush=True)
