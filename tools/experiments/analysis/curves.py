"""Learning curves of a headline's RL arms, read from each seed's ``train/metrics.jsonl``.

The headline evaluates held out only at the start and at the end (a 150-episode evaluation costs
about 5 min of a 15-30 min budget), so the per-iteration signal is the training rollouts' success:
on training contexts, sampled, drawn by the curriculum, so it is not the held-out figure. The plot
puts both on one axis of env steps: rollout success per iteration, the held-out start and end.
"""
from __future__ import annotations

import json
from pathlib import Path


def rollout_curves(out: Path, arms: list[str]) -> dict[str, dict[str, dict]]:
    """``{arm: {"seed<k>": {iteration, env_steps, rollout_success, groups_kept}}}``."""
    curves: dict[str, dict[str, dict]] = {}
    for arm in arms:
        for metrics in sorted((out / arm).glob("seed*/train/metrics.jsonl")):
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            rows = [r for r in rows if "rollout/success_rate" in r]  # evaluation rows have no rollout
            curves.setdefault(arm, {})[metrics.parent.parent.name] = {
                "iteration": [r["iteration"] for r in rows],
                "env_steps": [r["rollout/env_steps"] for r in rows],  # the run's total so far
                "rollout_success": [r["rollout/success_rate"] for r in rows],
                "groups_kept": [r.get("rollout/groups_kept") for r in rows]}
    return curves


def plot_curves(curves: dict, runs: dict, path: Path) -> None:
    """One panel per arm: rollout success per iteration (lines) and held-out start/end (dots) per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = [a for a in curves if curves[a]]
    if not arms:
        return
    fig, axes = plt.subplots(1, len(arms), figsize=(5 * len(arms), 3.8), sharey=True, squeeze=False)
    for ax, arm in zip(axes[0], arms):
        held_out = {f"seed{r['seed']}": r for r in runs.get(arm, [])}
        for index, (seed, curve) in enumerate(sorted(curves[arm].items())):
            color = f"C{index}"
            ax.plot(curve["env_steps"], curve["rollout_success"], color=color, alpha=0.5,
                    label=f"{seed} rollouts")
            result = held_out.get(seed)
            if result and curve["env_steps"]:
                ends = [result["start"]["wins"] / result["start"]["episodes"],
                        result["end"]["wins"] / result["end"]["episodes"]]
                ax.plot([0, curve["env_steps"][-1]], ends, "o--", color=color, label=f"{seed} held out")
        ax.set_title(arm)
        ax.set_xlabel("env steps")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("success rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
