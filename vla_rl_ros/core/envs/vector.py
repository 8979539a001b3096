"""LIBERO environments in worker processes, stepped together, with fault isolation.

Each worker owns one :class:`LiberoEnv` (and, on demand, a :class:`ScriptedExpert`). A worker
that crashes or does not answer within its timeout is killed and replaced; the episode it was
running is reported as aborted (``done=True, aborted=True``) and the other workers carry on.
Workers start with the ``spawn`` method so that no torch/OpenGL state is inherited, and set
their GL backend and render GPU before MuJoCo is imported.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from typing import Sequence

import numpy as np

from vla_rl_ros.core.envs.base import ACTION_DIM, Observation, StepResult
from vla_rl_ros.core.envs.config import EnvConfig
from vla_rl_ros.core.envs.libero_env import TaskError
from vla_rl_ros.core.envs.rendering import apply_gl_environment, render_gpu_for_worker


def perturb_expert_action(action: np.ndarray, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """The expert's action with Gaussian noise on the arm dimensions (gripper untouched), clipped.

    DART-style recording: the environment executes the perturbed action while the demonstration
    keeps the expert's clean one as its label, so the data shows how to recover from the small
    drifts an imitating policy makes (without it, behaviour cloning never sees off-path states).
    """
    if noise_std <= 0:
        return action
    noisy = action.astype(np.float32).copy()
    noisy[:-1] = np.clip(noisy[:-1] + rng.normal(0.0, noise_std, size=len(noisy) - 1), -1.0, 1.0)
    return noisy


class WorkerFault(RuntimeError):
    """A worker died or timed out; it has been restarted."""


def _worker_main(connection, cfg: EnvConfig, render_gpu: int | None) -> None:
    # LIBERO prints progress to stdout; keep the parent's stdout clean for JSON results.
    os.dup2(2, 1)
    apply_gl_environment(cfg.renderer, render_gpu)
    os.environ.setdefault("LP_NUM_THREADS", "1")  # Mesa's llvmpipe: one thread per worker is fastest
    from vla_rl_ros.core.envs.expert import ScriptedExpert
    from vla_rl_ros.core.envs.libero_env import LiberoEnv
    env = LiberoEnv(cfg.suite, image_size=cfg.image_size, wrist_camera=cfg.wrist_camera, render=cfg.render,
                    settle_steps=cfg.settle_steps, max_episode_steps=cfg.max_episode_steps,
                    render_gpu=render_gpu, seed=cfg.seed, visual_mesh_faces=cfg.visual_mesh_faces,
                    visual_mesh_cache_dir=cfg.visual_mesh_cache_dir)
    expert = None
    expert_ready = False
    noise_rng = np.random.default_rng(cfg.seed)
    while True:
        try:
            command, payload = connection.recv()
        except (EOFError, KeyboardInterrupt):
            break
        try:
            if command == "close":
                break
            if command == "reset":
                reply = env.reset(*payload[:2])
                expert_ready = False
                # Noise of an episode depends only on (seed, task, init state[, pass]): reproducible
                # demos. Pass 0 sends no pass, so its stream is the one recorded before passes existed.
                noise_rng = np.random.default_rng([cfg.seed, *payload])
            elif command == "step":
                reply = env.step(payload)
            elif command == "step_chunk":
                reply = env.step_chunk(payload)
            elif command == "expert_step":
                if expert is None:
                    expert = ScriptedExpert()
                if not expert_ready:
                    expert.reset(env)
                    expert_ready = True
                clean = expert.act(env)
                reply = env.step(perturb_expert_action(clean, payload or 0.0, noise_rng))
                reply.info["executed_action"], reply.info["action"] = reply.info["action"], clean
                if expert.gave_up and not reply.done:
                    env.done = reply.done = True
                    reply.info["expert_gave_up"] = True
            elif command == "sleep":  # test hook: simulate a hung simulator
                import time
                time.sleep(payload)
                reply = None
            else:
                raise ValueError(f"unknown worker command {command!r}")
            connection.send(("ok", reply))
        except TaskError as err:
            connection.send(("task_error", str(err)))
        except Exception:  # a simulator fault must reach the parent, not kill the worker silently
            connection.send(("error", traceback.format_exc()))
    env.close()
    connection.close()


class _Worker:
    def __init__(self, context, cfg: EnvConfig, index: int) -> None:
        self.render_gpu = render_gpu_for_worker(index, cfg.render_gpus)
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, cfg, self.render_gpu),
                                       daemon=True, name=f"libero-env-{index}")
        self.process.start()
        child.close()

    def request(self, command: str, payload=None) -> None:
        self.connection.send((command, payload))

    def reply(self, timeout_s: float):
        if not self.connection.poll(timeout_s):
            raise WorkerFault(f"no reply within {timeout_s:.0f} s (hung)")
        try:
            status, value = self.connection.recv()
        except (EOFError, ConnectionResetError, OSError) as err:
            raise WorkerFault(f"worker process died ({type(err).__name__}, exit code "
                              f"{self.process.exitcode})") from None
        if status == "task_error":
            raise TaskError(value)
        if status == "error":
            raise WorkerFault(f"simulator error in worker:\n{value}")
        return value

    def stop(self, timeout_s: float = 5.0) -> None:
        try:
            self.connection.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout_s)
        self.connection.close()


class VectorEnv:
    """``cfg.num_envs`` LIBERO environments in worker processes (implements VectorEnvLike)."""

    def __init__(self, cfg: EnvConfig) -> None:
        """Start the workers; simulators are built on the first reset of each."""
        self.cfg = cfg
        self.num_envs = cfg.num_envs
        self._context = mp.get_context("spawn")
        self._workers = [_Worker(self._context, cfg, i) for i in range(self.num_envs)]
        self._last_obs: list[Observation | None] = [None] * self.num_envs
        self._running = [False] * self.num_envs
        self.restarts = [0] * self.num_envs
        """How many times each worker was replaced after a crash or hang."""

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers (for monitoring, and for tests that kill one)."""
        return [w.process.pid for w in self._workers]

    def _restart(self, index: int) -> None:
        self._workers[index].stop(timeout_s=1.0)
        self._workers[index] = _Worker(self._context, self.cfg, index)
        self._running[index] = False
        self.restarts[index] += 1

    def reset(self, assignments: Sequence[tuple[int, int]],
              env_ids: Sequence[int] | None = None) -> list[Observation]:
        """Reset envs ``env_ids`` (default all) to ``(task_id, init_state_id)`` each, in parallel.

        An assignment may carry a third element, the demonstration pass (> 0): the same scene,
        but another stream of expert action noise (see ``demos.passes``).

        A worker that faults during reset is restarted and retried once; TaskError (bad task or
        init-state id) is raised unchanged after every worker has answered.
        """
        env_ids = list(range(self.num_envs)) if env_ids is None else list(env_ids)
        if len(assignments) != len(env_ids):
            raise ValueError(f"{len(assignments)} assignments for {len(env_ids)} environments")
        for index, assignment in zip(env_ids, assignments):
            self._workers[index].request("reset", tuple(int(v) for v in assignment))
        observations, task_error = [], None
        for index, assignment in zip(env_ids, assignments):
            try:
                obs = self._reset_reply(index, assignment)
            except TaskError as err:
                task_error, obs = err, None
            observations.append(obs)
        if task_error is not None:
            raise task_error
        return observations

    def _reset_reply(self, index: int, assignment) -> Observation:
        for attempt in range(2):
            try:
                obs = self._workers[index].reply(self.cfg.reset_timeout_s)
                self._last_obs[index], self._running[index] = obs, True
                return obs
            except WorkerFault:
                self._restart(index)
                if attempt == 1:
                    raise
                self._workers[index].request("reset", tuple(int(v) for v in assignment))
        raise AssertionError("unreachable")

    def step(self, actions: np.ndarray) -> list[StepResult]:
        """Apply ``actions`` [num_envs, 7]; envs not running return ``done=True, info['inactive']``."""
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.num_envs, ACTION_DIM):
            raise ValueError(f"actions shape {actions.shape}, expected ({self.num_envs}, {ACTION_DIM})")
        return self._step_all([("step", actions[i]) for i in range(self.num_envs)])

    def step_chunk(self, chunks: np.ndarray) -> list[StepResult]:
        """Apply a chunk of actions per env, ``chunks`` [num_envs, K, 7], each worker rendering once.

        Each result's ``info['executed']`` says how many of the K actions ran (fewer when the
        episode ended inside the chunk); envs not running return ``done=True, info['inactive']``.
        """
        chunks = np.asarray(chunks, dtype=np.float32)
        if chunks.ndim != 3 or chunks.shape[0] != self.num_envs or chunks.shape[2] != ACTION_DIM:
            raise ValueError(f"chunks shape {chunks.shape}, expected ({self.num_envs}, K, {ACTION_DIM})")
        return self._step_all([("step_chunk", chunks[i]) for i in range(self.num_envs)])

    def step_expert(self, noise_std: float = 0.0) -> list[StepResult]:
        """Step every running env with its worker's scripted expert.

        ``info['action']`` is the expert's clean action (the demonstration label) and
        ``info['executed_action']`` what the simulator ran: the same plus N(0, ``noise_std``) on
        the arm dimensions (see :func:`perturb_expert_action`).
        """
        return self._step_all([("expert_step", float(noise_std))] * self.num_envs)

    def _step_all(self, requests: list[tuple[str, object]]) -> list[StepResult]:
        active = [i for i in range(self.num_envs) if self._running[i]]
        for i in active:
            self._workers[i].request(*requests[i])
        results = []
        for i in range(self.num_envs):
            if i not in active:
                results.append(self._inactive_result(i))
                continue
            try:
                result = self._workers[i].reply(self.cfg.step_timeout_s)
            except WorkerFault as fault:
                self._restart(i)
                result = StepResult(observation=self._last_obs[i], reward=0.0, done=True, aborted=True,
                                    info={"reason": str(fault).splitlines()[0], "restarted": True})
            self._last_obs[i] = result.observation
            self._running[i] = not result.done
            results.append(result)
        return results

    def _inactive_result(self, index: int) -> StepResult:
        return StepResult(observation=self._last_obs[index], reward=0.0, done=True,
                          info={"inactive": True})

    def close(self) -> None:
        """Stop every worker."""
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def __enter__(self) -> "VectorEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_vector_env(cfg: EnvConfig):
    """The vectorised environment ``cfg.backend`` names ('libero' or 'toy')."""
    if cfg.backend == "toy":
        from vla_rl_ros.core.envs import toy
        return toy.make_toy_vector_env(cfg)
    return VectorEnv(cfg)
