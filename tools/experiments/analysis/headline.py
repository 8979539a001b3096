"""The headline experiment's statistics and report: arms of held-out success across seeds.

Each seed of an arm is one result record (``arm_result.json``'s shape: ``arm``, ``seed``,
``protocol``, ``start`` and ``end`` with ``rate``/``wins``/``episodes``, ``gain_points``,
``env_steps``, ``wall_s``). ``tools/experiments/rl_headline.py`` makes the records by running the
arms; ``tools/experiments/headline_records.py`` reads them back from the committed file. Both report
through this module, so a figure in the docs has one definition.
"""
from __future__ import annotations

import math
from pathlib import Path

from analysis.stats import episodes_for_power, fisher_exact_p, t_interval
from vla_rl_ros.core.rl.results import wilson_interval, write_json_atomic

ARMS = ("rl", "rl_critic", "no_prm", "no_curriculum", "no_warmup", "more_data")
"""The experiment's arms in table order: the best recipe (group advantages), the paper's critic
estimator, one switch off each, more demos + SFT."""
RESULT_FILE = "arm_result.json"
"""One finished seed's record, in its run folder; its presence makes a rerun skip that seed."""


# ---------------------------------------------------------------------------------------- statistics
def pooled_counts(results: list[dict], key: str) -> tuple[int, int]:
    """Wins and episodes of ``key`` (``"start"`` or ``"end"``) pooled over seeds; a shared start once.

    Seeds that start from one SFT policy judged greedy on the same held-out episodes (``--judge
    greedy`` evaluates it once for all of them) hold one measurement of the start, not one per seed:
    counted per seed, the start's interval would shrink by the square root of the seeds. Identical
    start counts are therefore pooled once (for independent sampled evaluations that only makes the
    interval wider). The ends are different policies, one measurement each.
    """
    counts = [(r[key]["wins"], r[key]["episodes"]) for r in results]
    if key == "start" and len(set(counts)) == 1:
        return counts[0]
    return sum(w for w, _ in counts), sum(n for _, n in counts)


def aggregate(results: list[dict], rl_results: list[dict] | None = None) -> dict:
    """One arm across seeds: mean and per-seed rates, pooled Wilson intervals, gain t-interval."""
    def pooled(key: str) -> dict:
        wins, episodes = pooled_counts(results, key)
        rates = [r[key]["rate"] for r in results]
        return {"mean": sum(rates) / len(rates), "per_seed": rates, "wins": wins, "episodes": episodes,
                "ci95_wilson_pooled": list(wilson_interval(wins, episodes))}
    gains = [r["gain_points"] for r in results]
    # Seeds evaluated differently are not one measurement: say so rather than name one protocol.
    protocols = sorted({r.get("protocol", "greedy") for r in results})
    summary = {"seeds": [r["seed"] for r in results],
               "protocol": protocols[0] if len(protocols) == 1 else "mixed: " + ", ".join(protocols),
               "start": pooled("start"), "end": pooled("end"),
               "gain_points": {"mean": sum(gains) / len(gains), "per_seed": gains,
                               "ci95_t": t_interval(gains)},
               "env_steps": {"mean": sum(r["env_steps"] for r in results) / len(results),
                             "per_seed": [r["env_steps"] for r in results]},
               "wall_s": _mean_known([r.get("wall_s") for r in results])}
    if rl_results and results[0]["arm"] != "rl":
        versus = end_against(results, rl_results)
        if versus is not None:
            summary["end_minus_rl_end_points"] = versus
    return summary


def end_against(results: list[dict], baseline: list[dict]) -> dict | None:
    """End minus ``baseline``'s end on the seeds both ran, in points (None when they share none).

    Paired by seed (same SFT start, same held-out states): the comparison an ablation's claim is
    about. ``seeds``, ``per_seed``, ``mean``, ``ci95_t`` and ``fisher_p_pooled``: Fisher on the
    ends pooled over those seeds, because with 2-3 seeds the t interval is too wide to say
    anything, while the pooled counts still carry 60-90 episodes a side.
    """
    paired = {r["seed"]: r["end"] for r in baseline}
    shared = [r for r in results if r["seed"] in paired]
    if not shared:
        return None
    differences = [100.0 * (r["end"]["rate"] - paired[r["seed"]]["rate"]) for r in shared]
    own, other = [r["end"] for r in shared], [paired[r["seed"]] for r in shared]
    pooled_p = fisher_exact_p(sum(e["wins"] for e in own), sum(e["episodes"] for e in own),
                              sum(e["wins"] for e in other), sum(e["episodes"] for e in other))
    return {"mean": sum(differences) / len(differences), "per_seed": differences,
            "ci95_t": t_interval(differences), "seeds": [r["seed"] for r in shared],
            "fisher_p_pooled": pooled_p}


def _mean_known(values: list[float | None]) -> dict:
    """Mean of the values that were measured (None: not recorded, as in runs transcribed from notes)."""
    known = [v for v in values if v is not None]
    return {"mean": sum(known) / len(known) if known else None, "per_seed": values}


# ---------------------------------------------------------------------------------------- reporting
def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _interval(pair: list[float] | None, scale: float = 1.0) -> str:
    return "n/a" if not pair else f"[{scale * pair[0]:.1f}, {scale * pair[1]:.1f}]"


def markdown_table(summary: dict) -> str:
    """The arms as a markdown table (success in %, gain in points, intervals 95 %)."""
    lines = [f"Held-out success, {summary['hours']} h per RL arm and seed, seeds {summary['seeds']}; "
             "start/end: mean over seeds [pooled Wilson 95 %]; gain: mean [t 95 % over seeds]; "
             "against rl: end minus rl's end on the same seeds, mean [t 95 %], and Fisher's p of the "
             "pooled ends.", "",
             "| arm | seeds | decoding | start % | end % | gain (points) | per seed start -> end % "
             "| against rl (points; p) | env steps | wall (h) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, entry in summary["arms"].items():
        if "skipped" in entry:
            lines.append(f"| {arm} | | | {entry['skipped']} | | | | | | |")
            continue
        start, end, gain = entry["start"], entry["end"], entry["gain_points"]
        seeds = ", ".join(f"{_percent(a)} -> {_percent(b)}"
                          for a, b in zip(start["per_seed"], end["per_seed"]))
        versus = entry.get("end_minus_rl_end_points")
        against = "" if versus is None else \
            f"{versus['mean']:+.1f} {_interval(versus['ci95_t'])}; p = {versus['fisher_p_pooled']:.2g}"
        wall = "n/a" if entry["wall_s"]["mean"] is None else f"{entry['wall_s']['mean'] / 3600:.2f}"
        lines.append(f"| {arm} | {','.join(map(str, entry['seeds']))} | {entry.get('protocol', 'greedy')} "
                     f"| {_percent(start['mean'])} {_interval(start['ci95_wilson_pooled'], 100)} "
                     f"| {_percent(end['mean'])} {_interval(end['ci95_wilson_pooled'], 100)} "
                     f"| {gain['mean']:+.1f} {_interval(gain['ci95_t'])} | {seeds} | {against} "
                     f"| {entry['env_steps']['mean']:.0f} | {wall} |")
    size = summary.get("sizing")
    if size:
        lines += ["", f"Resolving a true +{size['gain_points']:.0f}-point gain from rl's start "
                      f"({100 * size['start_rate']:.1f} %) with {100 * size['power']:.0f} % power at the "
                      f"5 % level needs about {size['episodes_per_side']} held-out episodes at the start "
                      f"and as many at the end, pooled over seeds; these seeds have "
                      f"{size['episodes_per_side_now']}."]
    return "\n".join(lines) + "\n"


def plot_summary(summary: dict, path: Path) -> None:
    """Start and end success per arm (bars = seed means, error bars = pooled Wilson, dots = seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = [a for a, e in summary["arms"].items() if "skipped" not in e]
    fig, ax = plt.subplots(figsize=(1.6 * max(len(arms), 2) + 2, 4))
    for offset, key, label in ((-0.2, "start", "start (SFT)"), (0.2, "end", "end")):
        means = [summary["arms"][a][key]["mean"] for a in arms]
        low = [m - summary["arms"][a][key]["ci95_wilson_pooled"][0] for m, a in zip(means, arms)]
        high = [summary["arms"][a][key]["ci95_wilson_pooled"][1] - m for m, a in zip(means, arms)]
        positions = [i + offset for i in range(len(arms))]
        ax.bar(positions, means, 0.4, yerr=[low, high], capsize=3, label=label, alpha=0.8)
        for x, arm in zip(positions, arms):
            seeds = summary["arms"][arm][key]["per_seed"]
            ax.plot([x] * len(seeds), seeds, "k.", markersize=4)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel("held-out success rate")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{summary['hours']} h per arm and seed, seeds {summary['seeds']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize_arms(per_arm: dict[str, list[dict] | str], rl_results: list[dict]) -> dict:
    """Each arm aggregated over its seeds (or the reason it was skipped), its runs, and the claims."""
    arms = {arm: ({"skipped": value} if isinstance(value, str) else aggregate(value, rl_results))
            for arm, value in per_arm.items()}
    runs = {arm: value for arm, value in per_arm.items() if not isinstance(value, str)}
    return {"arms": arms, "runs": runs, "claims": claims(arms), "sizing": sizing(arms)}


def write_summary(out: Path, summary: dict, stem: str = "summary", more_markdown: str = "") -> None:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out``; the table also goes to stdout."""
    write_json_atomic(out / f"{stem}.json", summary)
    table = markdown_table(summary) + more_markdown
    (out / f"{stem}.md").write_text(table)
    plot_summary(summary, out / f"{stem}.png")
    print(table)


TARGET_GAIN_POINTS = 15.0
"""The issue's headline: held-out success rises by at least this much (mean of the seeds)."""


def sizing(arms: dict) -> dict | None:
    """What the rl arm's evaluation would need to resolve the target gain (None without rl)."""
    start = arms.get("rl", {}).get("start")
    if not start or not 0 < start["wins"] < start["episodes"]:
        return None
    rate = start["wins"] / start["episodes"]
    return {"start_rate": rate, "gain_points": TARGET_GAIN_POINTS, "power": 0.8,
            "episodes_per_side": episodes_for_power(rate, TARGET_GAIN_POINTS),
            "episodes_per_side_now": start["episodes"]}


def claims(arms: dict) -> dict:
    """The two headline checks, where their arms ran: rl gain >= 15 points; more_data below rl."""
    claims = {}
    if "gain_points" in arms.get("rl", {}):
        claims["rl_gain_at_least_15_points"] = arms["rl"]["gain_points"]["mean"] >= TARGET_GAIN_POINTS
    if "end_minus_rl_end_points" in arms.get("more_data", {}):
        claims["more_data_below_rl"] = arms["more_data"]["end_minus_rl_end_points"]["mean"] < 0.0
    return claims
