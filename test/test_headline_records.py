"""tools/experiments/headline_records.py on small records written here, with figures worked out by hand.

The committed records (docs/results/headline/records.json) are only checked to be readable: a new
lab run changes their figures, never this test.
"""
import json
from pathlib import Path

import pytest

from file_modules import load_file_module

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "results" / "headline" / "records.json"
SAMPLED = "sampled T=0.5"


def counts(wins, per_task, episodes=10):
    return {"wins": wins, "episodes": episodes, "per_task": per_task}


def record(arm, seed, start, end, env_steps, judged=None):
    entry = {"arm": arm, "seed": seed, "protocol": SAMPLED, "start": start, "end": end,
             "env_steps": env_steps, "wall_s": 3600, "source": "written by the test"}
    return dict(entry, judged=judged) if judged else entry


def fixture_records():
    """Two tasks, 5 episodes each: rl and no_prm on seeds 0 and 1 (rl re-judged greedy), more_data on 0."""
    return {"hours": 1.0, "tasks": {"1": "bowl", "5": "plate"}, "records": [
        record("rl", 0, counts(3, {"1": 2, "5": 1}), counts(6, {"1": 4, "5": 2}), 1000,
               {"greedy": {"start": counts(2, {}), "end": counts(5, {})}}),
        record("rl", 1, counts(4, {"1": 3, "5": 1}), counts(5, {"1": 3, "5": 2}), 1200,
               {"greedy": {"start": counts(4, {}), "end": counts(4, {})}}),
        record("no_prm", 0, counts(3, {"1": 2, "5": 1}), counts(2, {"1": 1, "5": 1}), 900),
        record("no_prm", 1, counts(4, {"1": 3, "5": 1}), counts(3, {"1": 2, "5": 1}), 1100),
        record("more_data", 0, counts(3, {"1": 2, "5": 1}), counts(9, {"1": 5, "5": 4}), 500),
    ]}


@pytest.fixture(scope="module")
def tool():
    return load_file_module("tools/experiments/headline_records.py", "headline_records")


@pytest.fixture
def records_file(tmp_path):
    path = tmp_path / "records.json"
    path.write_text(json.dumps(fixture_records()))
    return path


def test_summary_of_fixed_records(tool, records_file):
    summary = tool.summarize(tool.load_records(records_file), SAMPLED)
    assert list(summary["arms"]) == ["rl", "no_prm", "more_data"] and summary["seeds"] == [0, 1]
    rl = summary["arms"]["rl"]
    assert (rl["start"]["wins"], rl["start"]["episodes"], rl["end"]["wins"]) == (7, 20, 11)
    assert rl["start"]["per_seed"] == [0.3, 0.4] and rl["end"]["mean"] == pytest.approx(0.55)
    # Gains 30 and 10 points: mean 20, standard error 10, t(0.975, 1 df) = 12.706.
    assert rl["gain_points"]["per_seed"] == pytest.approx([30, 10])
    assert rl["gain_points"]["ci95_t"] == pytest.approx([20 - 127.06, 20 + 127.06], abs=0.01)
    assert "end_minus_rl_end_points" not in rl
    versus = summary["arms"]["no_prm"]["end_minus_rl_end_points"]
    assert versus["per_seed"] == pytest.approx([-40, -20]) and versus["seeds"] == [0, 1]
    # Pooled ends 5/20 against 11/20 (R: fisher.test(matrix(c(5, 15, 11, 9), 2))).
    assert versus["fisher_p_pooled"] == pytest.approx(0.1053, abs=1e-4)
    more_data = summary["arms"]["more_data"]["end_minus_rl_end_points"]
    assert more_data["per_seed"] == pytest.approx([30]) and more_data["ci95_t"] is None
    assert summary["claims"] == {"rl_gain_at_least_15_points": True, "more_data_below_rl": False}
    # From rl's pooled start 7/20 = 35 % to 50 % at 80 % power: 169.3 -> 170 episodes a side.
    assert (summary["sizing"]["episodes_per_side"], summary["sizing"]["episodes_per_side_now"]) == (170, 20)
    assert "| rl | 5 -> 7 of 10 | 2 -> 4 of 10 |" in summary["per_task_md"]
    assert "| more_data | 2 -> 5 of 5 | 1 -> 4 of 5 |" in summary["per_task_md"]


def test_another_protocol_reports_only_the_seeds_judged_so(tool, records_file):
    greedy = tool.summarize(tool.load_records(records_file), "greedy")
    assert list(greedy["arms"]) == ["rl"] and greedy["records"] == 2
    assert greedy["arms"]["rl"]["gain_points"]["per_seed"] == pytest.approx([30, 0])
    assert greedy["arms"]["rl"]["protocol"] == "greedy"
    assert greedy["left_out"] == ["no_prm seed 0", "no_prm seed 1", "more_data seed 0"]
    with pytest.raises(ValueError, match="no record was evaluated"):
        tool.summarize(tool.load_records(records_file), "sampled T=1.5")


def write_run(folder: Path, arm: str, seed: int, start: int, end: int) -> None:
    """One finished seed as rl_headline.py leaves it: arm_result.json and two held-out evaluations."""
    def held_out(wins):
        return {"rate": wins / 10, "wins": wins, "episodes": 10, "ci95": [0.0, 1.0]}
    result = {"arm": arm, "seed": seed, "protocol": SAMPLED, "start": held_out(start), "end": held_out(end),
              "gain_points": 10.0 * (end - start), "env_steps": 800, "wall_s": 120.5,
              "output_dir": str(folder / "train"), "iterations": 4}
    (folder / "train").mkdir(parents=True)
    (folder / "arm_result.json").write_text(json.dumps(result))
    # 5 episodes per task; task 1 wins all of start's first wins, task 5 the rest.
    lines = [{"iteration": i, "eval/success_rate": wins / 10, "eval/episodes": 10,
              "eval/success_task_1": min(wins, 5) / 5, "eval/success_task_5": max(wins - 5, 0) / 5}
             for i, wins in ((0, start), (4, end))]
    (folder / "train" / "metrics.jsonl").write_text(
        "\n".join(json.dumps(line) for line in [{"iteration": 0, "ppo/loss": 1.0}] + lines) + "\n")


def test_collect_adds_a_run_folder_once_and_keeps_its_files(tool, records_file, tmp_path):
    out = tmp_path / "runs"
    write_run(out / "no_warmup" / "seed1", "no_warmup", 1, start=4, end=7)
    records = tool.load_records(records_file)
    assert tool.collect(records, out, kept=tmp_path / "kept_runs") == [("no_warmup", 1)]
    assert tool.collect(records, out, kept=tmp_path / "kept_runs") == [("no_warmup", 1)]  # replaced
    added = [r for r in records["records"] if r["arm"] == "no_warmup"]
    assert len(added) == 1 and len(records["records"]) == 6
    assert added[0]["start"] == counts(4, {"1": 4, "5": 0})
    assert added[0]["end"] == counts(7, {"1": 5, "5": 2})
    assert (added[0]["env_steps"], added[0]["iterations"], added[0]["wall_s"]) == (800, 4, 120.5)
    kept = tmp_path / "kept_runs" / "no_warmup" / "seed1"
    assert added[0]["source"] == f"collected from {kept}"
    original = out / "no_warmup" / "seed1" / "arm_result.json"
    assert (kept / "arm_result.json").read_bytes() == original.read_bytes()
    assert (kept / "train" / "metrics.jsonl").is_file()
    order = ["rl", "rl", "no_prm", "no_prm", "no_warmup", "more_data"]  # the table's order, seeds rising
    assert [r["arm"] for r in records["records"]] == order


def test_command_line_collects_and_writes_one_summary_per_protocol(tool, records_file, tmp_path):
    out = tmp_path / "runs"
    write_run(out / "no_warmup" / "seed0", "no_warmup", 0, start=3, end=1)
    summary = tool.main([str(records_file), "--collect", str(out)])
    assert summary["records"] == 6 and "no_warmup" in summary["arms"]
    assert len(json.loads(records_file.read_text())["records"]) == 6
    tool.main([str(records_file), "--protocol", "greedy"])
    for stem, row in (("summary_sampled", "| no_warmup | 0 |"), ("summary_greedy", "| rl | 0,1 | greedy |")):
        assert row in (tmp_path / f"{stem}.md").read_text()
        assert (tmp_path / f"{stem}.png").stat().st_size > 1000
        assert json.loads((tmp_path / f"{stem}.json").read_text())["arms"]["rl"]["seeds"] == [0, 1]
    with pytest.raises(SystemExit, match="no finished seed"):
        tool.main([str(records_file), "--collect", str(tmp_path / "empty")])


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["records"].append(dict(d["records"][0])), "second record"),
    (lambda d: d["records"][0]["end"].update(wins=11), "wins <= episodes"),
    (lambda d: d["records"][0]["end"]["per_task"].update({"1": 9}), "do not add up"),
    (lambda d: d["records"][0].update(arm="bogus"), "arm must be one of"),
    (lambda d: d["records"][0]["judged"]["greedy"].pop("end"), "wins <= episodes"),
    (lambda d: d["records"][0].pop("env_steps"), "env_steps"),
    (lambda d: d.pop("records"), "'records' list"),
])
def test_bad_records_are_refused_with_the_record_named(tool, tmp_path, damage, message):
    data = fixture_records()
    damage(data)
    path = tmp_path / "records.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        tool.load_records(path)


def test_unreadable_file_is_refused(tool, tmp_path):
    path = tmp_path / "records.json"
    path.write_text('{"records": [')
    with pytest.raises(ValueError, match="not a readable records file"):
        tool.load_records(path)


def test_the_committed_records_are_valid_and_summarize(tool):
    records = tool.load_records(COMMITTED)  # figures not asserted: they change with every lab run
    for protocol in (SAMPLED, "greedy"):
        assert tool.summarize(records, protocol)["arms"]
