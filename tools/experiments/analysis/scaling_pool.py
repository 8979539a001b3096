"""Pool inference-scaling curves (``vla-rl eval --scaling``) measured under different seeds into one.

A LIBERO curve costs about 45 min per 15 episodes per N on a CPU, so its points are measured
in pieces (one seed per run, or per machine) and pooled. Pooling is only sound when the pieces
differ in nothing but their episodes: the same policy, adapters, scorer, PRM, temperature,
tasks and N, finished, and disjoint seeds (a shared seed would count the same episodes twice).
"""
from __future__ import annotations

from typing import Sequence

from vla_rl_ros.core.evaluation import success_counts

# What every piece must share for the pooled curve to describe one setting.
MUST_MATCH = ("backend", "suite", "task_ids", "best_of", "policy", "adapters", "scorer", "prm", "temperature")


def pool_curves(curves: Sequence[dict]) -> dict:
    """One curve whose ``per_n`` counts every piece's episodes; raises ValueError on a mismatch."""
    if len(curves) < 2:
        raise ValueError(f"pooling needs at least 2 curves, got {len(curves)}")
    first = curves[0]
    for index, curve in enumerate(curves):
        if curve.get("pending"):
            raise ValueError(f"curve {index} is unfinished: N {curve['pending']} pending")
        for key in MUST_MATCH:
            if curve.get(key) != first.get(key):
                raise ValueError(f"curve {index} differs in {key}: {curve.get(key)!r} vs {first.get(key)!r}")
    seeds = [seed for curve in curves for seed in curve["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds overlap across curves ({seeds}): the same episodes would count twice")
    # A curve in memory keys per_n by int, one read back from JSON by str.
    points = [{str(n): point for n, point in curve["per_n"].items()} for curve in curves]
    per_n = {str(n): _pool_point([piece[str(n)] for piece in points]) for n in first["best_of"]}
    return dict({key: first.get(key) for key in MUST_MATCH}, seeds=seeds, pooled_from=len(curves),
                per_n=per_n, pending=[])


def _pool_point(points: list[dict]) -> dict:
    tasks = points[0]["per_task"]
    pooled = _counts(points)
    pooled["per_task"] = {task: _counts([point["per_task"][task] for point in points]) for task in tasks}
    wall_s = sum(point["wall_s"] for point in points)
    steps = sum(point["env_steps_per_s"] * point["wall_s"] for point in points)
    pooled.update(wall_s=round(wall_s, 1), env_steps_per_s=round(steps / max(wall_s, 1e-9), 2))
    return pooled


def _counts(points: list[dict]) -> dict:
    return success_counts(sum(point["successes"] for point in points),
                          sum(point["episodes"] for point in points),
                          sum(point.get("aborted", 0) for point in points))
