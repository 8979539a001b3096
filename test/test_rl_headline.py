"""tools/experiments/rl_headline.py on the toy backend: arms x seeds, summary numbers, resume, skips."""
import json
import shutil
from pathlib import Path

import pytest

from file_modules import experiments_module, load_file_module

fisher_exact_p = experiments_module("analysis.stats").fisher_exact_p
aggregate = experiments_module("analysis.headline").aggregate

ROOT = Path(__file__).resolve().parents[1]
TINY_TOY = ["env.backend=toy", "env.task_ids=[0,1]", "env.num_envs=2", "env.image_size=32",
            "env.max_episode_steps=4", "policy.size=tiny", "policy.image_size=32",
            "train.episodes_per_iter=2", "train.eval_episodes=2", "train.torch_threads=1",
            "ppo.minibatch_size=4", "ppo.critic_warmup_iters=1", "ppo.epochs=1", "train.iterations=2"]


@pytest.fixture(scope="module")
def headline():
    return load_file_module("tools/experiments/rl_headline.py", "rl_headline")


def arguments(out, arms="rl,no_curriculum"):
    # 2 s of budget per arm and seed: the time budget, not the iteration cap, usually ends a run.
    return ["--out", str(out), "--seeds", "0,1", "--arms", arms, "--hours", str(2 / 3600), "--no-progress",
            "--no-tensorboard", *sum([["--set", s] for s in TINY_TOY], [])]


def test_two_arms_two_seeds_summary_and_resume(tmp_path, headline, one_torch_thread):
    summary = headline.main(arguments(tmp_path))
    assert set(summary["arms"]) == {"rl", "no_curriculum"} and summary["seeds"] == [0, 1]
    for arm, entry in summary["arms"].items():
        runs = summary["runs"][arm]
        assert [r["seed"] for r in runs] == entry["seeds"] == [0, 1]
        for run in runs:
            assert run["gain_points"] == pytest.approx(100 * (run["end"]["rate"] - run["start"]["rate"]))
            assert run["start"]["episodes"] == run["end"]["episodes"] == 2
            assert 1 <= run["iterations"] <= 2 and run["env_steps"] > 0 and run["wall_s"] > 0
            assert run["ablations"]["curriculum"] is (arm == "rl")
            assert (tmp_path / arm / f"seed{run['seed']}" / "train" / "results" / "summary.json").is_file()
        gains = entry["gain_points"]
        assert gains["per_seed"] == [r["gain_points"] for r in runs]
        assert gains["mean"] == pytest.approx(sum(gains["per_seed"]) / 2)
        low, high = gains["ci95_t"]
        assert low <= gains["mean"] <= high
        for key in ("start", "end"):
            assert entry[key]["mean"] == pytest.approx(sum(entry[key]["per_seed"]) / 2)
            low, high = entry[key]["ci95_wilson_pooled"]
            # Identical start counts are one shared measurement of the SFT start, pooled once.
            shared = key == "start" and len({r["start"]["wins"] for r in runs}) == 1
            assert 0 <= low <= entry[key]["mean"] <= high <= 1
            assert entry[key]["episodes"] == (2 if shared else 4)
        assert entry["env_steps"]["mean"] == pytest.approx(sum(r["env_steps"] for r in runs) / 2)
    paired = summary["arms"]["no_curriculum"]["end_minus_rl_end_points"]
    assert paired["per_seed"] == [100 * (a["end"]["rate"] - b["end"]["rate"])
                                  for a, b in zip(summary["runs"]["no_curriculum"], summary["runs"]["rl"])]
    rl_end = [r["end"] for r in summary["runs"]["rl"]]
    own_end = [r["end"] for r in summary["runs"]["no_curriculum"]]
    assert paired["fisher_p_pooled"] == pytest.approx(fisher_exact_p(
        sum(e["wins"] for e in own_end), 4, sum(e["wins"] for e in rl_end), 4))
    assert "rl_gain_at_least_15_points" in summary["claims"]
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["arms"] == json.loads(json.dumps(summary["arms"]))
    assert "| rl |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.png").stat().st_size > 1000
    for arm, runs in summary["runs"].items():  # learning curves: one rollout point per iteration run
        for run in runs:
            curve = written["curves"][arm][f"seed{run['seed']}"]
            assert len(curve["iteration"]) == len(curve["rollout_success"]) == run["iterations"]
            assert curve["env_steps"][-1] == run["env_steps"]
    assert (tmp_path / "curves.png").stat().st_size > 1000

    # A rerun retrains nothing: finished arms are read back.
    logs = sorted(tmp_path.glob("*/seed*/train/metrics.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in logs]
    assert headline.main(arguments(tmp_path))["runs"] == summary["runs"]
    assert [p.stat().st_mtime_ns for p in logs] == stamps
    # An arm interrupted after its last checkpoint resumes from it (and finds its budget spent).
    (tmp_path / "rl" / "seed1" / headline.RESULT_FILE).unlink()
    again = headline.main(arguments(tmp_path))["runs"]["rl"][1]
    assert again["resumed"] is True and again["iterations"] == summary["runs"]["rl"][1]["iterations"]
    assert again["end"] == summary["runs"]["rl"][1]["end"]


def test_arms_not_named_are_read_back_only_when_that_costs_nothing(
        tmp_path, headline, one_torch_thread, capsys):
    both = headline.main(arguments(tmp_path))
    assert both["read_back"] == []
    logs = sorted(tmp_path.glob("*/seed*/train/metrics.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in logs]

    only_rl = headline.main(arguments(tmp_path, arms="rl"))
    assert only_rl["read_back"] == ["no_curriculum"] and list(only_rl["arms"]) == ["rl", "no_curriculum"]
    assert only_rl["arms"] == both["arms"] and only_rl["runs"] == both["runs"]
    assert "| no_curriculum | 0,1 |" in (tmp_path / "summary.md").read_text()
    assert [p.stat().st_mtime_ns for p in logs] == stamps  # read, not trained or evaluated

    # Not yet evaluated under --judge: left out with a line saying how to add it, not evaluated.
    capsys.readouterr()
    sampled = headline.main(arguments(tmp_path, arms="rl") + ["--judge", "sampled"])
    assert list(sampled["arms"]) == ["rl"] and sampled["read_back"] == []
    assert "no_curriculum seed 0 is not in the table" in capsys.readouterr().err
    assert not (tmp_path / "no_curriculum" / "seed0" / "judged").exists()


def test_more_data_is_skipped_on_the_toy_backend(tmp_path, headline):
    summary = headline.main(arguments(tmp_path, arms="more_data"))
    assert "libero" in summary["arms"]["more_data"]["skipped"]
    assert not (tmp_path / "more_data").exists()


def test_bad_arms_are_refused(tmp_path, headline):
    with pytest.raises(SystemExit):
        headline.main(arguments(tmp_path, arms="rl,bogus"))


def test_runnable_arms_are_the_reported_ones(headline):
    assert headline.ARMS == (*headline.RL_ARMS, "more_data")


def test_judge_evaluates_other_protocols_again_once_as_in_run(tmp_path, headline, one_torch_thread,
                                                              monkeypatch):
    import torch
    from safetensors.torch import load_file

    from vla_rl_ros.core.policy import VLAPolicy
    # An iteration cap, not the clock, ends these runs, so the two trainings below are the same.
    common = ["--seeds", "0", "--arms", "rl", "--hours", "1", "--no-progress", "--no-tensorboard",
              *sum([["--set", s] for s in TINY_TOY], [])]
    sampled_out, greedy_out = str(tmp_path / "sampled"), str(tmp_path / "greedy")
    sampling = ["--set", "train.eval_sample=true"]
    as_run = headline.main(["--out", sampled_out, *common, *sampling])["runs"]["rl"][0]
    assert as_run["protocol"].startswith("sampled T=") and as_run["iterations"] == 2

    loaded = []
    real_load = VLAPolicy.load_adapters
    monkeypatch.setattr(VLAPolicy, "load_adapters", lambda self, d: loaded.append(d) or real_load(self, d))
    summary = headline.main(["--out", sampled_out, *common, *sampling, "--judge", "greedy"])
    judged = summary["runs"]["rl"][0]
    assert summary["judge"] == "greedy"
    assert summary["arms"]["rl"]["protocol"] == judged["protocol"] == "greedy"
    assert judged["as_run"] == {k: as_run[k] for k in ("protocol", "start", "end", "gain_points")}
    assert judged["gain_points"] == pytest.approx(100 * (judged["end"]["rate"] - judged["start"]["rate"]))
    assert loaded == [str(Path(as_run["output_dir"]) / "checkpoints" / "latest" / "adapters")]
    result_file = tmp_path / "sampled" / "rl" / "seed0" / headline.RESULT_FILE
    kept = json.loads(result_file.read_text())
    assert kept["protocol"] == as_run["protocol"] and kept["judged"]["greedy"]["end"] == judged["end"]

    # Judged once: a rerun reads the kept evaluations back.
    log = tmp_path / "sampled" / "rl" / "seed0" / "judged" / "greedy" / "end" / "metrics.jsonl"
    stamp = log.stat().st_mtime_ns
    again = headline.main(["--out", sampled_out, *common, "--judge", "greedy"])["runs"]["rl"][0]
    assert again == judged and log.stat().st_mtime_ns == stamp and len(loaded) == 1

    # The same figures as a seed that evaluated greedily during its own run: the evaluation protocol
    # does not touch training, so judging afterwards is not a different experiment. (Two toy iterations
    # leave success at 0, so the identical final adapters are what shows the trainings are the same.)
    fresh = headline.main(["--out", greedy_out, *common, "--judge", "greedy"])["runs"]["rl"][0]
    assert fresh["protocol"] == "greedy" and "as_run" not in fresh
    shared = json.loads((Path(greedy_out) / "start_greedy.json").read_text())
    assert fresh["start"] == headline.held_out_counts(shared)  # one greedy start for every arm and seed
    assert (fresh["start"], fresh["end"]) == (judged["start"], judged["end"])
    final = [load_file(str(Path(r["output_dir"]) / "checkpoints/latest/adapters/adapter.safetensors"))
             for r in (as_run, fresh)]
    assert final[0].keys() == final[1].keys() and all(torch.equal(final[0][k], final[1][k]) for k in final[0])

    # Mixed protocols are labelled as such; lost adapters are a clear refusal, not a traceback.
    assert aggregate([as_run, fresh])["protocol"].startswith("mixed: greedy, sampled")
    other = json.loads(result_file.read_text())
    other["judged"].clear()
    result_file.write_text(json.dumps(other))
    shutil.rmtree(Path(as_run["output_dir"]) / "checkpoints" / "latest" / "adapters")
    with pytest.raises(SystemExit, match="final adapters .* are missing"):
        headline.main(["--out", sampled_out, *common, "--judge", "greedy"])


def test_extend_continues_a_shorter_run_to_a_longer_budget(tmp_path, headline, one_torch_thread):
    shorter, longer = tmp_path / "shorter", tmp_path / "longer"
    common = ["--seeds", "0", "--arms", "rl", "--judge", "greedy", "--no-progress", "--no-tensorboard",
              *sum([["--set", s] for s in TINY_TOY], [])]
    first = headline.main(["--out", str(shorter), "--hours", str(60 / 3600), *common])["runs"]["rl"][0]
    assert first["iterations"] == 2 and [e["iteration"] for e in first["evaluations"]] == [0, 2]
    untouched = {p: p.read_bytes() for p in shorter.rglob("*") if p.is_file()}
    more = [*common, "--set", "train.iterations=4", "--extend", str(shorter)]

    with pytest.raises(SystemExit, match="not less than --hours"):  # the same budget is no extension
        headline.main(["--out", str(longer), "--hours", str(60 / 3600), *more])
    with pytest.raises(SystemExit, match="seed 1 has not finished there"):
        headline.main(["--out", str(longer), "--hours", str(120 / 3600), *more, "--seeds", "1"])
    with pytest.raises(SystemExit):
        headline.main(["--out", str(shorter), "--hours", str(120 / 3600), *more])
    assert not (longer / "rl" / "seed0" / "train").exists()

    result = headline.main(["--out", str(longer), "--hours", str(120 / 3600), *more])["runs"]["rl"][0]
    assert result["resumed"] is True and result["extended_from"] == str(shorter)
    assert result["iterations"] == 4 and result["env_steps"] > first["env_steps"]
    # The longer run's first updates and held-out points are the shorter run's own.
    assert [e["iteration"] for e in result["evaluations"]] == [0, 2, 4]
    assert result["evaluations"][:2] == first["evaluations"] and result["start"] == first["start"]
    assert (longer / "start_greedy.json").read_bytes() == (shorter / "start_greedy.json").read_bytes()
    assert {p: p.read_bytes() for p in shorter.rglob("*") if p.is_file()} == untouched
