"""Honest evaluation: held-out init states, several seeds, Wilson intervals, throughput, hardware.

Every result records the renderer and the hardware it was measured on, because LIBERO success
rates shift with both (EGL vs OSMesa, GPU model).
"""
from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vla_rl_ros.core.envs.base import Observation
from vla_rl_ros.core.envs.config import EnvConfig
from vla_rl_ros.core.envs.splits import eval_init_states, is_held_out


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate (95 % for z=1.96); (0, 1) when there are no trials."""
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"wilson_interval: need 0 <= successes ({successes}) <= trials ({trials})")
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    denominator = 1 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def hardware_description() -> dict:
    """CPU, core count, torch version and GPU (if any) of this machine."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    description = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                   "python": platform.python_version()}
    try:
        import torch
        description["torch"] = torch.__version__
        description["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return description


class _Actions:
    """A plain actor's reply in the decoder shape: its actions, and no tokens, log-probs or values."""

    def __init__(self, actions: np.ndarray) -> None:
        self.actions = actions
        self.tokens = np.zeros((len(actions), 0), dtype=np.int64)
        self.log_probs = np.zeros((len(actions), 0), dtype=np.float32)
        self.values = np.zeros(len(actions), dtype=np.float32)


def evaluation_decoder(policy, seed: int, greedy: bool = True, best_of: int = 1, scorer=None):
    """The decode of one evaluation seed for :func:`~vla_rl_ros.core.rl.rollout.collect_episodes`.

    ``policy`` is a :class:`VLAPolicy` (batched ``decode``) or a plain callable
    ``observations -> actions`` ([B, 7] or chunks [B, K, 7]). ``best_of`` > 1 samples that many
    candidate chunks per observation at the policy's temperature in one batched decode and executes
    the one ``scorer`` rates highest (default: likelihood); ``best_of`` = 1 decodes greedily unless
    ``greedy`` is False. Sampling draws from a generator seeded with ``seed``, so a seed replays
    the same actions.
    """
    if best_of < 1:
        raise ValueError(f"best-of-N needs N >= 1, got {best_of}")
    if not hasattr(policy, "decode"):
        if best_of > 1:
            raise ValueError("best-of-N needs a policy with a batched decode (a VLAPolicy)")

        def act(observations: list[Observation]) -> _Actions:
            return _Actions(np.asarray(policy(observations), dtype=np.float32))
        act.wants_observations = True  # type: ignore[attr-defined]
        return act
    import torch

    from vla_rl_ros.core.rl.best_of_n import best_of_n_decode
    sampling = best_of > 1 or not greedy
    generator = torch.Generator(device=policy.device).manual_seed(seed) if sampling else None

    def decode(observations: list[Observation]):
        images = np.stack([o.image for o in observations])
        instructions = [o.instruction for o in observations]
        proprio = np.stack([o.proprio for o in observations])
        if best_of > 1:
            return best_of_n_decode(policy, images, instructions, best_of, scorer, generator, proprio)
        return policy.decode(images, instructions, greedy=greedy, generator=generator, proprio=proprio)
    decode.wants_observations = True  # type: ignore[attr-defined]
    return decode


def plan_evaluation(task_ids: Sequence[int], init_state_ids: Sequence[int], seeds: Sequence[int],
                    episodes_per_task: int = 0) -> list[tuple[int, int, int]]:
    """List the (task, init state, seed) episodes to run, grouped by task.

    Each seed draws its own subset of init states when ``episodes_per_task`` is smaller than the
    number of given states (0 = all of them).
    """
    plan = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for task in task_ids:
            states = list(init_state_ids)
            if 0 < episodes_per_task < len(states):
                states = sorted(rng.choice(states, size=episodes_per_task, replace=False).tolist())
            plan.extend((task, int(state), seed) for state in states)
    return sorted(plan)  # grouped by task: a task switch rebuilds the scene


def evaluate_policy(policy, env_cfg: EnvConfig, seeds: Sequence[int] = (0,), episodes_per_task: int = 0,
                    init_state_ids: Sequence[int] | None = None, greedy: bool = True, vector_env=None,
                    video_dir: str | Path | None = None, num_videos: int = 0, progress: bool = True,
                    best_of: int = 1, scorer=None) -> dict:
    """Success per task and overall on held-out init states, with 95 % Wilson intervals.

    ``policy`` is a VLAPolicy or a callable ``observations -> actions``. Init states default
    to the held-out ids (``>= env.num_train_init_states``); training ids are never used unless
    passed explicitly. Aborted episodes (crashed workers) are counted apart, not as failures.
    ``best_of``/``scorer``: test-time best-of-N action selection (see :func:`evaluation_decoder`).
    The environment is ``env.backend``'s (LIBERO or toy) unless ``vector_env`` is given. The
    episodes run through the training rollout loop (``collect_episodes``), one pass per seed.
    """
    from tqdm import tqdm

    from vla_rl_ros.core.envs.vector import make_vector_env
    from vla_rl_ros.core.rl.rollout import collect_episodes
    held_out = eval_init_states(env_cfg.num_train_init_states)
    init_state_ids = held_out if init_state_ids is None else list(init_state_ids)
    plan = plan_evaluation(env_cfg.task_ids, init_state_ids, seeds, episodes_per_task)
    envs = vector_env or make_vector_env(env_cfg)
    episodes, videos = [], []
    bar = tqdm(total=len(plan), desc="eval", unit="ep", disable=not progress)
    start, steps = time.time(), 0
    try:
        for seed in seeds:
            assignments = [(task, state) for task, state, s in plan if s == seed]
            keep = video_dir is not None and len(videos) < num_videos
            finished = collect_episodes(envs, evaluation_decoder(policy, seed, greedy, best_of, scorer),
                                        assignments, keep_observations=keep, seed=seed,
                                        on_episode=lambda _: bar.update(1))
            for episode in sorted(finished, key=lambda e: (e.task_id, e.init_state_id)):
                steps += episode.env_steps
                record = dict(task_id=episode.task_id, init_state_id=episode.init_state_id, seed=seed,
                              success=bool(episode.success), aborted=bool(episode.aborted),
                              steps=episode.env_steps, decisions=episode.length)
                episodes.append(record)
                if keep and len(videos) < num_videos:
                    videos.append(_write_video(video_dir, record, episode.images))
    finally:
        bar.close()
        if vector_env is None:
            envs.close()
    wall = time.time() - start
    result = summarize(episodes, env_cfg, seeds, wall, steps, greedy and best_of == 1, init_state_ids, videos)
    result["best_of"] = best_of
    return result


def success_counts(successes: int, episodes: int, aborted: int = 0) -> dict:
    """The success record every evaluation reports: counts, rate and its Wilson 95 % interval."""
    low, high = wilson_interval(successes, episodes)
    return dict(successes=successes, episodes=episodes, aborted=aborted,
                success_rate=successes / episodes if episodes else 0.0, ci95=[round(low, 4), round(high, 4)])


def summarize(episodes: list[dict], env_cfg: EnvConfig, seeds: Sequence[int], wall_s: float, steps: int,
              greedy: bool, init_state_ids: Sequence[int], videos: list[str]) -> dict:
    """Per-task, per-seed and overall success with Wilson intervals, plus throughput and hardware."""
    from vla_rl_ros.core.envs.rendering import describe_renderer

    def rate(subset: list[dict]) -> dict:
        counted = [e for e in subset if not e["aborted"]]
        return success_counts(sum(e["success"] for e in counted), len(counted), len(subset) - len(counted))
    per_task = {str(t): rate([e for e in episodes if e["task_id"] == t]) for t in env_cfg.task_ids}
    per_seed = {str(s): rate([e for e in episodes if e["seed"] == s]) for s in seeds}
    seed_rates = [v["success_rate"] for v in per_seed.values() if v["episodes"]]
    return dict(backend=env_cfg.backend, suite=env_cfg.suite, task_ids=list(env_cfg.task_ids),
                seeds=list(seeds), greedy=greedy, init_state_ids=list(init_state_ids),
                uses_training_init_states=any(not is_held_out(i, env_cfg.num_train_init_states)
                                              for i in init_state_ids),
                overall=rate(episodes), per_task=per_task, per_seed=per_seed,
                seed_std=float(np.std(seed_rates)) if seed_rates else 0.0,
                wall_s=round(wall_s, 1), episodes_per_hour=round(3600 * len(episodes) / max(wall_s, 1e-9), 1),
                env_steps_per_s=round(steps / max(wall_s, 1e-9), 2), num_envs=env_cfg.num_envs,
                renderer=dict(describe_renderer(), mujoco_gl=env_cfg.renderer,
                              render_gpus=list(env_cfg.render_gpus), image_size=env_cfg.image_size),
                hardware=hardware_description(), videos=videos, episodes=episodes)


def evaluate_scaling(policy, env_cfg: EnvConfig, best_of_values: Sequence[int], scorer=None,
                     seeds: Sequence[int] = (0,), episodes_per_task: int = 0,
                     init_state_ids: Sequence[int] | None = None, vector_env=None,
                     progress: bool = True, on_point: Callable[[dict], None] | None = None) -> dict:
    """Inference-scaling curve: held-out success of best-of-N decoding for each N.

    Every N runs the same episodes (same seeds, tasks and init states) and restarts the
    per-seed generators, so the points differ only by N. N = 1 is one sample at the policy's
    temperature, not greedy, so every point uses the same sampling distribution. Returns
    ``per_n`` (``{N: success_rate, ci95, successes, episodes, aborted, per_task, wall_s,
    env_steps_per_s}``, the last two the price of N)
    plus the setting shared by all points (suite, tasks, init states, renderer, hardware), and
    ``pending``, the N not yet measured (empty when done). ``on_point`` gets that partial curve
    after each N: a LIBERO curve takes hours on a CPU, and a crash must not cost finished points.
    """
    best_of_values = sorted({int(n) for n in best_of_values})
    if not best_of_values or best_of_values[0] < 1:
        raise ValueError(f"best-of-N needs every N >= 1, got {best_of_values}")
    from vla_rl_ros.core.envs.vector import make_vector_env
    envs = vector_env or make_vector_env(env_cfg)  # one env for every N: LIBERO start-up is slow
    per_n, last = {}, {}
    try:
        for n in best_of_values:
            last = evaluate_policy(policy, env_cfg, seeds, episodes_per_task, init_state_ids, greedy=False,
                                   vector_env=envs, progress=progress, best_of=n, scorer=scorer)
            per_n[n] = dict(last["overall"], per_task=last["per_task"], wall_s=last["wall_s"],
                            env_steps_per_s=last["env_steps_per_s"])
            if on_point is not None:
                on_point(_curve(last, best_of_values, per_n))
    finally:
        if vector_env is None:
            envs.close()
    return _curve(last, best_of_values, per_n)


def _curve(last: dict, best_of_values: list[int], per_n: dict) -> dict:
    shared = ("backend", "suite", "task_ids", "seeds", "init_state_ids", "uses_training_init_states",
              "num_envs", "renderer", "hardware")
    return dict({key: last[key] for key in shared}, best_of=best_of_values, per_n=dict(per_n),
                pending=[n for n in best_of_values if n not in per_n])


def _write_video(video_dir: str | Path, episode: dict, frames: list[np.ndarray]) -> str:
    import imageio.v2 as imageio
    directory = Path(video_dir)
    directory.mkdir(parents=True, exist_ok=True)
    outcome = "success" if episode["success"] else "failure"
    path = directory / (f"task{episode['task_id']:02d}_init{episode['init_state_id']:02d}"
                        f"_seed{episode['seed']}_{outcome}.gif")
    imageio.mimsave(path, frames, duration=0.1, loop=0)  # one frame per decision
    return str(path)
