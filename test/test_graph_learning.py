"""The graph learns like ``vla-rl train``: the same recipe and seed, in-process and through DDS.

The recipe and seed of the in-process group-advantage test (test_rl_learning.py: a tiny VLA SFT'd
on noisy toy-oracle demos, 64 episodes an iteration in groups of 8, leave-one-out advantages,
outcome reward only) run as the train_sim graph with ``graph.lockstep``: a bridge of 16 toy envs,
the policy node, the recorder and the learner node as separate processes over loopback DDS. The
same recipe also runs in-process (``run_group_learning``) and both curves are printed. Asserted:
every version learned from one whole plan (64 episodes, nothing stale), and the graph's held-out
success after GRAPH_VERSIONS is within MATCH_WITHIN of the in-process loop's.

Within noise, not equal: an in-process seed is deterministic, a graph run is not (the order in
which episodes reach the learner reorders its minibatches, and the policy node's batches mix
envs differently), so one graph run is one draw from the recipe's run-to-run spread.
tools/experiments/graph_toy_match.py measures that spread over seeds, both routes from the same
start (docs/results/graph/toy_match.json): over 10 seeds the mean gain is +0.185 through the
graph and +0.174 in-process, the paired difference +0.011 (95 % [-0.054, +0.076], standard
deviation 0.091), which sets MATCH_WITHIN.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from dds_domains import isolate_dds
from test_graph_toy import Watcher
from test_rl_learning import SUCCESS_ENV, held_out_success, run_group_learning, tiny_policy
from vla_rl_ros.cli.launch_cmd import Supervisor
from vla_rl_ros.core.envs.toy import ToyVectorEnv
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl import checkpoint as ckpt
from vla_rl_ros.core.rl import prm_data
from vla_rl_ros.graph.description import build_graph

pytestmark = pytest.mark.slow
GRAPH_VERSIONS = 12
CHECKPOINTS = (4, 8, 12)
SEED = 0
MATCH_WITHIN = 0.3
"""About 3.3 standard deviations of the paired graph - in-process difference of the gain (0.091 over
10 seeds, graph_toy_match.py); the widest gap seen in 14 graph runs of the recipe was 0.29 (seed 0,
inside the full suite). A run outside it differs from the in-process loop by more than noise."""


def graph_params(tmp_path: Path, model_dir: Path, seed: int = SEED) -> Path:
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
        "train": {"seed": seed, "episodes_per_iter": 64, "group_size": 8, "torch_threads": 1,
                  "output_dir": str(tmp_path / "run")},
        "graph": {"action_timeout_s": 30.0, "bag_dir": str(tmp_path / "run" / "bags"), "lockstep": True}}}}))
    return config


def run_graph_learning(work: Path, seed: int = SEED, versions: int = GRAPH_VERSIONS,
                       checkpoints=CHECKPOINTS) -> dict:
    """The in-process test's SFT start, then ``versions`` lockstep versions through the graph.

    Returns ``before`` (held-out success of the start), ``curve`` (after each version in
    ``checkpoints``), ``history`` (the learner's per-version metrics) and ``seconds``. The caller
    isolates DDS. tools/experiments/graph_toy_match.py runs this for several seeds.
    """
    policy = tiny_policy(temperature=0.5, seed=seed)
    env = ToyVectorEnv(num_envs=16, **SUCCESS_ENV)
    prm_data.toy_sft_warm_start(policy, env, steps=40, noise=1.0, seed=seed)
    before = held_out_success(policy, env, seed)
    model_dir = work / "sft"
    policy.save(str(model_dir))  # the model directory every node of the graph loads
    graph = build_graph("train_sim", config=str(graph_params(work, model_dir, seed)))
    supervisor = Supervisor(graph, log_dir=str(work / "logs"))
    watcher = Watcher(work / "logs")
    start = time.time()
    supervisor.start()
    try:
        watcher.wait_for(lambda: any(v.version >= versions for v in watcher.versions), 600,
                         f"policy version {versions}")
    finally:
        supervisor.stop(grace_s=10.0)
        watcher.close()
    seconds = time.time() - start
    curve = {}
    for version in checkpoints:
        adapters = next(v.adapter_path for v in watcher.versions if v.version == version)
        graph_policy = VLAPolicy.load(str(model_dir), PolicyConfig(
            size="tiny", image_size=32, temperature=0.5, seed=seed, state_prompt=False))
        graph_policy.load_adapters(adapters)
        curve[version] = held_out_success(graph_policy, env, seed)
    history = ckpt.load_checkpoint(work / "run")["history"][:versions]
    return {"before": before, "curve": curve, "history": history, "seconds": seconds}


def run_both_routes(work: Path, seed: int = SEED, checkpoints=CHECKPOINTS) -> dict:
    """The recipe in-process, then through the graph, from the same start (checked).

    Returns ``before``, ``in_process`` (success after each iteration in ``checkpoints``),
    ``in_process_s`` and ``graph`` (:func:`run_graph_learning`'s result). The caller isolates DDS.
    """
    in_process = {}
    start = time.time()
    before, _ = run_group_learning(seed=seed, iterations=max(checkpoints), curve=in_process,
                                   checkpoints=checkpoints)
    in_process_s = time.time() - start
    graph = run_graph_learning(work, seed=seed, versions=max(checkpoints), checkpoints=checkpoints)
    if graph["before"] != before:  # both routes must start from the same policy, or nothing is compared
        raise AssertionError(f"seed {seed}: the graph's start {graph['before']} != in-process {before}")
    return {"before": before, "in_process": in_process, "in_process_s": in_process_s, "graph": graph}


def test_the_graph_trains_in_lockstep_beside_the_in_process_loop(tmp_path, monkeypatch):
    isolate_dds(monkeypatch)
    routes = run_both_routes(tmp_path)
    before, in_process, graph = routes["before"], routes["in_process"], routes["graph"]
    history, graph_curve = graph["history"], graph["curve"]
    assert len(history) == GRAPH_VERSIONS
    assert all("rollout/groups_kept" in h and not h.get("ppo/no_update") for h in history)
    # Lockstep: every version learned from one whole plan (64 episodes, 8 groups of 8), nothing stale.
    assert [h["rollout/episodes"] for h in history] == [64] * GRAPH_VERSIONS
    assert all(h.get("learner/rejected_episodes_stale", 0) == 0 for h in history)
    print(f"\nheld-out success from {before:.3f}: in-process {in_process} ({routes['in_process_s']:.0f} s), "
          f"graph {graph_curve} ({graph['seconds']:.0f} s)")
    last = max(CHECKPOINTS)
    assert abs(graph_curve[last] - in_process[last]) <= MATCH_WITHIN, (before, in_process, graph_curve)
