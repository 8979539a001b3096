"""Experiment: does the graph learn like ``vla-rl train``, within the recipe's own seed-to-seed noise?

For each seed, test_graph_learning's recipe (a tiny VLA SFT'd on noisy toy-oracle demos, 64
episodes an iteration in groups of 8, leave-one-out advantages, outcome reward only) runs twice from
the same start: in-process (``run_group_learning``, deterministic per seed) and through the train_sim
graph in lockstep (``run_graph_learning``: a bridge of 16 toy envs, the policy node, the recorder and
the learner node as separate processes over loopback DDS). Both run through the test's own
``run_both_routes``, imported from test/, so this measures exactly what the test runs; the test
itself runs one seed, which cannot tell a systematic difference from noise, hence this script.

Writes ``--out`` (JSON) after every seed, and skips the seeds already in it when rerun:

- per seed: the start's held-out success, both curves (after each checkpoint iteration), both
  gains, seconds, and per graph version the episodes learned from and the stale ones rejected;
- ``summary``: per route the mean and standard deviation of the gain; the paired difference
  graph - in-process per seed, its mean and t 95 % interval. The graph matches within noise when
  that interval holds 0 and its mean is small next to the seeds' spread of the gain.

    .venv/bin/python tools/experiments/graph_toy_match.py --seeds 0,1,2,3 \\
        --out docs/results/graph/toy_match.json

Run it with the machine to itself (the graph is four processes on two cores); set up as
tools/test.sh does (loopback DDS is chosen here, one fresh domain per seed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "test"), str(ROOT / "test" / "helpers"), str(Path(__file__).parent)]


def run_seed(seed: int, checkpoints: tuple[int, ...], work: Path) -> dict:
    """Both routes of one seed, from the same SFT start, as a JSON record."""
    from dds_domains import loopback_dds_env
    from test_graph_learning import run_both_routes

    os.environ.update(loopback_dds_env())  # a fresh loopback-only domain for this seed's graph
    routes = run_both_routes(work, seed=seed, checkpoints=checkpoints)
    before, in_process, graph = routes["before"], routes["in_process"], routes["graph"]
    last = max(checkpoints)
    return {"seed": seed, "before": before,
            "in_process": {"curve": {str(k): v for k, v in in_process.items()},
                           "gain": in_process[last] - before, "seconds": round(routes["in_process_s"], 1)},
            "graph": {"curve": {str(k): v for k, v in graph["curve"].items()},
                      "gain": graph["curve"][last] - before, "seconds": round(graph["seconds"], 1),
                      "episodes_per_version": [h.get("rollout/episodes") for h in graph["history"]],
                      "stale_rejected": sum(h.get("learner/rejected_episodes_stale", 0)
                                            for h in graph["history"])}}


def summarize(runs: list[dict]) -> dict:
    """Gain per route and the paired graph - in-process difference (points are success fractions)."""
    from analysis.stats import t_interval

    def spread(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else None}

    in_process = [r["in_process"]["gain"] for r in runs]
    graph = [r["graph"]["gain"] for r in runs]
    differences = [g - i for g, i in zip(graph, in_process)]
    interval = t_interval(differences)
    return {"seeds": [r["seed"] for r in runs],
            "gain_in_process": spread(in_process), "gain_graph": spread(graph),
            "difference_graph_minus_in_process": {
                **spread(differences), "ci95": interval,
                "holds_zero": None if interval is None else interval[0] <= 0.0 <= interval[1]}}


def main() -> None:
    """Run the seeds not yet in ``--out`` and rewrite it after each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds")
    parser.add_argument("--checkpoints", default="4,8,12", help="iterations after which success is measured")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results/graph/toy_match.json")
    args = parser.parse_args()
    checkpoints = tuple(int(c) for c in args.checkpoints.split(","))
    done = json.loads(args.out.read_text()) if args.out.exists() else {}
    if done and done.get("checkpoints") != list(checkpoints):
        raise SystemExit(f"{args.out} holds checkpoints {done.get('checkpoints')}: use another --out")
    runs = done.get("runs", [])
    for seed in (int(s) for s in args.seeds.split(",")):
        if any(r["seed"] == seed for r in runs):
            continue
        with tempfile.TemporaryDirectory(prefix=f"toy_match_{seed}_") as work:
            runs.append(run_seed(seed, checkpoints, Path(work)))
        result = {"recipe": "test_graph_learning (tiny VLA, toy, 64 episodes/iteration, groups of 8, loo)",
                  "checkpoints": list(checkpoints), "runs": runs, "summary": summarize(runs),
                  "command": "tools/experiments/graph_toy_match.py " + " ".join(sys.argv[1:])}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(runs[-1]["in_process"]["curve"]), json.dumps(runs[-1]["graph"]["curve"]),
              f"seed {seed} from {runs[-1]['before']:.3f}", flush=True)
    print(json.dumps(summarize(runs), indent=2))


if __name__ == "__main__":
    main()
