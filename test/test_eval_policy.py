"""Evaluation: Wilson intervals, held-out planning, a real (short) LIBERO evaluation of a tiny VLA."""
import json

import numpy as np
import pytest

from vla_rl_ros.cli.main import main
from vla_rl_ros.core.envs.config import EnvConfig
from vla_rl_ros.core.evaluation import evaluate_policy, plan_evaluation, wilson_interval


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_training_log_interval_is_the_evaluation_interval_but_nan_without_episodes():
    from vla_rl_ros.core.rl.results import wilson_interval as training_interval
    assert training_interval(8, 10) == wilson_interval(8, 10)
    assert all(np.isnan(bound) for bound in training_interval(0, 0))


def test_plan_uses_held_out_states_and_seeds_draw_subsets():
    plan = plan_evaluation([0, 1], list(range(40, 50)), seeds=[0, 1], episodes_per_task=3)
    assert len(plan) == 12 and all(40 <= state < 50 for _, state, _ in plan)
    subsets = {seed: {(t, s) for t, s, sd in plan if sd == seed} for seed in (0, 1)}
    assert subsets[0] != subsets[1]
    assert plan == sorted(plan)  # grouped by task


def test_short_real_evaluation_of_a_callable_policy(tmp_path):
    cfg = EnvConfig(suite="libero_object", task_ids=[0], num_envs=1, image_size=32, max_episode_steps=4)
    calls = []

    def policy(observations):
        calls.append(len(observations))
        return np.full((len(observations), 7), np.nan)  # bad actions must not break evaluation
    result = evaluate_policy(policy, cfg, seeds=[0, 1], episodes_per_task=1, video_dir=tmp_path / "videos",
                             num_videos=1, progress=False)
    assert result["overall"]["episodes"] == 2 and result["overall"]["successes"] == 0
    assert result["overall"]["ci95"][0] == 0.0 and result["overall"]["ci95"][1] > 0.5
    assert not result["uses_training_init_states"]
    assert all(e["init_state_id"] >= 40 and e["steps"] == 4 for e in result["episodes"])
    assert result["renderer"]["mujoco_gl"] == "egl" and result["hardware"]["cpu_count"] >= 1
    assert result["episodes_per_hour"] > 0 and len(result["videos"]) == 1
    assert sum(calls) == 8
    json.dumps(result)


def test_eval_command_runs_a_saved_policy(tmp_path, capsys):
    from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
    VLAPolicy.create(PolicyConfig(size="tiny", image_size=32)).save(str(tmp_path / "policy"))
    out = tmp_path / "eval.json"
    code = main(["eval", "--no-progress", "--policy", str(tmp_path / "policy"), "--seeds", "0",
                 "--episodes-per-task", "1", "--output", str(out), "--set", "env.task_ids=[2]",
                 "--set", "env.num_envs=1", "--set", "env.image_size=32", "--set", "env.max_episode_steps=2",
                 "--set", "policy.image_size=32"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["per_task"]["2"]["episodes"] == 1 and result["policy"] == str(tmp_path / "policy")
