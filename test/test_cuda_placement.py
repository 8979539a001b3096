"""On a CUDA GPU: the PPO update and PRM training meet their CPU-built batches on the model's device.

Both failed on an H100 with "Expected all tensors to be on the same device" before the fix. CI has
no GPU, so these skip there; tools/experiments/gpu_check.sh runs the whole commands on a GPU.
"""
import math

import numpy as np
import pytest
import torch

from vla_rl_ros.core.config import load_config
from vla_rl_ros.core.envs.toy import ToyVectorEnv, toy_instruction, toy_task_count
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl import prm_data
from vla_rl_ros.core.rl.prm import ProcessRewardModel
from vla_rl_ros.core.rl.prm_training import train_prm
from vla_rl_ros.core.rl.train_loop import TrainingRun

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_ppo_updates_a_policy_on_the_gpu(tmp_path):
    cfg = load_config(None, ["env.backend=toy", "env.task_ids=[0]", "env.num_envs=2", "env.image_size=32",
                             "env.max_episode_steps=4", "policy.size=tiny", "policy.image_size=32",
                             "policy.device=cuda", "train.episodes_per_iter=2", "train.eval_every=0",
                             "train.iterations=2", "ppo.critic_warmup_iters=1", "ppo.minibatch_size=4",
                             "reward.prm_weight=0", f"train.output_dir={tmp_path}"])
    run = TrainingRun(cfg, progress_bar=False, tensorboard=False)
    before = [p.detach().clone() for p in run.policy.policy_parameters()]
    run.run()
    last = run.history[-1]
    assert last["ppo/warmup"] == 0.0 and last["ppo/skipped"] == 0.0 and math.isfinite(last["ppo/policy_loss"])
    after = run.policy.policy_parameters()
    assert all(p.is_cuda for p in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after))  # the policy update really ran


def test_prm_trains_on_the_gpu():
    words = [toy_instruction(i) for i in range(toy_task_count())]
    policy = VLAPolicy.create(PolicyConfig(size="tiny", image_size=32, device="cuda"), instructions=words)
    episodes = prm_data.policy_rollouts(ToyVectorEnv(num_envs=2, max_episode_steps=6), policy,
                                        [(0, i) for i in range(4)])
    prm = ProcessRewardModel(VLAPolicy.create(PolicyConfig(size="tiny", image_size=32, device="cuda"),
                                              instructions=words))
    losses = train_prm(prm, episodes, epochs=2, batch_size=8, generator=torch.Generator().manual_seed(0))
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    assert prm.head.weight.is_cuda
