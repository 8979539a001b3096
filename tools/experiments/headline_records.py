"""Every finished seed of the headline experiment in one committed file, and the summary made from it.

``rl_headline.py`` keeps each arm's seed in a run folder (``<out>/<arm>/seed<k>``) on the machine
that ran it, and machines are not kept, so the figures in docs/results/headline/README.md would
otherwise rest on prose.
This tool keeps them as data (``docs/results/headline/records.json``):

- ``--collect OUT`` adds the finished seeds under an ``rl_headline.py`` output folder to the
  records (replacing a record of the same arm and seed), with per-task held-out wins from the
  run's metrics, and copies each seed's result and metrics to ``kept_runs/`` beside the records;
- then it writes the summary of every record for one held-out protocol (``summary_<protocol>``
  ``.json``, ``.md`` and ``.png`` in ``--out``, e.g. ``summary_sampled.md``) with
  ``rl_headline.py``'s own statistics: mean gain with a t interval over seeds, pooled Wilson
  intervals, each arm against ``rl`` on the same seeds (paired t interval and Fisher's exact
  test of the pooled ends), and the issue's two claims.

Records hold counts only (wins and episodes); rates and gains are derived here, so they cannot
disagree with the counts. A seed evaluated again under another protocol keeps those counts under
``judged`` (as ``arm_result.json`` does), and ``--protocol`` picks which one the summary reports::

    .venv/bin/python tools/experiments/headline_records.py docs/results/headline/records.json \\
        --collect runs/experiments/headline --protocol "sampled T=0.5" --out docs/results/headline
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

# The repository root (for vla_rl_ros) and this folder (for analysis), whoever runs or loads the script.
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from vla_rl_ros.core.evaluation import wilson_interval  # noqa: E402
from analysis import headline  # noqa: E402
from vla_rl_ros.core.rl.results import write_json_atomic  # noqa: E402


# ---------------------------------------------------------------------------------------- records
def _check_counts(where: str, counts: dict) -> None:
    wins, episodes = counts.get("wins"), counts.get("episodes")
    if not (isinstance(wins, int) and isinstance(episodes, int) and 0 <= wins <= episodes and episodes > 0):
        raise ValueError(f"{where}: need integer 0 <= wins <= episodes, episodes > 0; got {counts}")
    per_task = counts.get("per_task", {})
    if per_task and sum(per_task.values()) != wins:
        raise ValueError(f"{where}: per-task wins {per_task} do not add up to {wins}")


def load_records(path: str | Path) -> dict:
    """The records file, checked (:func:`check_records`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable records file ({error})") from error
    check_records(data, path)
    return data


def check_records(data: Any, path: Path) -> None:
    """Known arms, one record per arm and seed, consistent counts; else ValueError naming the record."""
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ValueError(f"{path}: expected an object with a 'records' list")
    seen = set()
    for index, record in enumerate(data["records"]):
        where = f"{path} record {index} ({record.get('arm')} seed {record.get('seed')})"
        if record.get("arm") not in headline.ARMS or not isinstance(record.get("seed"), int):
            raise ValueError(f"{where}: arm must be one of {headline.ARMS} and seed an integer")
        if (record["arm"], record["seed"]) in seen:
            raise ValueError(f"{where}: a second record of the same arm and seed")
        seen.add((record["arm"], record["seed"]))
        if not isinstance(record.get("protocol"), str) or not isinstance(record.get("env_steps"), int):
            raise ValueError(f"{where}: needs a protocol (string) and env_steps (integer)")
        for protocol, counts in [(record["protocol"], record)] + list(record.get("judged", {}).items()):
            for key in ("start", "end"):
                _check_counts(f"{where} {protocol} {key}", counts.get(key, {}))


def as_result(record: dict, protocol: str) -> dict | None:
    """A record in ``arm_result.json``'s shape as judged by ``protocol`` (None: never evaluated so)."""
    if protocol == record["protocol"]:
        counts = record
    elif protocol in record.get("judged", {}):
        counts = record["judged"][protocol]
    else:
        return None

    def held_out(key: str) -> dict:
        wins, episodes = counts[key]["wins"], counts[key]["episodes"]
        return {"rate": wins / episodes, "wins": wins, "episodes": episodes,
                "ci95": list(wilson_interval(wins, episodes)), "per_task": counts[key].get("per_task", {})}
    start, end = held_out("start"), held_out("end")
    return {"arm": record["arm"], "seed": record["seed"], "protocol": protocol, "start": start, "end": end,
            "gain_points": 100.0 * (end["rate"] - start["rate"]), "env_steps": record["env_steps"],
            "wall_s": record.get("wall_s"), "iterations": record.get("iterations")}


# ---------------------------------------------------------------------------------------- collect
def _per_task_wins(evaluation: dict, episodes: int) -> dict:
    rates = {k.rsplit("_", 1)[1]: v for k, v in evaluation.items() if k.startswith("eval/success_task_")}
    # Held-out episodes go round-robin over the tasks, so each task has the same share.
    share = episodes / len(rates) if rates else 0
    return {task: round(rate * share) for task, rate in sorted(rates.items())}


def _evaluations(metrics: Path) -> list[dict]:
    if not metrics.is_file():
        return []
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [line for line in lines if "eval/success_rate" in line]


def _counts(held_out: dict, evaluation: dict | None) -> dict:
    counts = {"wins": int(held_out["wins"]), "episodes": int(held_out["episodes"])}
    # Per-task wins only from the evaluation these counts came from (a re-judged seed has others).
    if evaluation is not None and round(evaluation["eval/success_rate"] * counts["episodes"]) \
            == counts["wins"]:
        counts["per_task"] = _per_task_wins(evaluation, counts["episodes"])
    return counts


def record_from_run(folder: Path) -> dict:
    """One finished seed (``<out>/<arm>/seed<k>``) as a record: counts, per-task wins, costs."""
    result = json.loads((folder / headline.RESULT_FILE).read_text())
    # An RL arm's evaluations are in its training log; more_data's single one is in its eval run.
    evaluations = (_evaluations(folder / "train" / "metrics.jsonl")
                   or _evaluations(folder / "eval" / "metrics.jsonl"))
    first = evaluations[0] if len(evaluations) > 1 else None  # more_data's start is the rl arm's
    last = evaluations[-1] if evaluations else None
    record = {"arm": result["arm"], "seed": result["seed"], "protocol": result["protocol"],
              "start": _counts(result["start"], first), "end": _counts(result["end"], last),
              "env_steps": int(result["env_steps"]), "iterations": result.get("iterations"),
              "wall_s": result.get("wall_s"), "source": f"collected from {folder}"}
    judged = {protocol: {key: _counts(entry[key], None) for key in ("start", "end")}
              for protocol, entry in result.get("judged", {}).items()}
    if judged:
        record["judged"] = judged
    return {k: v for k, v in record.items() if v is not None}


KEPT_FILES = (headline.RESULT_FILE, "train/metrics.jsonl", "eval/metrics.jsonl")
"""What of a run folder is kept beside the records: its result and its evaluations (a few kB)."""


def keep_run(folder: Path, kept: Path) -> Path:
    """Copy a run folder's result and metrics to ``kept/<arm>/seed<k>`` (the committed evidence)."""
    target = kept / folder.parent.name / folder.name
    if target.resolve() != folder.resolve():
        for name in KEPT_FILES:
            if (folder / name).is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / name, target / name)
    return target


def collect(records: dict, out: Path, kept: Path | None = None) -> list[tuple[str, int]]:
    """Add every finished seed under ``out`` to ``records`` (same arm and seed: replaced).

    With ``kept``, each seed's result and metrics are first copied there, and the record is read
    from (and names) the copy, so the records never point at a folder that will not be kept.
    """
    added = []
    for result_file in sorted(out.glob(f"*/seed*/{headline.RESULT_FILE}")):
        folder = result_file.parent if kept is None else keep_run(result_file.parent, kept)
        record = record_from_run(folder)
        records["records"] = [r for r in records["records"]
                              if (r["arm"], r["seed"]) != (record["arm"], record["seed"])] + [record]
        added.append((record["arm"], record["seed"]))
    records["records"].sort(key=lambda r: (headline.ARMS.index(r["arm"]), r["seed"]))
    return added


# ---------------------------------------------------------------------------------------- summary
def per_task_table(per_arm: dict[str, list[dict]], tasks: dict[str, str]) -> str:
    """Held-out wins per task, pooled over each arm's seeds, start -> end."""
    lines = ["| arm | " + " | ".join(tasks.get(t, f"task {t}") for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for arm, results in per_arm.items():
        cells = []
        for task in tasks:
            if not all(task in r["start"]["per_task"] and task in r["end"]["per_task"] for r in results):
                cells.append("n/a")
                continue
            start = sum(r["start"]["per_task"][task] for r in results)
            end = sum(r["end"]["per_task"][task] for r in results)
            cells.append(f"{start} -> {end} of {sum(r['start']['episodes'] for r in results) // len(tasks)}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summarize(records: dict, protocol: str) -> dict:
    """The summary of every record judged by ``protocol``, in ``rl_headline.py``'s shape."""
    judged = [(record, as_result(record, protocol)) for record in records["records"]]
    results = [result for _, result in judged if result is not None]
    per_arm = {arm: [r for r in results if r["arm"] == arm] for arm in headline.ARMS}
    per_arm = {arm: runs for arm, runs in per_arm.items() if runs}
    if not per_arm:
        raise ValueError(f"no record was evaluated {protocol!r}")
    summary = {"hours": records.get("hours"), "seeds": sorted({r["seed"] for r in results}),
               "judge": protocol, "records": len(results),
               "left_out": [f"{record['arm']} seed {record['seed']}" for record, result in judged
                            if result is None],
               **headline.summarize_arms(per_arm, per_arm.get("rl", []))}
    summary["per_task_md"] = per_task_table(per_arm, records.get("tasks", {}))
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Collect (optionally), then write and return the summary of the records."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", help="records file (JSON); created by --collect if missing")
    parser.add_argument("--collect", metavar="OUT", help="an rl_headline.py output folder to add first")
    parser.add_argument("--protocol", default="sampled T=0.5",
                        help="held-out protocol to report: 'greedy' or 'sampled T=<temperature>'")
    parser.add_argument("--out", default=None, help="summary folder (default: beside the records file)")
    args = parser.parse_args(argv)
    path = Path(args.records)
    records = load_records(path) if path.exists() or not args.collect else {"records": []}
    if args.collect:
        added = collect(records, Path(args.collect), kept=path.parent / "kept_runs")
        if not added:
            raise SystemExit(f"headline_records: no finished seed ({headline.RESULT_FILE}) "
                             f"under {args.collect}")
        check_records(records, path)  # before it replaces the file: a bad collect loses nothing
        write_json_atomic(path, records)
        print(f"[headline_records] collected {added}", file=sys.stderr)
    summary = summarize(records, args.protocol)
    out = Path(args.out) if args.out else path.parent
    out.mkdir(parents=True, exist_ok=True)
    # One set of files per protocol, so the greedy and sampled summaries sit side by side.
    stem = "summary_" + args.protocol.split()[0]
    per_task = "\nHeld-out wins per task, pooled over seeds (start -> end):\n\n" + summary["per_task_md"]
    headline.write_summary(out, summary, stem, per_task)
    return summary


if __name__ == "__main__":
    main()
