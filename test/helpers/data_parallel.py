"""PPO updates of a tiny VLA on toy episodes, on one rank or on each rank's share (test_data_parallel).

Run under torchrun (``python -m torch.distributed.run --nproc_per_node 2 data_parallel.py OUT``),
every rank builds the same tiny policy and the same episodes, takes its contiguous share of the
episodes, and runs the scenarios' updates on it; rank 0 saves the trainable weights and metrics
of each scenario to OUT. The test runs the same scenarios in one process on the whole batch.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from vla_rl_ros.core.envs.toy import ToyVectorEnv, toy_instruction
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl import checkpoint as ckpt
from vla_rl_ros.core.rl import distributed
from vla_rl_ros.core.rl.buffer import build_batch, episode_rewards
from vla_rl_ros.core.rl.config import PPOConfig
from vla_rl_ros.core.rl.rollout import collect_episodes, policy_decoder

SCENARIOS = {
    # critic + GAE: per-minibatch normalisation, value loss, KL to the reference, a warm-up update
    # (policy gradients dropped) then a full one; 5 episodes split 3/2, minibatches that straddle
    # the ranks, 2 epochs, gradient accumulation over 2 minibatches.
    "critic": dict(episodes=5, updates=2, ppo=dict(
        advantage_estimator="critic", critic_warmup_iters=1, epochs=2, minibatch_size=5, grad_accum_steps=2,
        kl_coef=0.05, entropy_coef=0.01, policy_lr=1e-3, value_lr=1e-2)),
    # group advantages (no normalisation, no value loss), per-token ratios, early stop on KL.
    "group": dict(episodes=4, updates=2, ppo=dict(advantage_estimator="loo", epochs=3, minibatch_size=3,
                                                  kl_coef=0.02, per_token_ratio=True, policy_lr=3e-3,
                                                  target_kl=0.02)),
    # one episode for two ranks: rank 1 holds no transition and still takes part.
    "lonely": dict(episodes=1, updates=1, ppo=dict(advantage_estimator="critic", critic_warmup_iters=0,
                                                   minibatch_size=2, policy_lr=1e-3)),
}


def tiny_policy() -> VLAPolicy:
    """The same tiny policy on every rank (seeded init, fp32)."""
    return VLAPolicy.create(PolicyConfig(size="tiny", image_size=32, seed=0),
                            instructions=[toy_instruction(i) for i in range(4)])


def toy_episodes(policy: VLAPolicy, count: int) -> list:
    """``count`` sampled toy episodes over two tasks (prompts of different lengths), reproducible."""
    env = ToyVectorEnv(num_envs=3, max_episode_steps=5)
    decode = policy_decoder(policy, generator=torch.Generator().manual_seed(11))
    return collect_episodes(env, decode, [(i % 2, i) for i in range(count)])


def batch_of(episodes: list, estimator: str):
    """The PPO batch of ``episodes`` (group estimators: a fixed advantage per episode, by its init state)."""
    rewards = [episode_rewards(e, 1.0, 0.0) + 0.1 * np.arange(e.length) for e in episodes]
    batch = build_batch(episodes, rewards, 0.99, 0.95)
    if estimator != "critic":
        per_episode = np.array([0.7, -0.4, 0.2, -0.5, 0.3])[[e.init_state_id % 5 for e in episodes]]
        batch.advantages = torch.as_tensor(np.repeat(per_episode, [e.length for e in episodes]),
                                           dtype=torch.float32)
    return batch


def run_scenario(name: str, ranks: distributed.Ranks | None) -> dict:
    """The scenario's updates on this rank's share (all episodes when ``ranks`` is None)."""
    from vla_rl_ros.core.rl.ppo_trainer import PPOTrainer
    spec = SCENARIOS[name]
    policy = tiny_policy()
    episodes = toy_episodes(policy, spec["episodes"])
    if ranks is not None:
        bounds = distributed.shard_bounds(len(episodes), ranks.world_size)
        episodes = episodes[bounds[ranks.rank]:bounds[ranks.rank + 1]]
    cfg = PPOConfig(**spec["ppo"])
    batch = batch_of(episodes, cfg.advantage_estimator) if episodes else None
    trainer = PPOTrainer(policy, cfg, ranks)
    trainer.sync_ranks()
    generator = torch.Generator().manual_seed(5)
    metrics = [trainer.update(batch, generator) for _ in range(spec["updates"])]
    return {"weights": ckpt.trainable_tensors(policy), "metrics": metrics}


def lose_rank_1(ranks: distributed.Ranks, out: str) -> None:
    """Rank 1 dies (SIGKILL); rank 0, in a gradient all-reduce, writes the error it gets to ``out``."""
    import os
    import signal
    import time
    if ranks.rank == 1:
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        ranks.all_reduce_gradients([torch.nn.Parameter(torch.zeros(3))])
    except distributed.DistributedError as err:
        with open(out, "w") as handle:
            handle.write(str(err))
        raise


def main(out: str) -> None:
    """torchrun entry: every scenario on this rank's share; rank 0 saves the results."""
    torch.set_num_threads(1)
    ranks = distributed.from_environment("cpu")
    if out == "--lose-rank-1":
        lose_rank_1(ranks, sys.argv[2])
        return
    results = {name: run_scenario(name, ranks) for name in SCENARIOS}
    if ranks is None or ranks.is_main:
        torch.save(ckpt.plain_state(results), out)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
