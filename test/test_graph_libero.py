"""The training graph with real LIBERO scenes: one small iteration advances the policy version.

sim_bridge (one headless LIBERO env) + policy + recorder + learner as processes over loopback
DDS, with the tiny policy and 4-step episodes so that an iteration fits in a test.
"""
import importlib.util
import time

import pytest
import yaml

from vla_rl_ros.cli.launch_cmd import Supervisor
from vla_rl_ros.graph.description import build_graph

from dds_domains import isolate_dds
from test_graph_toy import Watcher  # the same watcher node as the toy graph test

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="LIBERO not installed")]


def test_libero_training_iteration_advances_the_policy_version(tmp_path, monkeypatch):
    isolate_dds(monkeypatch)
    config = tmp_path / "libero.yaml"
    config.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "env": {"backend": "libero", "suite": "libero_object", "task_ids": [0], "num_envs": 1,
                "image_size": 64, "max_episode_steps": 4, "settle_steps": 2},
        "policy": {"size": "tiny", "image_size": 64},
        # critic: one 4-step episode an iteration is a group of one, which group estimators skip
        "ppo": {"advantage_estimator": "critic", "critic_warmup_iters": 1, "minibatch_size": 8},
        "train": {"episodes_per_iter": 1, "output_dir": str(tmp_path / "run"), "torch_threads": 1},
        "graph": {"action_timeout_s": 120.0, "bag_dir": str(tmp_path / "run" / "bags")}}}}))
    supervisor = Supervisor(build_graph("train_sim", config=str(config)), log_dir=str(tmp_path / "logs"))
    watcher = Watcher(tmp_path / "logs")
    supervisor.start()
    started = time.monotonic()
    try:
        def learned():
            assert all(p.poll() is None for _, p in supervisor.processes.values()), \
                (tmp_path / "logs" / "sim_bridge.log").read_text(errors="replace")[-3000:]
            return any(v.version >= 1 for v in watcher.versions)
        watcher.wait_for(learned, 240, "policy version 1 from a LIBERO rollout")
        watcher.wait_for(lambda: watcher.results, 30, "an EpisodeResult")
        result = watcher.results[0]
        assert result.num_steps == 4 and result.truncated and not result.aborted
        assert result.final_image.height == 64 and result.final_image.encoding == "rgb8"
        bag = tmp_path / "run" / "bags" / "iter_000000"
        assert (bag / "iter_000000.mcap").is_file()
        adapters = tmp_path / "run" / "adapters" / "v000001"
        assert adapters.is_dir()
        policy_log = tmp_path / "logs" / "policy.log"
        watcher.wait_for(lambda: "loaded policy version 1" in policy_log.read_text(), 60,
                         "the policy node loading version 1")
        print(f"LIBERO graph: first policy version after {time.monotonic() - started:.1f} s")
    finally:
        supervisor.stop(grace_s=10.0)
        watcher.close()
