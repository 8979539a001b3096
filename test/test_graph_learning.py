"""The graph trains with ``vla-rl train``'s recipe through the same core Learner, shown through DDS.

The recipe and seed of the in-process group-advantage test (test_rl_learning.py: a tiny VLA SFT'd
on noisy toy-oracle demos, 64 episodes an iteration in groups of 8, leave-one-out advantages,
outcome reward only) run as the train_sim graph: a bridge of 16 toy envs, the policy node, the
recorder and the learner node as separate processes over loopback DDS. Asserted: the learner
node makes GRAPH_VERSIONS versions with group advantages (groups kept by dynamic sampling in its
updates), and held-out success of its final adapters does not fall.

Not asserted, because it is not reached: that the graph's held-out success matches the in-process
run's. Measured (seed 0, 2 cores): in-process 0.555 -> 0.938 after 12 updates; the graph after 16
versions 0.898, 0.734 and 0.570 in three runs (after 12: 0.789). The lag between the policy that
decoded an episode and the learner is small (``ppo/behaviour_lag_kl`` 0.03-0.19 per turn) and
decoupled PPO (``ppo.behaviour_correction=decoupled``) did not help, so the gap is elsewhere
(groups that wait for members across updates mix policy versions; the learner's plan is consumed
one finished episode at a time). It is an open item of the graph issue.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from dds_domains import isolate_dds
from test_graph_toy import Watcher
from test_rl_learning import SUCCESS_ENV, held_out_success, tiny_policy
from vla_rl_ros.cli.launch_cmd import Supervisor
from vla_rl_ros.core.envs.toy import ToyVectorEnv
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl import checkpoint as ckpt
from vla_rl_ros.core.rl import prm_data
from vla_rl_ros.graph.description import build_graph

pytestmark = pytest.mark.slow
GRAPH_VERSIONS = 16
SEED = 0
NOT_WORSE_BY = 0.1
"""About 2 standard deviations of the difference of two 128-episode estimates near 0.6."""


def graph_params(tmp_path: Path, model_dir: Path) -> Path:
    """train_sim on the learning tests' toy with run_group_learning's recipe."""
    config = tmp_path / "learning.yaml"
    env = {"backend": "toy", "task_ids": [0], "num_envs": 16, "image_size": SUCCESS_ENV["image_size"],
           "max_episode_steps": SUCCESS_ENV["max_episode_steps"], "toy_step_size": SUCCESS_ENV["step_size"],
           "toy_reach_only": not SUCCESS_ENV["require_close"]}
    config.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "env": env,
        "policy": {"size": "tiny", "image_size": 32, "temperature": 0.5, "state_prompt": False,
                   "model_path": str(model_dir)},
        "ppo": {"advantage_estimator": "loo", "policy_lr": 5.0e-4, "epochs": 2, "kl_coef": 0.0},
        "reward": {"prm_weight": 0.0},
        "train": {"seed": SEED, "episodes_per_iter": 64, "group_size": 8, "torch_threads": 1,
                  "output_dir": str(tmp_path / "run")},
        "graph": {"action_timeout_s": 30.0, "bag_dir": str(tmp_path / "run" / "bags")}}}}))
    return config


def test_the_graph_trains_with_group_advantages_through_the_core_learner(tmp_path, monkeypatch):
    isolate_dds(monkeypatch)
    # The in-process test's SFT start, saved as the model directory every node of the graph loads.
    policy = tiny_policy(temperature=0.5, seed=SEED)
    env = ToyVectorEnv(num_envs=16, **SUCCESS_ENV)
    prm_data.toy_sft_warm_start(policy, env, steps=40, noise=1.0, seed=SEED)
    before = held_out_success(policy, env, SEED)
    model_dir = tmp_path / "sft"
    policy.save(str(model_dir))

    graph = build_graph("train_sim", config=str(graph_params(tmp_path, model_dir)))
    supervisor = Supervisor(graph, log_dir=str(tmp_path / "logs"))
    watcher = Watcher(tmp_path / "logs")
    start = time.time()
    supervisor.start()
    try:
        watcher.wait_for(lambda: any(v.version >= GRAPH_VERSIONS for v in watcher.versions), 600,
                         f"policy version {GRAPH_VERSIONS}")
    finally:
        supervisor.stop(grace_s=10.0)
        watcher.close()
    graph_s = time.time() - start
    history = ckpt.load_checkpoint(tmp_path / "run")["history"][:GRAPH_VERSIONS]
    assert len(history) == GRAPH_VERSIONS
    assert all("rollout/groups_kept" in h and not h.get("ppo/no_update") for h in history)
    assert sum(h["rollout/groups_kept"] for h in history) >= GRAPH_VERSIONS  # comparisons were learned from
    final = next(v for v in watcher.versions if v.version == GRAPH_VERSIONS)
    graph_policy = VLAPolicy.load(str(model_dir), PolicyConfig(size="tiny", image_size=32, temperature=0.5,
                                                               seed=SEED, state_prompt=False))
    graph_policy.load_adapters(final.adapter_path)
    after = held_out_success(graph_policy, env, SEED)
    print(f"\nheld-out success through the graph: {before:.3f} -> {after:.3f} after {GRAPH_VERSIONS} "
          f"versions ({graph_s:.0f} s)")
    assert after >= before - NOT_WORSE_BY, (before, after)
