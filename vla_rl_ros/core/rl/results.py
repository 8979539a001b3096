"""The results folder of a training run: plots (matplotlib, Agg) and a JSON summary."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The evaluation's 95 % Wilson interval, but NaN without trials: a training log shows a gap there."""
    from vla_rl_ros.core.evaluation import wilson_interval as interval  # lazy: numpy only when needed
    if trials == 0:
        return (float("nan"), float("nan"))
    return interval(successes, trials, z)


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON to a temporary file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def write_results(output_dir: str | Path, history: Sequence[dict[str, Any]], evals: Sequence[dict[str, Any]],
                  summary: dict[str, Any]) -> Path:
    """``results/summary.json`` and three plots: success vs iteration, vs env steps, per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(output_dir) / "results"
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "summary.json", summary)
    iters = [h["iteration"] for h in history]
    steps = [h["rollout/env_steps"] for h in history]
    train_success = [h.get("rollout/success_rate", float("nan")) for h in history]
    for x_key, xs, eval_x, name in (("iteration", iters, "iteration", "success_vs_iteration.png"),
                                    ("env steps", steps, "env_steps", "success_vs_env_steps.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, train_success, label="training rollouts", alpha=0.6)
        if evals:
            ex = [e[eval_x] for e in evals]
            ey = [e["eval/success_rate"] for e in evals]
            low = [e["eval/ci_low"] for e in evals]
            high = [e["eval/ci_high"] for e in evals]
            ax.plot(ex, ey, "o-", label="held-out eval")
            ax.fill_between(ex, low, high, alpha=0.2)
        ax.set_xlabel(x_key)
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
    if evals:
        last = evals[-1]
        tasks = sorted(int(k.rsplit("_", 1)[1]) for k in last if k.startswith("eval/success_task_"))
        fig, ax = plt.subplots(figsize=(6, 4))
        first = evals[0]
        ax.bar([i - 0.2 for i in range(len(tasks))], [first[f"eval/success_task_{t}"] for t in tasks], 0.4,
               label=f"iteration {first['iteration']}")
        ax.bar([i + 0.2 for i in range(len(tasks))], [last[f"eval/success_task_{t}"] for t in tasks], 0.4,
               label=f"iteration {last['iteration']}")
        ax.set_xticks(range(len(tasks)), [str(t) for t in tasks])
        ax.set_xlabel("task")
        ax.set_ylabel("held-out success rate")
        ax.set_ylim(0, 1.02)
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "per_task_success.png", dpi=100)
        plt.close(fig)
    return folder
