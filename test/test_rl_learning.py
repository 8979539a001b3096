"""Learning with the real tiny VLA on the toy env: PPO raises the probability of rewarded
actions, and the real PPO loop raises the held-out toy episode success rate.

Both start from a short full SFT on *noisy* toy-oracle demonstrations, as the real pipeline
starts RL from an SFT checkpoint: a fresh tiny model's frozen output head is too small for
LoRA alone to reshape its near-uniform 256-bin distributions, and the noise leaves the
imitated policy well short of the oracle, so PPO has room to improve.
"""
import time

import numpy as np
import pytest
import torch

from vla_rl_ros.core.envs.toy import ToyProgressOracle, ToyVectorEnv, toy_instruction, toy_task_count
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl import prm_data
from vla_rl_ros.core.rl.buffer import build_batch, episode_rewards
from vla_rl_ros.core.rl.config import PPOConfig
from vla_rl_ros.core.rl.ppo_trainer import PPOTrainer
from vla_rl_ros.core.rl.rollout import collect_episodes

torch.set_num_threads(1)
THRESHOLD = 0.6


def tiny_policy(temperature, seed=0):
    # Image-only: the toy task is solvable from the image, and the asserted seeds were measured so.
    cfg = PolicyConfig(size="tiny", image_size=32, temperature=temperature, seed=seed, state_prompt=False)
    return VLAPolicy.create(cfg, instructions=[toy_instruction(i) for i in range(toy_task_count())])


def rewarded_fraction(policy, env, gen, repeats=32):
    obs = env.reset([(0, i) for i in range(env.num_envs)])
    images, texts = np.stack([o.image for o in obs]), [o.instruction for o in obs]
    actions = np.concatenate([policy.decode(images, texts, generator=gen).actions for _ in range(repeats)])
    return float((actions[:, 0, 0] > THRESHOLD).mean())  # [B, K=1, 7]: dim 0 of the one action


def test_ppo_raises_probability_of_rewarded_actions():
    """Per-step reward (move right fast) isolates the PPO update from long-horizon credit assignment."""
    policy = tiny_policy(temperature=1.0)
    env = ToyVectorEnv(num_envs=8, max_episode_steps=20)
    prm_data.toy_sft_warm_start(policy, env, steps=60)
    gen = torch.Generator().manual_seed(0)
    before = rewarded_fraction(policy, env, gen)
    trainer = PPOTrainer(policy, PPOConfig(advantage_estimator="critic", critic_warmup_iters=0,
                                           policy_lr=1e-3, minibatch_size=32, epochs=2,
                                           kl_coef=0.0, gamma=0.99, gae_lambda=0.95))
    after_each = []
    for _ in range(4):
        episodes = collect_episodes(env, lambda im, tx: policy.decode(im, tx, generator=gen),
                                    [(0, i) for i in range(16)])
        rewards = [np.array([1.0 if a[0, 0] > THRESHOLD else 0.0 for a in e.actions]) for e in episodes]
        metrics = trainer.update(build_batch(episodes, rewards, 0.0, 0.0), gen)
        assert metrics["ppo/skipped"] == 0.0
        after_each.append(rewarded_fraction(policy, env, gen))
    print(f"P(a0 > {THRESHOLD}): before {before:.3f}, after each update {after_each}")
    assert max(after_each[1:]) >= before + 0.05, (before, after_each)
    assert np.mean(after_each[1:]) > before, (before, after_each)


# The toy configuration of the success-rate test. A short horizon with big steps and no
# gripper closing keeps episodes at 5 decodes and only action dims 0-1 relevant, yet the
# oracle still always succeeds and a fresh (near-uniform) policy only by chance (measured
# ~0.05: test_toy_config_separates_oracle_from_random).
SUCCESS_ENV = dict(image_size=32, max_episode_steps=5, step_size=0.2, tolerance=0.2, require_close=False)
EVAL_EPISODES = 128
"""Held-out episodes per success estimate: binomial std <= 0.044 each, <= 0.063 for a difference."""
MARGIN = 0.25
"""Required rise of the success rate: about 4 standard deviations of the difference of two estimates."""


def held_out_success(policy, env, seed):
    """Sampled success rate on held-out init states 40..49 (EVAL_EPISODES episodes).

    Sampled, not greedy: PPO optimises the sampling policy, and greedy success over only ten
    init states is deterministic per state (steps of 0.1) and near the oracle's already,
    since the argmax of a noisy imitation is close to the oracle's action.
    """
    gen = torch.Generator().manual_seed(1000 + seed)
    held_out = [(0, 40 + i % 10) for i in range(EVAL_EPISODES)]
    episodes = collect_episodes(env, lambda im, tx: policy.decode(im, tx, generator=gen), held_out)
    return float(np.mean([e.success for e in episodes]))


def test_toy_config_separates_oracle_from_random():
    """Oracle success 1, a fresh policy (near-uniform bins) rarely succeeds in SUCCESS_ENV."""
    env, policy = ToyVectorEnv(num_envs=16, **SUCCESS_ENV), tiny_policy(temperature=1.0)
    oracle = prm_data.toy_oracle_episodes(env, policy.action_tokenizer, [(0, i) for i in range(50)])
    assert all(e.success for e in oracle)
    assert held_out_success(policy, env, seed=0) <= 0.15


def run_success_learning(seed=0, iterations=20, episodes_per_iter=64):
    """SFT on noisy demos, then the real PPO loop; returns held-out success before and after.

    Levers, all configuration: sampling temperature 0.5 (logits / T doubles how far the
    LoRA-bounded logit changes move the 256-bin distributions; VLA-RL samples at 1.5 with a
    7B head), the toy's ground-truth progress as the PRM (dense, potential-based shaping,
    isolating PPO from PRM quality), 64 episodes per update and policy lr 5e-4.
    """
    policy = tiny_policy(temperature=0.5, seed=seed)
    env = ToyVectorEnv(num_envs=16, **SUCCESS_ENV)
    prm_data.toy_sft_warm_start(policy, env, steps=40, noise=1.0, seed=seed)
    before = held_out_success(policy, env, seed)
    trainer = PPOTrainer(policy, PPOConfig(advantage_estimator="critic", critic_warmup_iters=0,
                                           policy_lr=5e-4, value_lr=1e-3,
                                           minibatch_size=32, epochs=2, kl_coef=0.0, gamma=0.99,
                                           gae_lambda=0.95))
    prm, gen = ToyProgressOracle(), torch.Generator().manual_seed(seed)
    for it in range(iterations):
        train_states = [(0, i % 40) for i in range(it * episodes_per_iter, (it + 1) * episodes_per_iter)]
        episodes = collect_episodes(env, lambda im, tx: policy.decode(im, tx, generator=gen), train_states)
        prm.score_episodes(episodes)
        rewards = [episode_rewards(e, success_weight=1.0, prm_weight=1.0) for e in episodes]
        metrics = trainer.update(build_batch(episodes, rewards, 0.99, 0.95), gen)
        assert metrics["ppo/skipped"] == 0.0
    return before, held_out_success(policy, env, seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_ppo_raises_toy_success_rate(seed):
    """Held-out toy success rises by MARGIN, for seed 0 and for seed 1 (the slow one).

    Measured with ``run_success_learning(seed)`` (20 iterations, 15-20 s a run on 2 idle cores):
    seed 0: 0.555 -> 0.961, seed 1: 0.641 -> 0.945, seed 2: 0.836 -> 0.992, seed 3: 0.375 -> 0.898,
    seed 4: 0.797 -> 1.000 (mean 0.641 -> 0.959). With 10 iterations seed 1 stayed flat
    (0.641 -> 0.625): its SFT start needs more updates, not a different setting.
    """
    start = time.time()
    before, after = run_success_learning(seed=seed)
    print(f"seed {seed}: held-out success {before:.3f} -> {after:.3f} ({time.time() - start:.1f} s)")
    assert after >= before + MARGIN, (before, after)


def run_group_learning(seed=0, iterations=12, estimator="loo", curve=None, checkpoints=()):
    """SFT on noisy demos, then the real training loop (``TrainingRun``) with group advantages.

    8 contexts x 8 rollouts per iteration, outcome reward only (no PRM): the group comparison
    alone must carry the signal. Returns held-out success before and after; ``curve`` (a dict)
    also gets it after each iteration number in ``checkpoints``.
    """
    from vla_rl_ros.core.config import load_config
    from vla_rl_ros.core.rl.train_loop import TrainingRun
    policy = tiny_policy(temperature=0.5, seed=seed)
    env = ToyVectorEnv(num_envs=16, **SUCCESS_ENV)
    prm_data.toy_sft_warm_start(policy, env, steps=40, noise=1.0, seed=seed)
    before = held_out_success(policy, env, seed)
    cfg = load_config(None, ["env.backend=toy", "env.task_ids=[0]", "env.num_envs=16", "policy.size=tiny",
                             "policy.image_size=32", "policy.temperature=0.5", "policy.state_prompt=false",
                             f"train.seed={seed}", f"train.iterations={iterations}",
                             "train.episodes_per_iter=64",
                             "train.group_size=8", "train.eval_every=0", "train.torch_threads=1",
                             f"ppo.advantage_estimator={estimator}", "ppo.policy_lr=5e-4", "ppo.epochs=2",
                             "ppo.kl_coef=0", "reward.prm_weight=0", "train.output_dir=/dev/null/unused"])
    run = TrainingRun(cfg, policy=policy, env=env, progress_bar=False, tensorboard=False)
    kept = []
    for iteration in range(1, iterations + 1):
        metrics = run.train_iteration()
        kept.append(metrics.get("rollout/groups_kept", 0.0))
        if iteration in checkpoints:
            curve[iteration] = held_out_success(policy, env, seed)
    assert sum(kept) > 0, "no group ever had mixed outcomes: nothing was learned from"
    return before, held_out_success(policy, env, seed)


@pytest.mark.parametrize("estimator", ["loo", "grpo"])
def test_group_advantages_raise_toy_success_rate(estimator):
    """Held-out toy success rises by MARGIN with group advantages (no critic, no PRM).

    Measured with ``run_group_learning(0, estimator=...)``, 16 s a run on 2 busy cores:
    loo 0.555 -> 0.938, grpo 0.555 -> 0.977 (the critic arm above: 0.555 -> 0.961).
    """
    start = time.time()
    before, after = run_group_learning(seed=0, estimator=estimator)
    print(f"{estimator}: held-out success {before:.3f} -> {after:.3f} ({time.time() - start:.1f} s)")
    assert after >= before + MARGIN, (before, after)
