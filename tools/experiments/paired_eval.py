"""Did a change move an evaluation? Two ``vla-rl eval`` outputs compared episode by episode.

Both must have run the same episodes (task, init state or layout, seed), as greedy evaluations of
one policy before and after a change to the environment or the decoding do. Counts of unchanged,
gained and lost episodes, and the exact two-sided sign test on the discordant ones, go to a JSON.
Usage: paired_eval.py BEFORE.json AFTER.json --out RESULT.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for vla_rl_ros
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/experiments, for analysis
from analysis.stats import sign_test_p  # noqa: E402
from vla_rl_ros.core.rl.results import write_json_atomic  # noqa: E402


def outcomes(path: Path) -> dict[tuple[int, int, int], bool]:
    """Success of every episode of an evaluation, keyed by (task, init state id, seed)."""
    episodes = json.loads(path.read_text()).get("episodes") or []
    if not episodes:
        raise SystemExit(f"paired_eval: {path} lists no episodes (run vla-rl eval with this version)")
    return {(int(e["task_id"]), int(e["init_state_id"]), int(e.get("seed", 0))): bool(e["success"])
            for e in episodes}


def compare(before: dict, after: dict) -> dict:
    """Paired counts and the exact sign test; the two must hold the same episodes."""
    if set(before) != set(after):
        missing = sorted(set(before) ^ set(after))[:5]
        raise SystemExit(f"paired_eval: the evaluations ran different episodes (e.g. {missing})")
    gained = sum(after[k] and not before[k] for k in before)
    lost = sum(before[k] and not after[k] for k in before)
    return {"episodes": len(before), "successes_before": sum(before.values()),
            "successes_after": sum(after.values()), "unchanged": len(before) - gained - lost,
            "gained": gained, "lost": lost, "sign_test_p": round(sign_test_p(gained, lost), 4)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = {"before": str(args.before), "after": str(args.after),
              **compare(outcomes(args.before), outcomes(args.after))}
    write_json_atomic(args.out, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
