"""Learning signal with the real tiny VLA: PPO moves probability toward rewarded actions.

The policy is first imitated (full SFT, a few steps) on noisy toy-oracle demonstrations, as
the real pipeline starts RL from an SFT checkpoint; a fresh tiny model's frozen output head
is too small for LoRA alone to reshape its near-uniform 256-bin distributions. The reward
here is per step (move right fast), so the test isolates the PPO update from credit
assignment over long horizons.
"""
import numpy as np
import torch

from vla_rl_ros.core.envs.toy import ToyVectorEnv, toy_instruction, toy_task_count
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl import prm_data
from vla_rl_ros.core.rl.buffer import build_batch
from vla_rl_ros.core.rl.config import PPOConfig
from vla_rl_ros.core.rl.ppo_trainer import PPOTrainer
from vla_rl_ros.core.rl.rollout import collect_episodes

torch.set_num_threads(1)
THRESHOLD = 0.6


def sft_warm_start(policy, env, steps=60, lr=2e-3, seed=0):
    demos = prm_data.toy_oracle_episodes(env, policy.action_tokenizer, [(0, i) for i in range(16)], noise=0.5)
    images = np.stack([im for e in demos for im in e.images[:-1]])
    texts = [e.instruction for e in demos for _ in range(e.length)]
    tokens = torch.as_tensor(np.concatenate([np.stack(e.tokens) for e in demos]))
    optimizer = torch.optim.Adam(policy.sft_parameters(full=True), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(tokens), generator=gen)[:32].numpy()
        loss = policy.sft_loss(images[idx], [texts[i] for i in idx], tokens[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.freeze_base()


def rewarded_fraction(policy, env, gen, repeats=32):
    obs = env.reset([(0, i) for i in range(env.num_envs)])
    images, texts = np.stack([o.image for o in obs]), [o.instruction for o in obs]
    actions = np.concatenate([policy.decode(images, texts, generator=gen).actions for _ in range(repeats)])
    return float((actions[:, 0] > THRESHOLD).mean())


def test_ppo_raises_probability_of_rewarded_actions():
    policy = VLAPolicy.create(PolicyConfig(size="tiny", image_size=32, temperature=1.0),
                              instructions=[toy_instruction(i) for i in range(toy_task_count())])
    env = ToyVectorEnv(num_envs=8, max_episode_steps=20)
    sft_warm_start(policy, env)
    gen = torch.Generator().manual_seed(0)
    before = rewarded_fraction(policy, env, gen)
    trainer = PPOTrainer(policy, PPOConfig(critic_warmup_iters=0, policy_lr=1e-3, minibatch_size=32, epochs=2,
                                           kl_coef=0.0, gamma=0.99, gae_lambda=0.95))
    after_each = []
    for _ in range(4):
        episodes = collect_episodes(env, lambda im, tx: policy.decode(im, tx, generator=gen),
                                    [(0, i) for i in range(16)])
        rewards = [np.array([1.0 if a[0] > THRESHOLD else 0.0 for a in e.actions]) for e in episodes]
        metrics = trainer.update(build_batch(episodes, rewards, 0.0, 0.0), gen)
        assert metrics["ppo/skipped"] == 0.0
        after_each.append(rewarded_fraction(policy, env, gen))
    print(f"P(a0 > {THRESHOLD}): before {before:.3f}, after each update {after_each}")
    assert max(after_each[1:]) >= before + 0.05, (before, after_each)
    assert np.mean(after_each[1:]) > before, (before, after_each)
