"""tools/experiments/analysis/stats.py: Fisher's exact test, t intervals and sample sizes, checked by hand."""
import json

import pytest

from file_modules import experiments_module

stats = experiments_module("analysis.stats")


def test_fisher_exact_p_known_values():
    # Fisher's tea-tasting table and the textbook 1/10 against 11/14 table (R: fisher.test).
    assert stats.fisher_exact_p(3, 4, 1, 4) == pytest.approx(0.4857, abs=1e-4)
    assert stats.fisher_exact_p(1, 10, 11, 14) == pytest.approx(0.002759, abs=1e-6)
    assert stats.fisher_exact_p(11, 14, 1, 10) == pytest.approx(stats.fisher_exact_p(1, 10, 11, 14))
    assert stats.fisher_exact_p(10, 30, 10, 30) == pytest.approx(1.0)
    assert stats.fisher_exact_p(0, 30, 0, 30) == 1.0 and stats.fisher_exact_p(0, 0, 3, 5) == 1.0
    assert stats.fisher_exact_p(7, 30, 0, 30) == pytest.approx(0.0105, abs=1e-4)
    with pytest.raises(ValueError, match="wins"):
        stats.fisher_exact_p(31, 30, 0, 30)


def test_t_interval():
    assert stats.t_interval([1.0]) is None
    low, high = stats.t_interval([10.0, 20.0, 30.0])  # mean 20, sd 10, t(0.975, 2 df) = 4.3027
    assert (low, high) == pytest.approx((20 - 4.3027 * 10 / 3 ** 0.5, 20 + 4.3027 * 10 / 3 ** 0.5), abs=1e-3)
    # mean 20, sd 14.142, standard error 10, t(0.975, 1 df) = 12.706
    assert stats.t_interval([30.0, 10.0]) == pytest.approx([20 - 127.062, 20 + 127.062], abs=1e-2)
    assert stats.t_interval([5.0, 5.0]) == [5.0, 5.0]


def test_episodes_for_power():
    # 50 % -> 60 %: mean 0.55; (1.96 sqrt(2 x 0.55 x 0.45) + 0.8416 sqrt(0.25 + 0.24))^2 / 0.1^2 = 387.3.
    assert stats.episodes_for_power(0.5, 10) == 388
    assert stats.episodes_for_power(0.5, 10, power=0.9) > 388 > stats.episodes_for_power(0.5, 15)
    assert stats.episodes_for_power(0.5, 10, alpha=0.01) > 388
    with pytest.raises(ValueError, match="rate"):
        stats.episodes_for_power(0.9, 15)


def test_wilson_and_newcombe_gain_interval_match_the_published_examples():
    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)  # Newcombe 1998, Table I
    # Newcombe 1998 (method 10): 56/70 against 48/80, difference 0.1857, interval 0.0524 to 0.3339.
    assert stats.gain_interval(48, 80, 56, 70) == pytest.approx([5.24, 33.39], abs=0.01)


def test_learning_summary_reads_every_figure_from_result_files(tmp_path):
    import json
    tool = experiments_module("learning_summary")
    (tmp_path / "sft.json").write_text(json.dumps({
        "greedy": True, "uses_training_init_states": False, "per_task": {"1": {"success_rate": 0.6}},
        "overall": {"successes": 90, "success_rate": 0.6, "episodes": 150, "ci95": [0.52, 0.68]}}))
    (tmp_path / "roll.json").write_text(json.dumps({
        "chunk_size": 8, "step_parts": {"physics_step_ms": 7.0}, "decode": {"ms_per_call": 20.0},
        "rollout": {"env_steps_per_s": 120.0, "episodes_per_hour": 1900.0}}))
    for seed, (start, end) in enumerate([(75, 90), (72, 99)]):
        folder = tmp_path / "headline" / "rl" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "arm_result.json").write_text(json.dumps({
            "seed": seed, "protocol": "greedy", "wall_s": 7000.0 + seed, "gain_points": (end - start) / 1.5,
            "start": {"wins": start, "episodes": 150},
            "end": {"wins": end, "episodes": 150, "rate": end / 150}}))
    summary = tool.main(["--sft-eval", str(tmp_path / "sft.json"), "--rollout", str(tmp_path / "roll.json"),
                         "--headline", str(tmp_path / "headline"),
                         "--out", str(tmp_path / "out.json")])
    assert summary["sft"]["heldout_success_greedy"] == 0.6 and summary["sft"]["heldout_episodes"] == 150
    rollout = summary["rollout"]
    assert rollout["env_steps_per_s"] == 120.0 and rollout["episodes_per_hour"] == 1900.0
    rl = summary["rl"]
    assert rl["seeds"] == [0, 1] and rl["gain_points_mean"] == pytest.approx(14.0)
    assert rl["gain_ci95"] == stats.gain_interval(147, 300, 189, 300)
    assert rl["heldout_episodes_per_point"] == 150
    assert rl["hours_per_seed_max"] == pytest.approx(1.94, abs=0.01)
    assert summary["rl_critic"]["status"] == "not run" and summary["rl_critic"]["gain_ci95"] is None
    assert json.loads((tmp_path / "out.json").read_text()) == summary
    assert summary["ablations"] == {}  # none ran
    # An ablation of rl on seed 1 only: compared with rl's end on that seed.
    folder = tmp_path / "headline" / "no_prm" / "seed1"
    folder.mkdir(parents=True)
    (folder / "arm_result.json").write_text(json.dumps({
        "seed": 1, "protocol": "greedy", "wall_s": 900.0, "gain_points": 2.0,
        "start": {"wins": 72, "episodes": 150}, "end": {"wins": 75, "episodes": 150, "rate": 0.5}}))
    ablation = tool.main(["--sft-eval", str(tmp_path / "sft.json"), "--rollout", str(tmp_path / "roll.json"),
                          "--headline", str(tmp_path / "headline"),
                          "--out", str(tmp_path / "out.json")])["ablations"]["no_prm"]
    assert ablation["seeds"] == [1] and ablation["baseline"] == "rl"
    against = ablation["end_minus_baseline_end"]
    assert against["points_per_seed"] == [-16.0] and against["points_mean"] == -16.0
    assert against["ci95_pooled"] == stats.gain_interval(99, 150, 75, 150)
    assert 0 < against["fisher_p_pooled"] < 0.05
    # Seeds sharing one start evaluation (identical counts): the start counts once, the ends each.
    for seed in (0, 1):
        path = tmp_path / "headline" / "rl" / f"seed{seed}" / "arm_result.json"
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "start": {"wins": 84, "episodes": 150}}))
    shared = tool.main(["--sft-eval", str(tmp_path / "sft.json"), "--rollout", str(tmp_path / "roll.json"),
                        "--headline", str(tmp_path / "headline"), "--out", str(tmp_path / "out.json")])["rl"]
    assert shared["start_pooled"] == [84, 150] and shared["end_pooled"] == [189, 300]
    assert shared["gain_ci95"] == stats.gain_interval(84, 150, 189, 300)
    # A second run of the SFT recipe: 75/150 against 90/150 agrees (the difference's interval holds
    # zero); 30/150 does not.
    for name, rate in (("repeat.json", 0.5), ("far.json", 0.2)):
        (tmp_path / name).write_text(json.dumps({
            "greedy": True, "per_task": {"1": {"success_rate": rate}},
            "overall": {"successes": round(150 * rate), "success_rate": rate, "episodes": 150,
                        "ci95": [rate - 0.08, rate + 0.08]}}))
    repeat = tool.main(["--sft-eval", str(tmp_path / "sft.json"), "--rollout", str(tmp_path / "roll.json"),
                        "--sft-eval-repeat", str(tmp_path / "repeat.json"),
                        "--out", str(tmp_path / "out.json")])["sft"]["repeat"]
    assert repeat["heldout_success_greedy"] == 0.5 and repeat["difference_points"] == -10.0
    assert repeat["difference_ci95"] == stats.gain_interval(90, 150, 75, 150) and repeat["agrees"]
    far = tool.main(["--sft-eval", str(tmp_path / "sft.json"), "--rollout", str(tmp_path / "roll.json"),
                     "--sft-eval-repeat", str(tmp_path / "far.json"), "--out", str(tmp_path / "out.json")])
    assert far["sft"]["repeat"]["agrees"] is False and far["sft"]["repeat"]["difference_ci95"][1] < 0
    (tmp_path / "sampled.json").write_text(json.dumps({"greedy": False}))
    with pytest.raises(SystemExit, match="greedy"):
        tool.main(["--sft-eval", str(tmp_path / "sampled.json"), "--rollout", str(tmp_path / "roll.json"),
                   "--out", str(tmp_path / "x.json")])


def test_learning_summary_rl_is_the_longest_budget_that_ran_every_seed(tmp_path):
    import json
    tool = experiments_module("learning_summary")
    (tmp_path / "sft.json").write_text(json.dumps({
        "greedy": True, "uses_training_init_states": False, "per_task": {},
        "overall": {"successes": 84, "success_rate": 0.56, "episodes": 150, "ci95": [0.48, 0.64]}}))
    (tmp_path / "roll.json").write_text(json.dumps({
        "chunk_size": 8, "step_parts": {}, "decode": {}, "rollout": {"env_steps_per_s": 104.0,
                                                                     "episodes_per_hour": 2098.0}}))

    def seeds(folder, arm, ends, wall_s):
        for seed, end in enumerate(ends):
            path = tmp_path / folder / arm / f"seed{seed}"
            path.mkdir(parents=True)
            (path / "arm_result.json").write_text(json.dumps({
                "seed": seed, "protocol": "greedy", "wall_s": wall_s, "gain_points": (end - 84) / 1.5,
                "start": {"wins": 84, "episodes": 150}, "end": {"wins": end, "episodes": 150,
                                                                "rate": end / 150}}))
    seeds("h15", "rl", [106, 101, 96], 950.0)
    seeds("h15", "no_prm", [71, 80, 49], 950.0)
    seeds("h30", "rl", [109, 104, 100], 1850.0)
    seeds("h60", "rl", [120], 3650.0)  # one seed so far: not the headline's three
    common = ["--sft-eval", str(tmp_path / "sft.json"), "--rollout", str(tmp_path / "roll.json"),
              "--headline", str(tmp_path / "h15"), "--out", str(tmp_path / "out.json")]
    summary = tool.main(common + ["--rl-longer", str(tmp_path / "h60"), "--rl-longer", str(tmp_path / "h30")])
    by_budget = summary["rl_by_budget"]
    assert [b["source"] for b in by_budget] == [str(tmp_path / h) for h in ("h15", "h30", "h60")]
    assert summary["rl"]["hours_per_seed_max"] == pytest.approx(0.51, abs=0.01)  # h30, not the 1-seed h60
    assert summary["rl"]["end_pooled"] == [313, 450] and "source" not in summary["rl"]
    assert summary["rl"]["gain_ci95"] == stats.gain_interval(84, 150, 313, 450)
    # The ablations ran at the headline's budget and are compared with rl there.
    against = summary["ablations"]["no_prm"]["end_minus_baseline_end"]
    assert against["ci95_pooled"] == stats.gain_interval(303, 450, 200, 450)
    without = tool.main(common)
    assert "rl_by_budget" not in without and without["rl"]["end_pooled"] == [303, 450]


def test_sign_test_p_known_values():
    # 6 gained, 2 lost: 2 * (1 + 8 + 28) / 2**8; one-sided counts give the same p either way.
    assert stats.sign_test_p(6, 2) == pytest.approx(2 * 37 / 256)
    assert stats.sign_test_p(2, 6) == stats.sign_test_p(6, 2)
    assert stats.sign_test_p(10, 0) == pytest.approx(2 / 1024)
    assert stats.sign_test_p(0, 0) == 1.0 and stats.sign_test_p(4, 4) == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        stats.sign_test_p(-1, 3)


def test_paired_eval_counts_flips_and_refuses_different_episodes(tmp_path):
    paired = experiments_module("paired_eval")

    def evaluation(name, wins):
        episodes = [{"task_id": 1, "init_state_id": 40 + i, "seed": 0, "success": won}
                    for i, won in enumerate(wins)]
        (tmp_path / name).write_text(json.dumps({"episodes": episodes}))
        return tmp_path / name

    before = evaluation("before.json", [True, True, False, False, True])
    after = evaluation("after.json", [True, False, True, True, True])
    result = paired.main([str(before), str(after), "--out", str(tmp_path / "paired.json")])
    assert json.loads((tmp_path / "paired.json").read_text()) == result
    assert (result["successes_before"], result["successes_after"]) == (3, 4)
    assert (result["unchanged"], result["gained"], result["lost"]) == (2, 2, 1)
    assert result["sign_test_p"] == pytest.approx(1.0)
    shorter = evaluation("shorter.json", [True, True, False, False])
    with pytest.raises(SystemExit, match="different episodes"):
        paired.main([str(before), str(shorter), "--out", str(tmp_path / "x.json")])
    (tmp_path / "empty.json").write_text(json.dumps({"overall": {}}))
    with pytest.raises(SystemExit, match="lists no episodes"):
        paired.main([str(before), str(tmp_path / "empty.json"), "--out", str(tmp_path / "x.json")])
