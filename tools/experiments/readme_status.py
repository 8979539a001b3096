"""Writes the README's Status table from the result files, so that it cannot drift from the data.

The table between the README's ``<!-- status-table:begin -->`` and ``<!-- status-table:end -->``
markers is generated here from ``docs/results/learning/summary.json`` (learning_summary.py),
``docs/results/graph/libero_bench.json`` (``vla-rl bench graph``),
``docs/results/graph/main_job/summary.json`` (``vla-rl train-graph``, when it has run) and
``docs/results/libero_env/frame_cost_decimated.json`` (frame_cost.py)::

    .venv/bin/python tools/experiments/readme_status.py            # rewrite the table
    .venv/bin/python tools/experiments/readme_status.py --check    # exit 1 if the README differs

test/test_readme_status.py runs the check, so a new result file without a regenerated README
fails the suite.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The repository (for vla_rl_ros) and this folder (for analysis), whoever runs or loads the script.
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
from analysis.stats import gain_interval  # noqa: E402
BEGIN, END = "<!-- status-table:begin -->", "<!-- status-table:end -->"


def _load(root: Path, relative: str) -> dict | None:
    path = root / relative
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _train_sim_mesh_faces(root: Path) -> int:
    """env.visual_mesh_faces as ``root``'s config/train_sim.yaml resolves it (0 when the file is absent)."""
    from vla_rl_ros.core.config import load_config
    path = root / "config" / "train_sim.yaml"
    return load_config(path).env.visual_mesh_faces if path.is_file() else 0


def _against_baseline(arm: str, result: dict) -> str:
    """An arm's gain and its end against its baseline arm's end, as one phrase."""
    against = result["end_minus_baseline_end"] or {}
    low, high = against.get("ci95_pooled") or (float("nan"), float("nan"))
    return (f"`{arm}`: {result['gain_points_mean']:+.1f} points over {len(result['seeds'])} "
            f"seed(s); end minus `{result['baseline']}`'s end "
            f"{against.get('points_mean', float('nan')):+.1f} [{low:+.1f}, {high:+.1f}], "
            f"p = {against.get('fisher_p_pooled', float('nan')):.2g}")


def rows(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(target, measured, met) for each figure the open issues name, from the result files under ``root``."""
    out = []
    learning = _load(root, "docs/results/learning/summary.json") or {}
    sft = learning.get("sft")
    if sft:
        tasks = ", ".join(f"task {t}: {_pct(v)}" for t, v in sft["per_task"].items())
        low, high = sft["ci95"]
        measured = (f"{_pct(sft['heldout_success_greedy'])} of {sft['heldout_episodes']} "
                    f"[{_pct(low)}, {_pct(high)}] ({tasks}); `{sft['source']}`")
        repeat = sft.get("repeat")
        if repeat:
            low, high = repeat["difference_ci95"]
            measured += (f"; a second run of the recipe {_pct(repeat['heldout_success_greedy'])}, "
                         f"{repeat['difference_points']:+.1f} points [{low:+.1f}, {high:+.1f}] "
                         f"({'agrees' if repeat['agrees'] else '**does not agree**'}); `{repeat['source']}`")
        out.append(("chunked SFT start solves >= 50 % of held-out episodes, greedy", measured,
                    "yes" if sft["heldout_success_greedy"] >= 0.5 else "**no**"))
    rollout = learning.get("rollout")
    if rollout:
        before = rollout.get("before", {})
        met = rollout["env_steps_per_s"] >= 100 and rollout["episodes_per_hour"] >= 1500
        out.append(("RL rollouts >= 100 env steps/s and >= 1,500 episodes/hour",
                    f"{rollout['env_steps_per_s']:g} env steps/s, {rollout['episodes_per_hour']:,.0f} "
                    f"episodes/hour (single-step before: {before.get('env_steps_per_s', 'n/a')}, "
                    f"{before.get('episodes_per_hour', 'n/a')}); a frame "
                    f"{rollout['step_parts_ms']['render_frame_ms']:g} ms, a physics step "
                    f"{rollout['step_parts_ms']['physics_step_ms']:g} ms"
                    + (f" (meshes decimated to {rollout['visual_mesh_faces']:,} faces)"
                       if rollout.get("visual_mesh_faces") else ""), "yes" if met else "**no**"))
    frames = _load(root, "docs/results/libero_env/frame_cost_decimated.json")
    if frames:
        faces = _train_sim_mesh_faces(root)
        by = frames["summary_by_faces"]
        out.append(("decimated visual meshes (the next rollout lever)",
                    f"a 128 px frame {by['0']['ms_per_frame']:g} ms -> {by['2000']['ms_per_frame']:g} ms "
                    f"at 2,000 faces a mesh (mean pixel change {by['2000']['mean_abs_pixel_diff']:g} grey "
                    "levels; "
                    f"measured at load {frames['load_average_before'][0]:g} on {frames['cpus']} cores)"
                    + (f"; used by config/train_sim.yaml ({faces:,} faces)" if faces else
                       "; off in config/train_sim.yaml"), "in use" if faces else "built, not yet used"))
    for arm in ("rl", "rl_critic"):
        result = learning.get(arm)
        if result is None:
            continue
        if result["status"] == "not run":
            measured, met = "not run", "not yet"
        else:
            low, high = result["gain_ci95"]
            measured = (f"{result['gain_points_mean']:+.1f} points over {len(result['seeds'])} seed(s), "
                        f"pooled 95 % [{low:+.1f}, {high:+.1f}], {result['heldout_episodes_per_point']} "
                        f"held-out episodes a point, <= {result['hours_per_seed_max']:g} h a seed")
            budgets = learning.get(f"{arm}_by_budget") or []
            if len(budgets) > 1:
                measured += "; by budget: " + ", ".join(
                    f"<= {b['hours_per_seed_max']:g} h {b['gain_points_mean']:+.1f} "
                    f"[{b['gain_ci95'][0]:+.1f}, {b['gain_ci95'][1]:+.1f}] ({len(b['seeds'])} seed(s))"
                    for b in budgets)
            # The target: a mean of 3 seeds at +15 or more, with the pooled interval above zero.
            met = "yes" if len(result["seeds"]) >= 3 and result["gain_points_mean"] >= 15 and low > 0 \
                else "**no**"
        out.append((f"`{arm}` >= +15 points held out over its start, 3 seeds, <= 2 h each", measured, met))
    ablations = learning.get("ablations")
    if ablations:
        # more_data is context (a free scripted expert makes it an unfair race), not an ablation:
        # it gets its own row so the ablations row says only what switching a part off does.
        parts = [_against_baseline(arm, result) for arm, result in ablations.items() if arm != "more_data"]
        wanted = ("no_prm", "no_curriculum", "no_warmup")
        done = all(len(ablations.get(arm, {}).get("seeds", [])) >= 3 for arm in wanted)
        target = "ablations of the best recipe (no PRM, no curriculum; `rl_critic` without warm-up), 3 seeds"
        out.append((target, "; ".join(parts), "run" if done else "**partly run**"))
    more_data = (ablations or {}).get("more_data")
    target = "`more_data` as context: `rl`'s env steps spent on expert demonstrations + SFT, 3 seeds"
    if more_data:
        start, end = more_data["start_pooled"], more_data["end_pooled"]
        measured = (f"{start[0]}/{start[1]} -> {end[0]}/{end[1]}; "
                    f"{_against_baseline('more_data', more_data)}; "
                    f"<= {more_data['hours_per_seed_max']:g} h a seed (recording shared)")
        out.append((target, measured, "run" if len(more_data["seeds"]) >= 3 else "**partly run**"))
    else:
        out.append((target, "not run", "not yet"))
    bench = _load(root, "docs/results/graph/libero_bench.json")
    if bench:
        ratio = bench["ratio_graph_over_in_process"]
        out.append(("graph >= 90 % of the in-process env steps/s on the default LIBERO set",
                    f"ratio {ratio:.3f} ({bench['graph']['env_steps_per_s']:.1f} vs "
                    f"{bench['in_process']['env_steps_per_s']:.1f} env steps/s); "
                    "`docs/results/graph/libero_bench.json`", "yes" if ratio >= 0.9 else "**no**"))
    main_job = _load(root, "docs/results/graph/main_job/summary.json")
    if main_job:
        first, last = main_job.get("eval_first"), main_job.get("eval_last")
        evals, met = "", "runs; no held-out evaluation"
        if first and last:
            wins = [round(e["eval/success_rate"] * e["eval/episodes"]) for e in (first, last)]
            low, high = gain_interval(wins[0], first["eval/episodes"], wins[1], last["eval/episodes"])
            gain = 100 * (last["eval/success_rate"] - first["eval/success_rate"])
            evals = (f"; held out, greedy: {wins[0]}/{first['eval/episodes']} -> "
                     f"{wins[1]}/{last['eval/episodes']} ({gain:+.1f} points, "
                     f"95 % [{low:+.1f}, {high:+.1f}], one run)")
            met = "yes (gain resolved, one run)" if low > 0 else "runs; gain not resolved"
        out.append(("the main job (`tools/main.sh`) runs the graph and learns",
                    f"{main_job['policy_versions']} policy versions, {main_job['env_steps']:,} env steps in "
                    f"{main_job['wall_s_this_run'] / 60:.0f} min{evals}; `docs/results/graph/main_job/`",
                    met))
    return out


def table(root: Path = ROOT) -> str:
    """The generated block, markers included."""
    lines = [BEGIN, "<!-- generated by tools/experiments/readme_status.py from docs/results: do not edit -->",
             "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {met} |" for target, measured, met in rows(root)]
    return "\n".join(lines + ["", END])


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or ``--check``) the README's table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is not current")
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--root", default=str(ROOT), help="where docs/results is (tests use fixtures)")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"{readme}: no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + table(Path(args.root)) + tail
    if args.check:
        if new != text:
            print(f"{readme}: the status table is not current; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
