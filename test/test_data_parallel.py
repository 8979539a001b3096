"""Data-parallel PPO (issue 30): 2 gloo ranks on two halves of a batch = 1 process on the whole batch.

The ranks run under torchrun (test/helpers/data_parallel.py), exactly as ``vla-rl train`` and
the learner node do; the reference is the unchanged single-process update in this process.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data_parallel
from vla_rl_ros.core.rl import checkpoint as ckpt
from vla_rl_ros.core.rl.distributed import group_shares, shard_bounds

HELPER = Path(data_parallel.__file__)
TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(*args: str, nproc: int = 2, timeout: float = 600, env: dict | None = None
             ) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc args`` (one intra-op thread per rank)."""
    environment = dict(os.environ if env is None else env, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", *args], env=environment, capture_output=True,
                          text=True, timeout=timeout)


def test_shards_are_contiguous_near_equal_and_keep_groups_whole():
    assert shard_bounds(5, 2) == [0, 3, 5] and shard_bounds(1, 2) == [0, 1, 1]
    assert shard_bounds(0, 3) == [0] * 4
    plan = [(0, 1)] * 4 + [(1, 2)] * 4 + [(0, 3)] * 4
    shares = group_shares(plan, 4, 2)
    assert shares == [plan[:8], plan[8:]]
    assert group_shares(plan[:4], 4, 2) == [plan[:4], []]
    with pytest.raises(ValueError):
        shard_bounds(3, 0)


def test_two_ranks_on_halves_give_the_weights_of_one_rank_on_the_whole(tmp_path, one_torch_thread):
    out = tmp_path / "ranks.pt"
    done = torchrun(str(HELPER), str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = ckpt.load_state_file(out)
    for name in data_parallel.SCENARIOS:
        alone = data_parallel.run_scenario(name, None)
        for single, parallel in zip(alone["weights"], ranks[name]["weights"]):
            assert torch.allclose(single, parallel, rtol=1e-4, atol=2e-6), \
                f"{name}: max difference {float((single - parallel).abs().max()):.3g}"
        start = data_parallel.tiny_policy()
        assert any(not torch.equal(a, b) for a, b in zip(ckpt.trainable_tensors(start), alone["weights"]))
        for one, two in zip(alone["metrics"], ranks[name]["metrics"]):
            assert two["ppo/ranks"] == 2.0 and two["ppo/skipped"] == one["ppo/skipped"] == 0.0
            for key in ("ppo/optimizer_steps", "ppo/early_stop", "ppo/warmup"):
                assert one[key] == two[key], (name, key)
            for key in ("ppo/policy_loss", "ppo/approx_kl", "ppo/kl_ref", "ppo/grad_norm", "ppo/value_loss",
                        "ppo/advantage_mean", "ppo/explained_variance"):
                assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6, nan_ok=True), (name, key)


# ---------------------------------------------------------------------------- vla-rl train under torchrun
TOY = {"env": {"backend": "toy", "task_ids": [0, 1], "num_envs": 2, "image_size": 32, "max_episode_steps": 6},
       "policy": {"size": "tiny", "image_size": 32},
       "ppo": {"advantage_estimator": "critic", "critic_warmup_iters": 1, "minibatch_size": 8},
       "train": {"episodes_per_iter": 8, "group_size": 4, "eval_every": 0, "torch_threads": 1}}


def toy_config(path: Path, output_dir: Path, iterations: int) -> Path:
    """A params file of a small toy run (critic estimator: every iteration updates)."""
    import yaml
    settings = {**TOY, "train": {**TOY["train"], "iterations": iterations, "output_dir": str(output_dir)}}
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": settings}}))
    return path


def train_command(config: Path) -> list[str]:
    return ["-m", "vla_rl_ros.cli.main", "train", "--config", str(config), "--no-progress",
            "--no-tensorboard"]


def final_weights(output_dir: Path) -> list[torch.Tensor]:
    return ckpt.load_checkpoint(output_dir)["trainable"]


def test_train_resumes_exactly_with_the_same_world_size(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    for output_dir, iterations in ((straight, 3), (split, 2), (split, 3)):
        done = torchrun(*train_command(toy_config(tmp_path / "toy.yaml", output_dir, iterations)))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = ckpt.load_checkpoint(split)
    assert state["iteration"] == 3 and state["world_size"] == 2 and len(state["rank_decode"]) == 2
    assert all(h["ppo/ranks"] == 2.0 for h in state["history"])
    assert all(torch.equal(a, b) for a, b in zip(final_weights(straight), final_weights(split)))
    assert state["env_steps"] == ckpt.load_checkpoint(straight)["env_steps"]


def rank_pids(parent: int) -> dict[int, int]:
    """RANK -> pid of the worker processes torchrun ``parent`` started (from /proc)."""
    found = {}
    pending = [parent]
    while pending:
        pid = pending.pop()
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            pending += [int(c) for c in task.read_text().split()]
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"RANK=")]
        if ranks and pid != parent:
            found[int(ranks[0])] = pid
    return found


def test_a_killed_rank_fails_the_job_clearly_and_the_checkpoint_resumes_on_one_rank(tmp_path):
    import signal
    import time
    from vla_rl_ros.core.config import load_config
    from vla_rl_ros.core.rl.train_loop import TrainingRun
    output_dir = tmp_path / "run"
    config = toy_config(tmp_path / "toy.yaml", output_dir, 200)
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    job = subprocess.Popen([*TORCHRUN_2, *train_command(config)], env=environment, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        metrics = output_dir / "metrics.jsonl"
        deadline = time.monotonic() + 300
        # Iteration 3's metrics are logged after checkpoint 2 was committed.
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()[-3000:]
            time.sleep(0.2)
        pids = rank_pids(job.pid)
        assert sorted(pids) == [0, 1], pids
        os.kill(pids[1], signal.SIGKILL)
        output, _ = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    # torchrun names the rank that failed first and how; a survivor caught in a collective says
    # what happened in one line (DistributedError) unless torchrun stopped it first.
    root_cause = output.split("Root Cause (first observed failure)")[-1]
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", root_cause) and "Signal 9 (SIGKILL)" in root_cause, \
        output[-3000:]
    state = ckpt.load_checkpoint(output_dir)
    assert state is not None and state["iteration"] >= 2 and state["world_size"] == 2
    cfg = load_config(str(config), [f"train.iterations={state['iteration'] + 1}"])
    summary = TrainingRun(cfg, progress_bar=False, tensorboard=False, ranks=None).run()
    assert summary["resumed"] and summary["iterations"] == state["iteration"] + 1 and summary["ranks"] == 1
    assert ckpt.load_checkpoint(output_dir)["history"][-1]["ppo/skipped"] == 0.0


def test_a_survivor_in_a_collective_says_in_one_line_what_happened(tmp_path):
    out = tmp_path / "message.txt"
    # torchrun would stop the survivor within 0.1 s; a slow monitor lets it meet the lost peer.
    done = torchrun("--monitor-interval=30", str(HELPER), "--lose-rank-1", str(out), timeout=300)
    assert done.returncode != 0
    message = out.read_text()
    assert message.startswith("rank 0 of 2: gradient all-reduce failed (")
    assert "Connection closed by peer" in message
    assert "the last one is intact" in message and "with any number of ranks" in message


# ---------------------------------------------------------------------------- the learner node under torchrun
LEARNER = {"env.backend": "toy", "env.image_size": 32, "env.task_ids": [0, 1], "env.num_envs": 2,
           "env.max_episode_steps": 8, "policy.size": "tiny", "policy.image_size": 32,
           "ppo.minibatch_size": 4, "ppo.critic_warmup_iters": 1, "ppo.epochs": 2, "train.torch_threads": 1,
           "ppo.advantage_estimator": "critic"}  # the bags are not recorded in groups of one context


def write_bags(directory: Path, count: int, per_bag: int) -> list[Path]:
    """``count`` bags of ``per_bag`` toy episodes each, as the recorder writes them (bridge 'b')."""
    import numpy as np
    from rclpy.serialization import serialize_message

    from vla_rl_ros.core.config import load_config
    from vla_rl_ros.core.envs.base import Observation
    from vla_rl_ros.core.rl.rollout import collect_episodes, policy_decoder
    from vla_rl_ros.core.rl.train_loop import build_policy, make_env
    from vla_rl_ros.graph import topics
    from vla_rl_ros.nodes import convert
    from vla_rl_ros.nodes.trajectory_bags import TrajectoryBagWriter, typestore
    cfg = load_config(None, [f"{k}={v}".replace(" ", "") for k, v in LEARNER.items()])
    policy, env = build_policy(cfg), make_env(cfg.env)
    try:
        episodes = collect_episodes(env, policy_decoder(policy, generator=torch.Generator().manual_seed(3)),
                                    [(i % 2, i) for i in range(count * per_bag)])
    finally:
        env.close()
    paths, seq = [], 0
    for index in range(count):
        path = directory / f"iter_{index:06d}"
        writer = TrajectoryBagWriter(path, typestore())
        for number in range(index * per_bag, (index + 1) * per_bag):
            episode, step = episodes[number], 0
            for t in range(episode.length):
                seq += 1
                obs = Observation(image=episode.images[t], instruction=episode.instruction,
                                  proprio=episode.proprio[t], task_id=episode.task_id, init_state_id=0,
                                  step=step)
                writer.write(topics.OBSERVATIONS, serialize_message(
                    convert.observations_to_msg("b", seq, [0], [number], [obs])), 10 * seq)
                writer.write(topics.ACTIONS, serialize_message(convert.actions_to_msg(
                    "b", seq, [0], 0, episode.tokens[t][None], episode.actions[t][None],
                    episode.log_probs[t][None], np.array([episode.values[t]]), 1.0)), 10 * seq + 1)
                step += episode.executed[t]
            final = Observation(image=episode.images[-1], instruction=episode.instruction,
                                proprio=episode.proprio[-1], task_id=episode.task_id, init_state_id=0)
            writer.write(topics.EPISODE_RESULTS, serialize_message(convert.episode_result_to_msg(
                "b", 0, number, episode.task_id, episode.init_state_id, episode.env_steps, episode.success,
                episode.truncated, False, final_observation=final, num_decisions=episode.length,
                last_step_seq=seq)), 10 * seq + 2)
        writer.close()
        paths.append(path)
    return paths


def adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from vla_rl_ros.core.policy.lora import WEIGHTS_FILE
    return load_file(str(directory / WEIGHTS_FILE))


def test_the_learner_node_under_torchrun_trains_as_one_process(tmp_path, monkeypatch, one_torch_thread):
    import signal
    import time

    import rclpy
    import yaml
    from rclpy.parameter import Parameter

    from dds_domains import isolate_dds, loopback_dds_env
    from vla_rl_ros.nodes.learner_node import LearnerNode
    bags = tmp_path / "bags"
    write_bags(bags, count=2, per_bag=3)

    # One process, in this one.
    isolate_dds(monkeypatch)
    context = rclpy.Context()
    rclpy.init(context=context)
    settings = {**LEARNER, "offline_bag_dir": str(bags), "train.output_dir": str(tmp_path / "alone")}
    overrides = [Parameter(k, value=v) for k, v in settings.items()]
    node = LearnerNode(context=context, parameter_overrides=overrides)
    try:
        assert node.version == 2
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)

    # Two ranks: rank 0 is the node, rank 1 serves its updates; SIGTERM to rank 0 stops both cleanly.
    params = tmp_path / "learner.yaml"
    params.write_text(yaml.safe_dump({"learner": {"ros__parameters": {
        **settings, "train.output_dir": str(tmp_path / "ranks")}}}))
    environment = dict(loopback_dds_env(), OMP_NUM_THREADS="1")
    job = subprocess.Popen([*TORCHRUN_2, "-m", "vla_rl_ros.nodes.learner_node", "--ros-args",
                            "--params-file", str(params)],
                           env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        state = ckpt.checkpoint_dir(tmp_path / "ranks") / ckpt.STATE_FILE
        deadline = time.monotonic() + 300
        while not (state.is_file() and ckpt.load_state_file(state)["version"] == 2):
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()[-3000:]
            time.sleep(0.5)
        os.kill(rank_pids(job.pid)[0], signal.SIGTERM)
        output, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output[-3000:]
    history = ckpt.load_state_file(state)["history"]
    assert [h["ppo/ranks"] for h in history] == [2.0, 2.0] and history[0]["ppo/warmup"] == 1.0
    for version in (1, 2):
        alone = adapter_weights(tmp_path / "alone" / "adapters" / f"v{version:06d}")
        ranks = adapter_weights(tmp_path / "ranks" / "adapters" / f"v{version:06d}")
        assert alone.keys() == ranks.keys()
        for name in alone:
            assert torch.allclose(alone[name], ranks[name], rtol=1e-4, atol=2e-6), (version, name)
