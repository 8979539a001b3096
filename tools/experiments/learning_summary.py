"""Writes ``docs/results/learning/summary.json``: the learning issue's figures, from result files.

Every figure is read from a file another command wrote; nothing is typed in by hand::

    .venv/bin/python tools/experiments/learning_summary.py \\
        --sft-eval docs/results/learning/sft_eval_greedy.json \\
        --rollout docs/results/learning/rollout_cost_k8.json \\
        [--rollout-before docs/results/learning/rollout_cost_k1.json] \\
        [--sft-eval-repeat docs/results/learning/sft_eval_greedy_seed1.json] \\
        [--headline runs/experiments/headline] --out docs/results/learning/summary.json

``--sft-eval``: a ``vla-rl eval`` result (greedy); ``--sft-eval-repeat``: the same evaluation of a
second run of the SFT recipe (another seed), compared with the first under ``sft.repeat``;
``--rollout``: ``rollout_cost.py`` output;
``--headline``: an ``rl_headline.py`` output folder (``<arm>/seed<k>/arm_result.json``). Arms not
run yet are written with null figures and ``"status": "not run"``. ``--rl-longer`` (repeatable): a
folder whose ``rl`` seeds continue ``--headline``'s to a longer budget (``rl_headline.py --extend``);
every budget is listed under ``rl_by_budget``, and ``rl`` is the longest one that ran every seed the
headline ran: a continued run's last evaluation is its result, whichever budget scored best.
The ablations and ``more_data`` that ran are under ``ablations``, each with its end compared with
its baseline arm's end (``rl``'s at the headline's own budget, the one they ran).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/experiments, for analysis

from analysis.headline import end_against, pooled_counts  # noqa: E402
from analysis.stats import gain_interval, t_interval  # noqa: E402


ABLATION_BASELINES = {"no_prm": "rl", "no_curriculum": "rl", "no_warmup": "rl_critic", "more_data": "rl"}
"""Each ablation (and more_data) against the arm it switches one thing off of (or races)."""


def arm_results(folder: Path | None, arm: str) -> list[dict]:
    """The judged seeds of one arm of an ``rl_headline.py`` folder (none without a folder)."""
    if folder is None:
        return []
    return [json.loads(path.read_text()) for path in sorted((folder / arm).glob("seed*/arm_result.json"))]


def against_baseline(results: list[dict], baseline: list[dict]) -> dict | None:
    """End minus the baseline arm's end on the seeds both ran, in points (None if none shared).

    The per-seed differences and Fisher's p are ``analysis.headline.end_against``'s; the interval
    added here treats the two pooled ends as independent samples (they judge the same held-out
    states, so it is conservative).
    """
    versus = end_against(results, baseline)
    if versus is None:
        return None

    def pooled_end(records: list[dict]) -> list[int]:
        ends = [r["end"] for r in records if r["seed"] in versus["seeds"]]
        return [sum(e["wins"] for e in ends), sum(e["episodes"] for e in ends)]
    own, base = pooled_end(results), pooled_end(baseline)
    return {"seeds": versus["seeds"], "points_per_seed": [round(d, 2) for d in versus["per_seed"]],
            "points_mean": round(versus["mean"], 2),
            "ci95_pooled": gain_interval(base[0], base[1], own[0], own[1]),
            "fisher_p_pooled": float(f"{versus['fisher_p_pooled']:.3g}")}


def greedy_evaluation(path: str) -> dict:
    """A ``vla-rl eval`` result; SystemExit if it sampled (the SFT target is judged greedy)."""
    evaluation = json.loads(Path(path).read_text())
    if not evaluation.get("greedy"):
        raise SystemExit(f"{path}: the SFT target is judged greedy; this evaluation sampled")
    return evaluation


def sft_repeat(first: dict, second: dict, source: str) -> dict:
    """A second run of the SFT recipe against the first: its rate, and the difference's interval.

    The two agree when the 95 % interval of the difference (Newcombe, the two evaluations as
    independent samples) holds zero: what "two runs of the recipe agree within their intervals" asks.
    """
    one, two = first["overall"], second["overall"]
    difference = gain_interval(one["successes"], one["episodes"], two["successes"], two["episodes"])
    return {"heldout_success_greedy": round(two["success_rate"], 4), "heldout_episodes": two["episodes"],
            "ci95": two["ci95"], "per_task": {t: v["success_rate"] for t, v in second["per_task"].items()},
            "difference_points": round(100 * (two["success_rate"] - one["success_rate"]), 2),
            "difference_ci95": difference, "agrees": difference[0] <= 0 <= difference[1], "source": source}


def arm_summary(results: list[dict]) -> dict:
    """Mean gain over seeds, pooled interval of the gain, episodes per point, for one arm's results."""
    if not results:
        return {"status": "not run", "seeds": [], "gain_points_mean": None, "gain_ci95": None,
                "hours_per_seed_max": None, "heldout_episodes_per_point": None}
    start_wins, start_n = pooled_counts(results, "start")  # a start shared by the seeds counts once
    end_wins, end_n = pooled_counts(results, "end")
    gains = [r["gain_points"] for r in results]
    return {"status": "run", "seeds": [r["seed"] for r in results],
            "protocol": sorted({r["protocol"] for r in results}),
            "gain_points_per_seed": [round(g, 2) for g in gains],
            "gain_points_mean": round(sum(gains) / len(gains), 2),
            "gain_ci95": gain_interval(start_wins, start_n, end_wins, end_n),
            "gain_t95_over_seeds": t_interval(gains),
            "start_pooled": [start_wins, start_n], "end_pooled": [end_wins, end_n],
            "heldout_episodes_per_point": min(min(r["start"]["episodes"], r["end"]["episodes"])
                                              for r in results),
            "hours_per_seed_max": round(max(r["wall_s"] for r in results) / 3600, 2)}


def rl_budgets(base: list[dict], headline: Path | None, longer: list[str]) -> list[dict]:
    """The ``rl`` arm at each budget it ran, shortest first: the headline's, then each continuation's."""
    found = [(base, headline)] + [(arm_results(Path(folder), "rl"), folder) for folder in longer]
    budgets = [{**arm_summary(results), "source": str(folder)} for results, folder in found if results]
    return sorted(budgets, key=lambda budget: budget["hours_per_seed_max"])


def rl_at_longest_budget(budgets: list[dict], base: list[dict]) -> dict:
    """The longest of ``budgets`` whose seeds cover the headline's ``base`` seeds."""
    complete = [b for b in budgets if set(b["seeds"]) >= {r["seed"] for r in base}]
    return {key: value for key, value in complete[-1].items() if key != "source"} if complete \
        else arm_summary(base)


def main(argv: list[str] | None = None) -> dict:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft-eval", required=True)
    parser.add_argument("--sft-eval-repeat", default=None)
    parser.add_argument("--rollout", required=True)
    parser.add_argument("--rollout-before", default=None)
    parser.add_argument("--headline", default=None)
    parser.add_argument("--rl-longer", action="append", default=[], metavar="DIR")
    parser.add_argument("--out", default="docs/results/learning/summary.json")
    args = parser.parse_args(argv)
    sft = greedy_evaluation(args.sft_eval)
    rollout = json.loads(Path(args.rollout).read_text())
    headline = Path(args.headline) if args.headline else None
    runs = {arm: arm_results(headline, arm) for arm in ("rl", "rl_critic", *ABLATION_BASELINES)}  # read once
    budgets = rl_budgets(runs["rl"], headline, args.rl_longer)
    summary = {
        "sft": {"heldout_success_greedy": round(sft["overall"]["success_rate"], 4),
                "heldout_episodes": sft["overall"]["episodes"], "ci95": sft["overall"]["ci95"],
                "per_task": {t: v["success_rate"] for t, v in sft["per_task"].items()},
                "uses_training_init_states": sft["uses_training_init_states"], "source": args.sft_eval},
        "rollout": {"env_steps_per_s": rollout["rollout"]["env_steps_per_s"],
                    "episodes_per_hour": rollout["rollout"]["episodes_per_hour"],
                    "chunk_size": rollout["chunk_size"], "step_parts_ms": rollout["step_parts"],
                    "decode": rollout["decode"], "visual_mesh_faces": rollout.get("visual_mesh_faces", 0),
                    "source": args.rollout},
        "rl": rl_at_longest_budget(budgets, runs["rl"]),
        "rl_critic": arm_summary(runs["rl_critic"]),
        "targets": {"sft.heldout_success_greedy": 0.5, "rollout.env_steps_per_s": 100,
                    "rollout.episodes_per_hour": 1500, "rl.gain_points_mean": 15},
    }
    if args.rl_longer:
        summary["rl_by_budget"] = budgets
    if args.sft_eval_repeat:
        repeat = greedy_evaluation(args.sft_eval_repeat)
        summary["sft"]["repeat"] = sft_repeat(sft, repeat, args.sft_eval_repeat)
    summary["ablations"] = {}
    for arm, baseline in ABLATION_BASELINES.items():
        if not runs[arm]:
            continue
        comparison = against_baseline(runs[arm], runs[baseline])
        summary["ablations"][arm] = {**arm_summary(runs[arm]), "baseline": baseline,
                                     "end_minus_baseline_end": comparison}
    if args.rollout_before:
        before = json.loads(Path(args.rollout_before).read_text())
        summary["rollout"]["before"] = {"chunk_size": before["chunk_size"],
                                        "env_steps_per_s": before["rollout"]["env_steps_per_s"],
                                        "episodes_per_hour": before["rollout"]["episodes_per_hour"],
                                        "step_parts_ms": before["step_parts"], "source": args.rollout_before}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
