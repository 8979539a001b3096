"""``vla-rl bench graph``: env steps/s of the ROS graph against the in-process rollout loop.

Both measurements run in one invocation with the same environments, model and decoding
(greedy, so both do the same work per step): first the in-process loop (decode a chunk, run it,
reset finished envs), then the eval graph (sim_bridge + policy + recorder as processes over
loopback DDS), timed from outside on the ObservationBatches after a warm-up. ``steps`` counts
decisions; env steps are what the chunks executed (K per decision, fewer where an episode ended).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from vla_rl_ros.core.config_io import from_dict, merge, to_dict


def in_process_steps_per_s(cfg, steps: int, warmup: int) -> dict:
    """Env steps/s of decode -> step_chunk -> reset-finished in one process."""
    import torch

    from vla_rl_ros.core.rl.train_loop import build_policy, make_env
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)  # what the policy node does with the same config
    policy, env = build_policy(cfg), make_env(cfg.env)
    rng = np.random.default_rng(cfg.env.seed)
    tasks = list(cfg.env.task_ids)

    def pick():
        return (int(rng.choice(tasks)), int(rng.integers(cfg.env.num_train_init_states)))
    try:
        observations = env.reset([pick() for _ in range(env.num_envs)])
        started, done_steps = None, 0
        for index in range(warmup + steps):
            if index == warmup:
                started = time.perf_counter()
            out = policy.decode(np.stack([o.image for o in observations]),
                                [o.instruction for o in observations], greedy=True,
                                proprio=np.stack([o.proprio for o in observations]))
            chunks = np.asarray(out.actions, np.float32).reshape(env.num_envs, -1, 7)
            results = env.step_chunk(chunks)
            observations = [r.observation for r in results]
            finished = [i for i, r in enumerate(results) if r.done]
            if finished:
                for i, obs in zip(finished, env.reset([pick() for _ in finished], finished)):
                    observations[i] = obs
            if index >= warmup:
                done_steps += sum(int(r.info.get("executed", chunks.shape[1])) for r in results)
        elapsed = time.perf_counter() - started
    finally:
        env.close()
    return {"env_steps": done_steps, "seconds": elapsed, "env_steps_per_s": done_steps / elapsed}


def graph_steps_per_s(cfg, steps: int, warmup: int, timeout_s: float = 600.0) -> dict:
    """Env steps/s of the eval graph's processes, counted on the observations and episode results."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from vla_rl_ros.cli.launch_cmd import Supervisor
    from vla_rl_ros.graph import topics
    from vla_rl_ros.graph.description import build_graph
    from vla_rl_ros.msg import EpisodeResult, ObservationBatch
    from vla_rl_ros.nodes import qos

    with tempfile.TemporaryDirectory(prefix="vla_rl_bench_graph_") as tmp:
        data = merge(to_dict(cfg), {"graph": {"bag_dir": str(Path(tmp) / "bags")},
                                    "train": {"output_dir": str(Path(tmp) / "run")}})
        params = Path(tmp) / "params.yaml"
        params.write_text(yaml.safe_dump({"/**": {"ros__parameters": data}}))
        graph = build_graph("eval_sim", config=str(params))
        for spec in graph.nodes:
            if spec.role == "sim_bridge":
                spec.parameters["init_states"] = "train"  # the in-process loop uses training init states
        context = rclpy.Context()
        rclpy.init(context=context)
        node = Node("graph_bench", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        stamps: list[float] = []
        batches: list[list[tuple[int, int, int]]] = []
        ends: dict[tuple[int, int], int] = {}

        def on_observations(msg) -> None:
            stamps.append(time.perf_counter())
            batches.append(list(zip(msg.env_ids, msg.episode_ids, msg.step_indices)))
        node.create_subscription(ObservationBatch, topics.OBSERVATIONS, on_observations, qos.BATCH)
        node.create_subscription(EpisodeResult, topics.EPISODE_RESULTS,
                                 lambda msg: ends.__setitem__((msg.env_id, msg.episode_id), msg.num_steps),
                                 qos.BATCH)
        supervisor = Supervisor(graph, log_dir=str(Path(tmp) / "logs"))
        supervisor.start()
        try:
            deadline = time.monotonic() + timeout_s
            while len(stamps) < warmup + steps + 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"graph produced {len(stamps)} batches in {timeout_s} s")
                dead = [label for label, (_, p) in supervisor.processes.items() if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"graph node(s) {dead} died; logs in {tmp}/logs")
                executor.spin_once(timeout_sec=0.1)
        finally:
            supervisor.stop()
            executor.shutdown()
            node.destroy_node()
            rclpy.shutdown(context=context)
    elapsed = stamps[-1] - stamps[warmup]
    env_steps = sum(_executed(before, after, ends, cfg.policy.chunk_size)
                    for before, after in zip(batches[warmup:-1], batches[warmup + 1:]))
    return {"env_steps": env_steps, "seconds": elapsed, "env_steps_per_s": env_steps / elapsed}


def _executed(before, after, ends: dict, chunk_size: int) -> int:
    """Env steps the bridge ran between two ObservationBatches (entries ``(env, episode, step)``).

    Per env: the step index gained, or the rest of an episode that ended (by its EpisodeResult)
    plus the new episode's steps.
    """
    total = 0
    for (env, episode, step), (_, next_episode, next_step) in zip(before, after):
        if next_episode == episode:
            total += next_step - step
        else:
            total += ends.get((env, episode), step + chunk_size) - step + next_step
    return total


def bench_graph(cfg, steps: int = 50, warmup: int = 5, rounds: int = 3) -> dict:
    """Both throughputs and their ratio (graph / in-process), with the set-up that produced them."""
    from vla_rl_ros.core.config import ExperimentConfig
    cfg = from_dict(ExperimentConfig, to_dict(cfg))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    # Alternate the two (in-process, graph, in-process, ...) so that a change in machine load
    # biases neither; the ratio is the median of the per-round ratios (paired measurements).
    runs = {"in_process": [], "graph": []}
    for _ in range(rounds):
        runs["in_process"].append(in_process_steps_per_s(cfg, steps, warmup))
        runs["graph"].append(graph_steps_per_s(cfg, steps, warmup))
    inproc, graph = ({"env_steps_per_s": float(np.median([r["env_steps_per_s"] for r in runs[k]])),
                      "runs": runs[k]} for k in ("in_process", "graph"))
    ratios = [g["env_steps_per_s"] / i["env_steps_per_s"] for i, g in zip(runs["in_process"], runs["graph"])]
    return {"target": "graph", "env_backend": cfg.env.backend, "num_envs": cfg.env.num_envs,
            "policy_size": cfg.policy.size if not cfg.policy.model_path else cfg.policy.model_path,
            "image_size": cfg.env.image_size, "steps_per_measurement": steps, "in_process": inproc,
            "graph": graph,
            "ratio_graph_over_in_process": float(np.median(ratios)), "ratio_per_round": ratios,
            "torch_threads": cfg.train.torch_threads, "cpu_count": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0]}
