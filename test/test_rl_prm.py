"""PRM: labels from real toy trajectories, training, AUC/rank metrics, save/load, mismatch, best-of-N."""
import json

import numpy as np
import pytest
import torch

from vla_rl_ros.cli.main import main
from vla_rl_ros.core.evaluation import evaluate_scaling
from vla_rl_ros.core.envs.config import EnvConfig
from vla_rl_ros.core.envs.toy import ToyVectorEnv, toy_instruction, toy_task_count
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl import prm_data
from vla_rl_ros.core.rl.prm import PRMError, ProcessRewardModel, label_episodes
from vla_rl_ros.core.rl.prm_training import evaluate_prm, roc_auc, spearman, train_prm
from vla_rl_ros.core.rl.best_of_n import best_of_n_decode, likelihood_scorer, prm_scorer

torch.set_num_threads(1)
INSTRUCTIONS = [toy_instruction(i) for i in range(toy_task_count())]


def tiny(**kw):
    return VLAPolicy.create(PolicyConfig(size="tiny", image_size=32, **kw), instructions=INSTRUCTIONS)


@pytest.fixture(scope="module")
def trajectories():
    policy = tiny()
    env = ToyVectorEnv(num_envs=4, max_episode_steps=12, goal_radius=0.4)
    wins = prm_data.toy_oracle_episodes(env, policy.action_tokenizer, [(0, i) for i in range(6)], noise=0.2)
    fails = prm_data.policy_rollouts(env, policy, [(0, 10 + i) for i in range(6)])
    return policy, wins, [e for e in fails if not e.success]


def test_metrics_helpers():
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert roc_auc([0.5], [0.5]) == 0.5
    assert np.isnan(roc_auc([], [0.1]))
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_labels_of_real_trajectories(trajectories):
    _, wins, fails = trajectories
    assert wins and all(e.success for e in wins)
    labels = label_episodes(wins + fails)
    for e, lab in zip(wins + fails, labels):
        assert lab.shape == (e.length + 1,) and lab[0] == 0.0
        assert np.all(np.diff(lab) >= -1e-7)
    assert all(lab[-1] == 1.0 for lab in labels[:len(wins)])
    assert all(lab[-1] < 1.0 for lab in labels[len(wins):])


def test_prm_learns_to_separate_success_from_failure(trajectories, tmp_path):
    policy, wins, fails = trajectories
    prm = ProcessRewardModel(tiny(seed=1))
    train_set = wins[:4] + fails[:4]
    losses = train_prm(prm, train_set, epochs=6, lr=3e-3, batch_size=16,
                       generator=torch.Generator().manual_seed(0))
    assert losses[-1] < losses[0]
    metrics = evaluate_prm(prm, train_set)
    assert metrics["prm/auc"] >= 0.75
    assert metrics["prm/rank_corr"] > 0.3
    prm.save(tmp_path / "prm", metrics)
    again = ProcessRewardModel.load(tmp_path / "prm", PolicyConfig(size="tiny", image_size=32))
    e = max(wins, key=lambda w: w.length)
    images, tokens = np.stack(e.images[:e.length]), torch.as_tensor(np.stack(e.tokens))
    texts, proprio = [e.instruction] * e.length, np.stack(e.proprio[:e.length])
    assert np.allclose(prm.score_batched(images, texts, tokens, proprio),
                       again.score_batched(images, texts, tokens, proprio), atol=1e-5)
    again.check_compatible(policy)
    # scores fill the episode's progress curve used for dense rewards
    prm.score_episodes([e])
    assert e.progress.shape == (e.length + 1,) and e.progress[0] == 0.0


def test_prm_mismatch_and_missing_dirs_are_clear(tmp_path):
    prm = ProcessRewardModel(tiny())
    other = VLAPolicy.create(PolicyConfig(size="tiny", image_size=32), instructions=INSTRUCTIONS,
                             norm_stats={"x": {"action": {"q01": [-2.0] * 7, "q99": [2.0] * 7,
                                                          "mask": [True] * 7}}})
    with pytest.raises(PRMError, match="does not match the policy"):
        prm.check_compatible(other)
    with pytest.raises(PRMError, match="train-prm"):
        ProcessRewardModel.load(tmp_path / "nothing", PolicyConfig(size="tiny", image_size=32))


def test_best_of_n_picks_the_top_scored_candidate(trajectories):
    policy = trajectories[0]
    env = ToyVectorEnv(num_envs=2)
    obs = env.reset([(0, 0), (1, 0)])
    images, texts = np.stack([o.image for o in obs]), [o.instruction for o in obs]
    proprio = np.stack([o.proprio for o in obs])
    one = best_of_n_decode(policy, images, texts, 1, generator=torch.Generator().manual_seed(0),
                           proprio=proprio)
    assert one.tokens.shape == (2, 7)
    best = best_of_n_decode(policy, images, texts, 8, likelihood_scorer(), torch.Generator().manual_seed(0),
                            proprio)
    again = policy.decode(np.concatenate([images] * 8), texts * 8, generator=torch.Generator().manual_seed(0),
                          proprio=np.concatenate([proprio] * 8))
    joint = again.log_probs.sum(-1).reshape(8, 2)
    assert torch.allclose(best.log_probs.sum(-1), joint.max(0).values)
    prm = ProcessRewardModel(tiny(seed=2))
    scored = best_of_n_decode(policy, images, texts, 4, prm_scorer(prm), torch.Generator().manual_seed(0),
                              proprio)
    assert scored.actions.shape == (2, 1, 7)  # one chunk of K = 1 action per observation
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n_decode(policy, images, texts, 0)
    with pytest.raises(ValueError, match="reads the robot state"):
        best_of_n_decode(policy, images, texts, 4, prm_scorer(prm), torch.Generator().manual_seed(0))


def test_cli_train_prm_on_toy(tmp_path, capsys):
    out = tmp_path / "prm"
    code = main(["train-prm", "--no-progress", "--out", str(out),
                 "--set", "env.backend=toy", "--set", "env.task_ids=[0]", "--set", "env.num_envs=2",
                 "--set", "env.image_size=32", "--set", "env.max_episode_steps=10",
                 "--set", "policy.size=tiny",
                 "--set", "policy.image_size=32", "--set", "reward.prm_rollout_episodes=4",
                 "--set", "reward.prm_epochs=1", "--set", "train.torch_threads=1"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prm_path"] == str(out) and "prm/auc" in report
    assert (out / "prm.json").is_file() and (out / "backbone").is_dir()


def test_inference_scaling_curve_shape(trajectories):
    policy = trajectories[0]
    cfg = EnvConfig(backend="toy", task_ids=[0, 1], num_envs=2, max_episode_steps=3)
    curve = evaluate_scaling(policy, cfg, [1, 2], likelihood_scorer(), init_state_ids=[40], progress=False)
    assert sorted(curve["per_n"]) == [1, 2]
    low, high = curve["per_n"][2]["ci95"]
    assert curve["per_n"][2]["episodes"] == 2 and 0.0 <= low <= high <= 1.0
