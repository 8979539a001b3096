"""Rollout collection, batch building and PPO updates on the real tiny VLA in the toy env."""
import numpy as np
import pytest
import torch

from vla_rl_ros.core.envs.toy import ToyVectorEnv, toy_instruction
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl.buffer import build_batch, episode_rewards
from vla_rl_ros.core.rl.config import PPOConfig
from vla_rl_ros.core.rl.ppo_trainer import PPOTrainer
from vla_rl_ros.core.rl.rollout import EmptyRolloutError, Episode, collect_episodes, policy_decoder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def policy():
    return VLAPolicy.create(PolicyConfig(size="tiny", image_size=32, seed=0),
                            instructions=[toy_instruction(i) for i in range(8)])


def decoder(policy, seed=0):
    # The default policy reads the robot state, so rollouts pass the toy env's proprio along.
    return policy_decoder(policy, generator=torch.Generator().manual_seed(seed))


def collect(policy, assignments, num_envs=3, steps=4, seed=0):
    env = ToyVectorEnv(num_envs=num_envs, max_episode_steps=steps)
    return collect_episodes(env, decoder(policy, seed), assignments)


def test_collects_each_assignment_once_with_fillers(policy):
    assignments = [(0, 1), (1, 2), (2, 3), (0, 4), (1, 5)]
    episodes = collect(policy, assignments, num_envs=3)
    assert sorted((e.task_id, e.init_state_id) for e in episodes) == sorted(assignments)
    for e in episodes:
        assert e.length == len(e.actions) == len(e.log_probs) == len(e.values) == len(e.env_rewards)
        assert len(e.images) == len(e.proprio) == e.length + 1
        assert e.truncated or e.success
        assert e.instruction == toy_instruction(e.task_id)
    # fewer assignments than environments
    assert len(collect(policy, [(3, 0)], num_envs=3)) == 1
    assert collect(policy, [], num_envs=2) == []


def test_collection_is_reproducible(policy):
    a = collect(policy, [(0, 1), (1, 2)], seed=5)
    b = collect(policy, [(0, 1), (1, 2)], seed=5)
    assert all(np.array_equal(np.stack(x.tokens), np.stack(y.tokens)) for x, y in zip(a, b))


def make_episode(length, truncated, rewards, final_value=0.0):
    ep = Episode(task_id=0, init_state_id=0, instruction=toy_instruction(0))
    for t in range(length):
        ep.images.append(np.zeros((32, 32, 3), np.uint8))
        ep.proprio.append(np.full(8, t, np.float32))
        ep.tokens.append(np.full(7, 300))
        ep.actions.append(np.zeros(7, np.float32))
        ep.log_probs.append(np.zeros(7, np.float32))
        ep.values.append(0.5)
        ep.env_rewards.append(rewards[t])
    ep.images.append(np.zeros((32, 32, 3), np.uint8))
    ep.proprio.append(np.full(8, length, np.float32))
    ep.truncated, ep.success, ep.final_value = truncated, not truncated, final_value
    return ep


def test_build_batch_pads_time_major_and_bootstraps_truncation():
    short = make_episode(2, truncated=False, rewards=[0.0, 1.0])
    long = make_episode(3, truncated=True, rewards=[0.0, 0.0, 0.0], final_value=2.0)
    batch = build_batch([short, long], [episode_rewards(e, 1.0, 0.0) for e in (short, long)], 1.0, 1.0)
    assert batch.rewards.shape == (3, 2) and batch.size == 5
    assert batch.mask.t().tolist() == [[True, True, False], [True, True, True]]
    # gamma = lambda = 1: advantage = sum of future rewards + bootstrap - value
    assert batch.advantages.tolist() == pytest.approx([0.5, 0.5, 1.5, 1.5, 1.5])
    assert batch.returns.tolist() == pytest.approx([1.0, 1.0, 2.0, 2.0, 2.0])
    # each step keeps its own observation's proprio (o_0..o_{T-1}, not the final o_T)
    assert batch.proprio[:, 0].tolist() == [0, 1, 0, 1, 2]
    with pytest.raises(EmptyRolloutError):
        build_batch([], [], 0.99, 0.95)


def test_prm_rewards_are_progress_increments():
    ep = make_episode(3, truncated=False, rewards=[0.0, 0.0, 1.0])
    ep.progress = np.array([0.0, 0.2, 0.1, 0.9])
    assert episode_rewards(ep, 2.0, 0.5).tolist() == pytest.approx([0.1, -0.05, 2.4])
    ep.progress = np.zeros(2)
    with pytest.raises(ValueError, match="T\\+1"):
        episode_rewards(ep, 1.0, 0.5)


def rollout_batch(policy, seed=0):
    episodes = collect(policy, [(0, i) for i in range(4)], num_envs=4, steps=4, seed=seed)
    return build_batch(episodes, [episode_rewards(e, 1.0, 0.0) + 0.1 * np.arange(e.length) for e in episodes],
                       0.99, 0.95)


def params(trainer):
    return ([p.detach().clone() for p in trainer.policy_params],
            [p.detach().clone() for p in trainer.value_params])


def changed(before, after):
    return any(not torch.equal(a, b) for a, b in zip(before, after))


def test_warmup_updates_only_the_value_head_then_both(policy):
    cfg = PPOConfig(advantage_estimator="critic", critic_warmup_iters=1, minibatch_size=8, policy_lr=1e-3,
                    value_lr=1e-2)
    trainer = PPOTrainer(policy, cfg)
    batch = rollout_batch(policy)
    lora0, value0 = params(trainer)
    metrics = trainer.update(batch, torch.Generator().manual_seed(0))
    lora1, value1 = params(trainer)
    assert metrics["ppo/warmup"] == 1.0 and metrics["ppo/skipped"] == 0.0
    assert not changed(lora0, lora1) and changed(value0, value1)
    metrics = trainer.update(batch, torch.Generator().manual_seed(0))
    lora2, _ = params(trainer)
    assert metrics["ppo/warmup"] == 0.0 and changed(lora1, lora2)
    for key in ("ppo/approx_kl", "ppo/clipfrac", "ppo/explained_variance", "ppo/entropy", "ppo/kl_ref",
                "ppo/policy_loss", "ppo/value_loss", "ppo/grad_norm"):
        assert key in metrics
    assert metrics["ppo/kl_ref"] >= 0.0


def test_nonfinite_reward_or_loss_skips_and_keeps_weights(policy):
    trainer = PPOTrainer(policy, PPOConfig(critic_warmup_iters=0, minibatch_size=4, policy_lr=1e-3))
    batch = rollout_batch(policy, seed=1)
    batch.rewards[0, 0] = float("nan")
    before = params(trainer)
    metrics = trainer.update(batch)
    assert metrics["ppo/skipped"] == 1.0 and "reward" in metrics["ppo/skip_reason"]
    batch = rollout_batch(policy, seed=1)
    batch.log_probs[-1, 0] = float("nan")  # one poisoned transition, in some minibatch
    state_before = trainer.optimizer.state_dict()["state"].keys()
    metrics = trainer.update(batch, torch.Generator().manual_seed(3))
    assert metrics["ppo/skipped"] == 1.0
    after = params(trainer)
    assert not changed(before[0], after[0]) and not changed(before[1], after[1])
    assert trainer.optimizer.state_dict()["state"].keys() == state_before
    # and the trainer still learns from the next good batch
    metrics = trainer.update(rollout_batch(policy, seed=2))
    assert metrics["ppo/skipped"] == 0.0 and changed(after[0], params(trainer)[0])


def test_target_kl_stops_early(policy):
    trainer = PPOTrainer(policy, PPOConfig(critic_warmup_iters=0, minibatch_size=2, epochs=4, policy_lr=5e-2,
                                           target_kl=1e-6))
    metrics = trainer.update(rollout_batch(policy, seed=3), torch.Generator().manual_seed(0))
    assert metrics["ppo/early_stop"] == 1.0
    assert metrics["ppo/optimizer_steps"] < 4 * 8 / 2


def fresh_policy():
    return VLAPolicy.create(PolicyConfig(size="tiny", image_size=32, seed=0),
                            instructions=[toy_instruction(i) for i in range(8)])


def test_decoupled_correction_changes_nothing_on_policy():
    """Episodes of the current weights: proximal = behaviour, weights 1, the same update as 'none'."""
    after = {}
    for correction in ("none", "decoupled"):
        policy = fresh_policy()
        trainer = PPOTrainer(policy, PPOConfig(advantage_estimator="critic", critic_warmup_iters=0,
                                               minibatch_size=8, policy_lr=1e-3,
                                               behaviour_correction=correction))
        metrics = trainer.update(rollout_batch(policy), torch.Generator().manual_seed(0))
        after[correction] = params(trainer)[0]
        if correction == "decoupled":
            assert metrics["ppo/behaviour_weight_mean"] == pytest.approx(1.0, abs=1e-4)
            assert abs(metrics["ppo/behaviour_lag_kl"]) < 1e-4
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(after["none"], after["decoupled"]))


def test_decoupled_correction_learns_from_episodes_of_an_older_policy():
    """Episodes decoded before the weights moved on (the graph's lag): the classic ratio, taken
    against the old recorded log-probs, starts far from 1 and clips most of the update away;
    decoupled PPO clips around the current weights and keeps learning, with weights <= the cap."""
    policy = fresh_policy()
    batch = rollout_batch(policy, seed=1)  # decoded by version 0
    mover = PPOTrainer(policy, PPOConfig(advantage_estimator="critic", critic_warmup_iters=0,
                                         minibatch_size=8, policy_lr=2e-2, epochs=4))
    for _ in range(3):  # the learner moves on while these episodes wait
        mover.update(rollout_batch(policy, seed=2), torch.Generator().manual_seed(0))
    clip_fraction = {}
    for correction in ("none", "decoupled"):
        trainer = PPOTrainer(policy, PPOConfig(advantage_estimator="critic", critic_warmup_iters=0,
                                               minibatch_size=64, epochs=1, policy_lr=1e-6,
                                               behaviour_correction=correction, behaviour_weight_cap=2.0))
        metrics = trainer.update(batch, torch.Generator().manual_seed(0))
        clip_fraction[correction] = metrics["ppo/clipfrac"]
        if correction == "decoupled":
            assert 0.0 < metrics["ppo/behaviour_weight_mean"] <= 2.0
            assert abs(metrics["ppo/behaviour_lag_kl"]) > 0.01
    assert clip_fraction["decoupled"] < 0.05 < clip_fraction["none"], clip_fraction
