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

from vla_rl_ros.core.envs.base import ACTION_DIM, Observation
from vla_rl_ros.core.envs.config import EnvConfig
from vla_rl_ros.core.envs.splits import eval_init_states


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


def policy_actor(policy, greedy: bool = True, best_of: int = 1,
                 scorer=None) -> Callable[[list[Observation], int], np.ndarray]:
    """Wrap a :class:`VLAPolicy` (batched ``decode``) or a plain callable as ``act(observations, seed)``.

    ``best_of`` > 1 samples that many candidates per observation at the policy's temperature in
    one batched decode and executes the one ``scorer`` rates highest (default: likelihood);
    ``best_of`` = 1 decodes greedily unless ``greedy`` is False. Sampling draws from one
    generator per seed, so a seed replays the same actions.
    """
    if best_of < 1:
        raise ValueError(f"best-of-N needs N >= 1, got {best_of}")
    if not hasattr(policy, "decode"):
        if best_of > 1:
            raise ValueError("best-of-N needs a policy with a batched decode (a VLAPolicy)")
        return lambda observations, seed: np.asarray(policy(observations), dtype=np.float32)
    import torch

    from vla_rl_ros.core.rl.best_of_n import best_of_n_decode
    sampling = best_of > 1 or not greedy
    generators: dict[int, torch.Generator] = {}

    def act(observations: list[Observation], seed: int) -> np.ndarray:
        generator = None
        if sampling:
            if seed not in generators:
                generators[seed] = torch.Generator(device=policy.device).manual_seed(seed)
            generator = generators[seed]
        images = np.stack([o.image for o in observations])
        instructions = [o.instruction for o in observations]
        proprio = np.stack([o.proprio for o in observations])
        if best_of > 1:
            output = best_of_n_decode(policy, images, instructions, best_of, scorer, generator, proprio)
        else:
            output = policy.decode(images, instructions, greedy=greedy, generator=generator, proprio=proprio)
        return np.asarray(output.actions, dtype=np.float32)
    return act


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

    ``policy`` is a VLAPolicy or a callable ``observations -> actions [B, 7]``. Init states default
    to the held-out ids (``>= env.num_train_init_states``); training ids are never used unless
    passed explicitly. Aborted episodes (crashed workers) are counted apart, not as failures.
    ``best_of``/``scorer``: test-time best-of-N action selection (see :func:`policy_actor`).
    The environment is ``env.backend``'s (LIBERO or toy) unless ``vector_env`` is given.
    """
    from tqdm import tqdm

    from vla_rl_ros.core.envs.vector import make_vector_env
    held_out = eval_init_states(env_cfg.num_train_init_states)
    init_state_ids = held_out if init_state_ids is None else list(init_state_ids)
    queue = plan_evaluation(env_cfg.task_ids, init_state_ids, seeds, episodes_per_task)
    act = policy_actor(policy, greedy, best_of, scorer)
    envs = vector_env or make_vector_env(env_cfg)
    episodes, videos, frames = [], [], {}
    bar = tqdm(total=len(queue), desc="eval", unit="ep", disable=not progress)
    start, steps = time.time(), 0
    videos_started = [0]
    try:
        slots: list[dict | None] = [None] * envs.num_envs

        def begin(slot: int) -> None:
            slots[slot] = None
            if queue:
                task, state, seed = queue.pop(0)
                obs = envs.reset([(task, state)], env_ids=[slot])[0]
                record = video_dir is not None and videos_started[0] < num_videos
                videos_started[0] += record
                slots[slot] = dict(task_id=task, init_state_id=state, seed=seed, observation=obs,
                                   video=record)
                if record:
                    frames[slot] = [obs.image]
        for slot in range(envs.num_envs):
            begin(slot)
        while any(slots):
            active = [i for i, s in enumerate(slots) if s]
            actions = np.zeros((envs.num_envs, ACTION_DIM), dtype=np.float32)
            by_seed: dict[int, list[int]] = {}
            for i in active:
                by_seed.setdefault(slots[i]["seed"], []).append(i)
            for seed, members in by_seed.items():
                actions[members] = act([slots[i]["observation"] for i in members], seed)
            results = envs.step(actions)
            steps += len(active)
            for i in active:
                result, episode = results[i], slots[i]
                episode["observation"] = result.observation
                if episode["video"]:
                    frames[i].append(result.observation.image)
                if not result.done:
                    continue
                episodes.append(dict(task_id=episode["task_id"], init_state_id=episode["init_state_id"],
                                     seed=episode["seed"], success=bool(result.success),
                                     aborted=bool(result.aborted), steps=result.observation.step))
                if episode["video"]:
                    videos.append(_write_video(video_dir, episodes[-1], frames.pop(i)))
                bar.update(1)
                begin(i)
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
    held_out = set(eval_init_states(env_cfg.num_train_init_states))
    return dict(backend=env_cfg.backend, suite=env_cfg.suite, task_ids=list(env_cfg.task_ids),
                seeds=list(seeds), greedy=greedy, init_state_ids=list(init_state_ids),
                uses_training_init_states=any(i not in held_out for i in init_state_ids),
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
    imageio.mimsave(path, frames[::2], duration=0.1, loop=0)  # every other frame at 10 fps = real time
    return str(path)
