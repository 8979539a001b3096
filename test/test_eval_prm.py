"""``vla-rl eval-prm`` and the separation measures: fresh held-out rollouts scored by a real (tiny) PRM."""
import json
import math

import numpy as np
import pytest

from vla_rl_ros.cli.main import main
from vla_rl_ros.core.envs.toy import toy_instruction, toy_task_count
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl.prm import ProcessRewardModel
from vla_rl_ros.core.rl.prm_training import roc_auc, separation
from vla_rl_ros.core.rl.rollout import Episode

pytestmark = pytest.mark.usefixtures("one_torch_thread")
INSTRUCTIONS = [toy_instruction(i) for i in range(toy_task_count())]
TOY = ["--set", "env.backend=toy", "--set", "env.task_ids=[0,1]", "--set", "env.num_envs=2",
       "--set", "env.image_size=32", "--set", "env.max_episode_steps=3", "--set", "policy.image_size=32",
       "--set", "train.torch_threads=1"]


def tiny(**norm) -> VLAPolicy:
    return VLAPolicy.create(PolicyConfig(size="tiny", image_size=32), instructions=INSTRUCTIONS, **norm)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny policy, a PRM that matches it and one made for other action statistics."""
    root = tmp_path_factory.mktemp("eval_prm")
    tiny().save(str(root / "policy"))
    ProcessRewardModel(tiny()).save(root / "prm")
    other_stats = {"x": {"action": {"q01": [-2.0] * 7, "q99": [2.0] * 7, "mask": [True] * 7}}}
    ProcessRewardModel(tiny(norm_stats=other_stats)).save(root / "prm_mismatch")
    return root


def scored(success: bool, progress: list[float]) -> Episode:
    episode = Episode(task_id=0, init_state_id=40, instruction="x", success=success,
                      tokens=[np.zeros(7, dtype=np.int64)] * (len(progress) - 1))
    episode.progress = np.asarray(progress)
    return episode


def test_separation_ranks_by_final_and_by_mean_progress():
    episodes = [scored(True, [0, 0.5, 0.9]), scored(True, [0, 0.2, 0.8]),
                scored(False, [0, 0.1, 0.3]), scored(False, [0, 0.85, 0.85])]
    metrics = separation(episodes)
    # Final: 0.9 beats both failures, 0.8 beats 0.3 only -> 3 of 4 pairs.
    assert metrics["prm/auc"] == pytest.approx(0.75)
    # Mean: successes 0.7, 0.5; failures 0.2, 0.85: the failure that got far and stalled outranks
    # both successes -> 2 of 4 pairs.
    assert metrics["prm/auc_mean_progress"] == pytest.approx(0.5)
    assert (metrics["prm/episodes"], metrics["prm/successes"]) == (4, 2)
    only_wins = separation(episodes[:2])
    assert math.isnan(only_wins["prm/auc"]) and only_wins["prm/successes"] == 2


def test_eval_prm_scores_fresh_held_out_rollouts(saved, tmp_path, capsys):
    out = tmp_path / "prm_eval.json"
    assert main(["eval-prm", "--policy", str(saved / "policy"), "--prm", str(saved / "prm"),
                 "--episodes", "4", "--output", str(out), *TOY]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    rows = result["trajectories"]
    assert len(rows) == 4 and sorted(r["task"] for r in rows) == [0, 0, 1, 1]
    assert all(r["init_state"] >= 40 for r in rows)  # held-out init states only
    assert all(1 <= r["length"] <= 3 and math.isfinite(r["final_progress"]) for r in rows)
    metrics = result["metrics"]
    assert metrics["prm/episodes"] == 4 and metrics["prm/successes"] == sum(r["success"] for r in rows)
    expected = roc_auc([r["final_progress"] for r in rows if r["success"]],
                       [r["final_progress"] for r in rows if not r["success"]])
    assert metrics["prm/auc"] == pytest.approx(expected, nan_ok=True)
    assert result["per_task"]["0"]["prm/episodes"] == 2 and result["protocol"].startswith("sampled T=")
    if not 0 < metrics["prm/successes"] < 4:
        assert "both successes and failures" in result["note"]


@pytest.mark.parametrize("extra, message", [
    (["--prm", "prm_mismatch"], "does not match the policy"),
    (["--prm", "missing"], "has no"),
    ([], "needs a PRM"),
    (["--prm", "prm", "--episodes", "0"], "--episodes must be >= 1"),
])
def test_eval_prm_bad_input_is_a_one_line_error(saved, capsys, extra, message):
    extra = [str(saved / e) if e in ("prm_mismatch", "missing", "prm") else e for e in extra]
    assert main(["eval-prm", "--policy", str(saved / "policy"), *extra, *TOY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
