"""tools/experiments/headline_records.py: committed LIBERO records, the summary made of them, bad files."""
import json
import shutil
from pathlib import Path

import pytest

from file_modules import load_file_module

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "results" / "headline" / "records.json"
RUNS = ROOT / "docs" / "results" / "headline" / "kept_runs"


@pytest.fixture(scope="module")
def records_tool():
    return load_file_module("tools/experiments/headline_records.py", "headline_records")


def test_committed_records_give_the_figures_the_readme_quotes(records_tool):
    # The README's Status table and docs/rl.md quote these; a changed record or statistic shows here.
    records = records_tool.load_records(RECORDS)
    sampled = records_tool.summarize(records, "sampled T=0.5")
    rl, more_data, no_prm = (sampled["arms"][arm] for arm in ("rl", "more_data", "no_prm"))
    assert rl["seeds"] == [0, 1, 2] and (rl["start"]["wins"], rl["end"]["wins"]) == (29, 31)
    assert rl["gain_points"]["mean"] == pytest.approx(2.22, abs=0.01)
    assert rl["gain_points"]["ci95_t"] == pytest.approx([-29.1, 33.6], abs=0.05)
    assert more_data["gain_points"]["mean"] == pytest.approx(18.89, abs=0.01)
    assert more_data["gain_points"]["ci95_t"] == pytest.approx([9.3, 28.5], abs=0.05)
    assert more_data["end"]["wins"] == 46
    assert more_data["end_minus_rl_end_points"]["fisher_p_pooled"] == pytest.approx(0.035, abs=5e-4)
    assert no_prm["end"]["wins"] == 28 and no_prm["gain_points"]["mean"] == pytest.approx(-1.11, abs=0.01)
    assert no_prm["end_minus_rl_end_points"]["fisher_p_pooled"] == pytest.approx(0.75, abs=5e-3)
    no_curriculum = sampled["arms"]["no_curriculum"]
    assert no_curriculum["seeds"] == [0, 1, 2] and no_curriculum["end"]["wins"] == 25
    assert no_curriculum["end_minus_rl_end_points"]["fisher_p_pooled"] == pytest.approx(0.42, abs=5e-3)
    no_warmup = sampled["arms"]["no_warmup"]
    assert no_warmup["seeds"] == [0, 1] and (no_warmup["start"]["wins"], no_warmup["end"]["wins"]) == (20, 13)
    assert no_warmup["end_minus_rl_end_points"]["fisher_p_pooled"] == pytest.approx(0.16, abs=5e-3)
    assert sampled["claims"] == {"rl_gain_at_least_15_points": False, "more_data_below_rl": False}
    assert sampled["sizing"]["episodes_per_side"] == 166 and sampled["sizing"]["episodes_per_side_now"] == 90
    greedy = records_tool.summarize(records, "greedy")
    assert greedy["arms"]["rl"]["gain_points"]["ci95_t"] == pytest.approx([-11.1, 42.2], abs=0.05)
    assert "more_data" not in greedy["arms"] and "more_data seed 0" in greedy["left_out"]
    assert "| rl | 12 -> 11 of 30 | 0 -> 1 of 30 | 17 -> 19 of 30 |" in sampled["per_task_md"]


def test_collect_reads_a_real_run_folder_and_replaces_its_record(records_tool, tmp_path):
    # The committed no_prm seed 2 folder is rl_headline.py's own output of the twelfth LIBERO run.
    records = {"records": []}
    collected = records_tool.collect(records, RUNS)
    assert ("no_prm", 2) in collected and len(records["records"]) == len(collected)
    (record,) = [r for r in records["records"] if (r["arm"], r["seed"]) == ("no_prm", 2)]
    result = json.loads((RUNS / "no_prm" / "seed2" / "arm_result.json").read_text())
    assert record["start"]["wins"] == result["start"]["wins"] == 11
    assert record["end"] == {"wins": 7, "episodes": 30, "per_task": {"1": 3, "5": 0, "6": 4}}
    assert record["env_steps"] == 54972 and record["iterations"] == 34
    records_tool.collect(records, RUNS)  # again: replaced, not duplicated
    assert len(records["records"]) == len(collected)

    # The command line: collect into a copy of the committed records, write both summaries.
    copy = tmp_path / "records.json"
    shutil.copy(RECORDS, copy)
    before = json.loads(copy.read_text())["records"]
    summary = records_tool.main([str(copy), "--collect", str(RUNS)])
    after = json.loads(copy.read_text())["records"]
    assert len(after) == len(before) and summary["records"] == len(before)
    # The seed's result and metrics are kept beside the records, and its record names the copy.
    kept = tmp_path / "kept_runs" / "no_prm" / "seed2"
    original = RUNS / "no_prm" / "seed2" / "arm_result.json"
    assert (kept / "arm_result.json").read_bytes() == original.read_bytes()
    assert (kept / "train" / "metrics.jsonl").is_file()
    for old, new in zip(before, after):  # same order, same measurements; collected ones name the copy
        arm, seed = new["arm"], new["seed"]
        assert (old["arm"], old["seed"]) == (arm, seed) and {**old, "source": ""} == {**new, "source": ""}
        copied = tmp_path / "kept_runs" / arm / f"seed{seed}"
        assert new["source"] == (f"collected from {copied}" if (arm, seed) in collected else old["source"])
    records_tool.main([str(copy), "--protocol", "greedy"])
    for stem in ("summary_sampled", "summary_greedy"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 1000
        assert "| rl | 0,1,2 |" in (tmp_path / f"{stem}.md").read_text()
    with pytest.raises(SystemExit, match="no finished seed"):
        records_tool.main([str(copy), "--collect", str(tmp_path / "empty")])


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["records"].append(dict(d["records"][0])), "second record"),
    (lambda d: d["records"][0]["end"].update(wins=31), "wins <= episodes"),
    (lambda d: d["records"][0]["end"]["per_task"].update({"1": 9}), "do not add up"),
    (lambda d: d["records"][0].update(arm="bogus"), "arm must be one of"),
    (lambda d: d["records"][0]["judged"]["greedy"].pop("end"), "wins <= episodes"),
    (lambda d: d.pop("records"), "'records' list"),
])
def test_bad_records_are_refused_with_the_record_named(records_tool, tmp_path, damage, message):
    data = json.loads(RECORDS.read_text())
    damage(data)
    path = tmp_path / "records.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        records_tool.load_records(path)


def test_episodes_for_power():
    from vla_rl_ros.core.rl.headline_summary import episodes_for_power
    # 50 % -> 60 %: mean 0.55; (1.96 sqrt(2 x 0.55 x 0.45) + 0.8416 sqrt(0.25 + 0.24))^2 / 0.1^2 = 387.3.
    assert episodes_for_power(0.5, 10) == 388
    assert episodes_for_power(29 / 90, 15) == 166  # the headline's start; its seeds have 90 a side
    assert episodes_for_power(29 / 90, 15, power=0.9) > 166 > episodes_for_power(29 / 90, 20)
    with pytest.raises(ValueError, match="rate"):
        episodes_for_power(0.9, 15)


def test_t_interval():
    from vla_rl_ros.core.rl.headline_summary import t_interval
    assert t_interval([1.0]) is None
    low, high = t_interval([10.0, 20.0, 30.0])  # mean 20, sd 10, t(2) = 4.303
    assert (low, high) == pytest.approx((20 - 4.303 * 10 / 3 ** 0.5, 20 + 4.303 * 10 / 3 ** 0.5))


def test_unreadable_file_and_unknown_protocol(records_tool, tmp_path):
    path = tmp_path / "records.json"
    path.write_text('{"records": [')
    with pytest.raises(ValueError, match="not a readable records file"):
        records_tool.load_records(path)
    with pytest.raises(ValueError, match="no record was evaluated"):
        records_tool.summarize(records_tool.load_records(RECORDS), "sampled T=1.5")
