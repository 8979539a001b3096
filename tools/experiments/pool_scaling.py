"""Experiment tool: pool `vla-rl eval --scaling` curves measured under different seeds.

Each curve is one ``scaling.json``; the pooled JSON and its plot go to ``--out``::

    .venv/bin/python tools/experiments/pool_scaling.py --out runs/experiments/scaling_pooled \\
        runs/experiments/scaling_shipped_t05/scaling.json \\
        runs/experiments/scaling_shipped_t05_seed1/scaling.json

Curves that differ in policy, scorer, temperature, tasks or N, that are unfinished, or that
share a seed are refused (exit 2) rather than pooled.
"""
import argparse
import json
import sys
from pathlib import Path

# The repository root (for vla_rl_ros) and this folder (for analysis), whoever runs or loads the script.
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from analysis.scaling_pool import pool_curves  # noqa: E402
from vla_rl_ros.core.rl.results import write_json_atomic  # noqa: E402
from vla_rl_ros.core.rl.best_of_n import plot_success_vs_n  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Pool, write ``scaling.json`` and ``scaling.png`` under ``--out`` and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curves", nargs="+", help="scaling.json files, one per seed")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        curves = [json.loads(Path(path).read_text()) for path in args.curves]
        pooled = pool_curves(curves)
    except (OSError, ValueError, KeyError) as err:  # JSONDecodeError is a ValueError
        print(f"pool_scaling: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pooled["sources"] = list(args.curves)
    suite = pooled["suite"] or pooled["backend"]
    title = f"{suite} tasks {pooled['task_ids']}: best-of-N, seeds {pooled['seeds']}"
    pooled["plot"] = str(plot_success_vs_n({int(n): p for n, p in pooled["per_n"].items()},
                                           out / "scaling.png", title))
    write_json_atomic(out / "scaling.json", pooled)
    for n, point in pooled["per_n"].items():
        low, high = point["ci95"]
        print(f"N={n:>3}: {point['successes']}/{point['episodes']} = {100 * point['success_rate']:.1f} % "
              f"[{100 * low:.0f}, {100 * high:.0f}], {point['env_steps_per_s']} env steps/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
