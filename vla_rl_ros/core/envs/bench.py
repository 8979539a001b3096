"""Environment throughput: vectorised steps/s against the raw simulator's own step rate.

1 and 2 workers, rendering on and off, all measured in the same run on the same machine.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from vla_rl_ros.core.envs.config import EnvConfig


def _raw_rate(cfg: EnvConfig, render: bool, steps: int, warmup: int) -> float:
    """Steps/s of one LiberoEnv in this process (no pipes); ``render`` renders a frame per step."""
    from vla_rl_ros.core.envs.libero_env import NOOP_ACTION, LiberoEnv
    from vla_rl_ros.core.envs.rendering import apply_gl_environment
    apply_gl_environment(cfg.renderer, None)
    env = LiberoEnv(cfg.suite, image_size=cfg.image_size, wrist_camera=cfg.wrist_camera, render=render,
                    settle_steps=0)
    try:
        env.reset(cfg.task_ids[0], 0)
        for _ in range(warmup):
            env.step(NOOP_ACTION)
        start = time.perf_counter()
        for _ in range(steps):
            env.step(NOOP_ACTION)
            if env.done:
                env.reset(cfg.task_ids[0], 0)
        return steps / (time.perf_counter() - start)
    finally:
        env.close()


def _vector_rate(cfg: EnvConfig, steps: int, warmup: int) -> float:
    """Total env steps/s of a VectorEnv (all workers stepping together, zero actions)."""
    from vla_rl_ros.core.envs.vector import VectorEnv
    envs = VectorEnv(cfg)
    try:
        envs.reset([(cfg.task_ids[i % len(cfg.task_ids)], i) for i in range(cfg.num_envs)])
        actions = np.zeros((cfg.num_envs, 7), dtype=np.float32)
        actions[:, -1] = -1.0
        for _ in range(warmup):
            envs.step(actions)
        start = time.perf_counter()
        for _ in range(steps):
            envs.step(actions)
        return cfg.num_envs * steps / (time.perf_counter() - start)
    finally:
        envs.close()


def bench_env(cfg: EnvConfig, steps: int = 20, warmup: int = 3, env_counts: tuple[int, ...] = (1, 2)) -> dict:
    """JSON-ready steps/s table: raw simulator (render off/on) and VectorEnv for ``env_counts``."""
    from vla_rl_ros.core.envs.rendering import describe_renderer
    from vla_rl_ros.core.evaluation import hardware_description
    steps = min(steps, 200)  # stay below every suite's episode cap
    raw = {"render_off": _raw_rate(cfg, False, steps, warmup),
           "render_on": _raw_rate(cfg, True, steps, warmup)}
    vector = {}
    for render in (False, True):
        for count in env_counts:
            rate = _vector_rate(replace(cfg, num_envs=count, render=render), steps, warmup)
            vector[f"{count}_envs_render_{'on' if render else 'off'}"] = rate
    return {"suite": cfg.suite, "task_id": cfg.task_ids[0], "image_size": cfg.image_size,
            "wrist_camera": cfg.wrist_camera, "steps_timed": steps,
            "raw_simulator_steps_per_s": {k: round(v, 2) for k, v in raw.items()},
            "vector_env_steps_per_s": {k: round(v, 2) for k, v in vector.items()},
            "fraction_of_raw": {k: round(v / raw["render_on" if k.endswith("on") else "render_off"], 3)
                                for k, v in vector.items()},
            "renderer": dict(describe_renderer(), configured=cfg.renderer),
            "hardware": hardware_description()}
