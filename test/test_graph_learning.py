"""The graph learns as ``vla-rl train`` does: one training loop, shown through DDS.

The same recipe and seed as the in-process group-advantage test (test_rl_learning.py: a tiny VLA
SFT'd on noisy toy-oracle demos, 64 episodes an iteration in groups of 8, leave-one-out
advantages, outcome reward only, 12 updates) runs as the train_sim graph: a bridge of 16 toy
envs, the policy node, the recorder and the learner node as separate processes over loopback
DDS. The learner node calls the same core Learner as the in-process loop. Held-out success of
its final adapters must rise by the in-process test's margin and match the in-process run's
within noise.

The graph gets GRAPH_VERSIONS updates for the in-process run's 12: its rollouts run while the
learner trains, so episodes come from policies one to a few versions old, and PPO's ratio
clipped against those older policies moves less per update. Measured (seed 0, 2 busy cores):
in-process 0.555 -> 0.938 after 12 updates (16 s); graph 0.555 -> 0.789 after 12 versions and
0.555 -> 0.898 after 16 (52 s). Before the learner held episodes until their group was whole
(nodes/learner_bags.py GroupAssembler) the graph reached 0.609 after 12.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from dds_domains import isolate_dds
from test_graph_toy import Watcher
from test_rl_learning import MARGIN, SUCCESS_ENV, held_out_success, run_group_learning, tiny_policy
from vla_rl_ros.cli.launch_cmd import Supervisor
from vla_rl_ros.core.envs.toy import ToyVectorEnv
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl import prm_data
from vla_rl_ros.graph.description import build_graph

pytestmark = pytest.mark.slow
IN_PROCESS_UPDATES = 12
GRAPH_VERSIONS = 16
SEED = 0
SAME_WITHIN = 0.15
"""Largest |graph - in-process| held-out success: 3 standard deviations of the difference of two
128-episode estimates near 0.9 (each ~0.03), plus the lag's own effect."""


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


def test_the_graph_learns_like_the_in_process_loop(tmp_path, monkeypatch):
    isolate_dds(monkeypatch)
    start = time.time()
    in_process_before, in_process_after = run_group_learning(SEED, IN_PROCESS_UPDATES, estimator="loo")
    in_process_s = time.time() - start

    # The same SFT start, saved as the model directory every node of the graph loads.
    policy = tiny_policy(temperature=0.5, seed=SEED)
    env = ToyVectorEnv(num_envs=16, **SUCCESS_ENV)
    prm_data.toy_sft_warm_start(policy, env, steps=40, noise=1.0, seed=SEED)
    before = held_out_success(policy, env, SEED)
    assert before == pytest.approx(in_process_before)  # the same start as the in-process run
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
    final = next(v for v in watcher.versions if v.version == GRAPH_VERSIONS)
    graph_policy = VLAPolicy.load(str(model_dir), PolicyConfig(size="tiny", image_size=32, temperature=0.5,
                                                               seed=SEED, state_prompt=False))
    graph_policy.load_adapters(final.adapter_path)
    after = held_out_success(graph_policy, env, SEED)
    print(f"\nheld-out success: in-process {in_process_before:.3f} -> {in_process_after:.3f} "
          f"({in_process_s:.0f} s); graph {before:.3f} -> {after:.3f} ({graph_s:.0f} s, "
          f"{GRAPH_VERSIONS} versions)")
    assert after >= before + MARGIN, (before, after)
    assert abs(after - in_process_after) <= SAME_WITHIN, (after, in_process_after)
