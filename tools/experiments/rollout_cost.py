"""Experiment (not a test): where a LIBERO rollout step's time goes, and RL rollout throughput.

Three measurements, written to one JSON (``--out``):

1. ``step_parts``: one LiberoEnv in this process: milliseconds of a physics-only control step,
   of one rendered frame, and of a reset (settle steps included), on the default set's first task.
2. ``decode``: milliseconds per policy call and per executed action of the given policy (batch =
   ``env.num_envs``), and, with ``--compare-decoding K``, of fresh small models emitting one
   action (K = 1), or K actions autoregressively or in parallel (weights do not change the cost).
3. ``rollout``: the training rollout loop itself (``collect_episodes``, ``env.num_envs`` worker
   processes, sampled at ``policy.temperature``) on training init states: env steps/s,
   episodes/hour, decisions and frames per env step, and the share of wall time in decoding.

Run it once with the K = 1 policy (before) and once with the chunked policy (after)::

    MUJOCO_GL=egl .venv/bin/python tools/experiments/rollout_cost.py --config config/train_sim.yaml \\
        --policy checkpoints/default/policy --episodes 24 --out docs/results/learning/rollout_cost_k8.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for vla_rl_ros


def step_parts(env_cfg, repeats: int) -> dict:
    """Physics step, rendered frame and reset costs of one in-process LiberoEnv (milliseconds)."""
    from vla_rl_ros.core.envs.libero_env import NOOP_ACTION, LiberoEnv
    from vla_rl_ros.core.envs.rendering import apply_gl_environment
    apply_gl_environment(env_cfg.renderer, None)
    env = LiberoEnv(env_cfg.suite, image_size=env_cfg.image_size, settle_steps=env_cfg.settle_steps,
                    visual_mesh_faces=env_cfg.visual_mesh_faces)
    try:
        env.reset(env_cfg.task_ids[0], 0)
        times = {"physics_step_ms": [], "render_frame_ms": [], "reset_ms": []}
        for _ in range(repeats):
            start = time.perf_counter()
            env._physics_step(NOOP_ACTION)
            times["physics_step_ms"].append(time.perf_counter() - start)
            start = time.perf_counter()
            env.render_camera("agentview")
            times["render_frame_ms"].append(time.perf_counter() - start)
        for i in range(3):
            start = time.perf_counter()
            env.reset(env_cfg.task_ids[0], i)
            times["reset_ms"].append(time.perf_counter() - start)
        return {k: round(1000 * float(np.median(v)), 2) for k, v in times.items()}
    finally:
        env.close()


def decode_cost(policy, batch: int, repeats: int) -> dict:
    """Median milliseconds per call and per action of ``policy.decode`` on a batch of frames."""
    import torch
    size = policy.arch.image_size
    images = np.random.default_rng(0).integers(0, 255, size=(batch, size, size, 3), dtype=np.uint8)
    texts = ["pick up the butter and place it in the basket"] * batch
    proprio = np.zeros((batch, 8), dtype=np.float32)
    generator = torch.Generator().manual_seed(0)
    policy.decode(images, texts, generator=generator, proprio=proprio)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy.decode(images, texts, generator=generator, proprio=proprio)
        times.append(time.perf_counter() - start)
    call = 1000 * float(np.median(times))
    return {"batch": batch, "chunk_size": policy.chunk_size, "decoding": policy.arch.chunk_decoding,
            "ms_per_call": round(call, 2), "ms_per_action": round(call / policy.chunk_size, 2)}


def compare_decoding(cfg, chunk: int, batch: int, repeats: int) -> list[dict]:
    """Decode cost of fresh small models: one action per call, K autoregressive, K parallel."""
    from dataclasses import replace

    from vla_rl_ros.core.policy import VLAPolicy
    rows = []
    for size, decoding in ((1, "autoregressive"), (chunk, "autoregressive"), (chunk, "parallel")):
        fresh = replace(cfg.policy, model_path="", chunk_size=size, chunk_decoding=decoding)
        policy = VLAPolicy.create(fresh)
        rows.append(decode_cost(policy, batch, repeats))
    return rows


def rollout(policy, env_cfg, episodes: int, seed: int) -> dict:
    """Throughput of the training rollout loop on training init states (sampled decoding)."""
    import torch

    from vla_rl_ros.core.envs.vector import make_vector_env
    from vla_rl_ros.core.rl.rollout import collect_episodes, policy_decoder
    rng = np.random.default_rng(seed)
    plan = [(env_cfg.task_ids[k % len(env_cfg.task_ids)], int(rng.integers(0, env_cfg.num_train_init_states)))
            for k in range(episodes)]
    env = make_vector_env(env_cfg)
    decode = policy_decoder(policy, generator=torch.Generator().manual_seed(seed))
    spent = [0.0]

    def timed(observations):
        start = time.perf_counter()
        out = decode(observations)
        spent[0] += time.perf_counter() - start
        return out
    timed.wants_observations = True
    try:
        env.reset([plan[i] for i in range(env.num_envs)])  # scene builds are not rollout cost
        start = time.perf_counter()
        done = collect_episodes(env, timed, plan, keep_observations=False)
        wall = time.perf_counter() - start
    finally:
        env.close()
    steps = sum(e.env_steps for e in done)
    decisions = sum(e.length for e in done)
    return {"episodes": len(done), "successes": int(sum(e.success for e in done)), "env_steps": steps,
            "wall_s": round(wall, 1), "env_steps_per_s": round(steps / wall, 1),
            "episodes_per_hour": round(3600 * len(done) / wall, 1),
            "decisions_per_env_step": round(decisions / max(steps, 1), 4),
            "decode_share": round(spent[0] / wall, 3), "num_envs": env_cfg.num_envs,
            "temperature": policy.cfg.temperature}


def main(argv: list[str] | None = None) -> dict:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/train_sim.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--policy", required=True,
                        help="policy directory (its chunk size must match the config)")
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--compare-decoding", type=int, default=0, metavar="K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import torch

    from vla_rl_ros.core.config import load_config
    from vla_rl_ros.core.evaluation import hardware_description
    from vla_rl_ros.core.policy import VLAPolicy
    cfg = load_config(args.config, args.overrides + [f"policy.model_path={args.policy}"])
    torch.set_num_threads(1)  # the rollout's main process shares 2 cores with the env workers
    policy = VLAPolicy.from_config(cfg.policy)
    result = {"command": " ".join(sys.argv), "policy": args.policy, "chunk_size": policy.chunk_size,
              "suite": cfg.env.suite, "task_ids": list(cfg.env.task_ids), "image_size": cfg.env.image_size,
              "visual_mesh_faces": cfg.env.visual_mesh_faces,
              "mujoco_gl": os.environ.get("MUJOCO_GL", ""), "hardware": hardware_description()}
    result["step_parts"] = step_parts(cfg.env, args.repeats)
    result["decode"] = decode_cost(policy, cfg.env.num_envs, args.repeats)
    if args.compare_decoding:
        result["decode_comparison"] = compare_decoding(cfg, args.compare_decoding, cfg.env.num_envs,
                                                       args.repeats)
    result["rollout"] = rollout(policy, cfg.env, args.episodes, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("step_parts", "decode", "rollout")}, indent=1))
    return result


if __name__ == "__main__":
    main()
