"""Experiment (not a test): SFT warm start, then `vla-rl train`'s loop on the toy env; success before/after.

Reproduces the trajectory-level toy measurements quoted in docs/results/toy/README.md, e.g.::

    ORACLE=1 .venv/bin/python tools/experiments/toy_learning_probe.py --sft-steps 60 \\
        --set policy.temperature=1.5 --set ppo.policy_lr=1e-3 --set ppo.kl_coef=0.05 \\
        --set reward.prm_weight=1.0 --set train.iterations=8 --set train.episodes_per_iter=32

``ORACLE=1`` uses the toy's ground-truth progress as the PRM. The script puts the repository root
on ``sys.path``, so it runs from any directory. The CI check of toy success is test/test_rl_learning.py.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for vla_rl_ros


def main() -> None:
    """Run the probe and print success rates before and after PPO."""
    from vla_rl_ros.core.config import load_config
    from vla_rl_ros.core.envs.toy import ToyProgressOracle, ToyVectorEnv
    from vla_rl_ros.core.rl import prm_data
    from vla_rl_ros.core.rl.rollout import collect_episodes, policy_decoder
    from vla_rl_ros.core.rl.train_loop import TrainingRun, build_policy

    parser = argparse.ArgumentParser()
    parser.add_argument("--sft-steps", type=int, default=60)
    parser.add_argument("--eval-episodes", type=int, default=128)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = ["env.backend=toy", "env.task_ids=[0]", "env.num_envs=8", "env.image_size=32", "policy.size=tiny",
            "policy.image_size=32", "train.eval_every=0", "train.torch_threads=1",
            f"train.output_dir=runs/toy_probe_{int(time.time())}"]
    cfg = load_config(None, base + args.overrides)
    policy = build_policy(cfg)
    env = ToyVectorEnv(8, 32, 20)
    prm_data.toy_sft_warm_start(policy, env, steps=args.sft_steps)

    def success() -> float:
        sample_gen = torch.Generator().manual_seed(1)
        held_out = [(0, 40 + i % 10) for i in range(args.eval_episodes)]
        episodes = collect_episodes(env, policy_decoder(policy, generator=sample_gen), held_out)
        return float(np.mean([e.success for e in episodes]))

    before = success()
    prm = ToyProgressOracle() if os.environ.get("ORACLE") == "1" else None
    run = TrainingRun(cfg, policy=policy, env=env, prm=prm, progress_bar=False, tensorboard=False)
    run.run()
    for h in run.history:
        print(h["iteration"], "rollout success", round(h.get("rollout/success_rate", -1), 3),
              "approx_kl", round(h.get("ppo/approx_kl", -1), 4), "entropy", round(h.get("ppo/entropy", 0), 3))
    print(f"held-out sampled success: before {before:.3f}, after {success():.3f}")


if __name__ == "__main__":
    main()
