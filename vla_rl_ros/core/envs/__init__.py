"""Environments: LIBERO scenes (and a toy env) behind one interface, vectorised in workers.

Nothing here imports LIBERO or MuJoCo at import time; that happens inside the workers.
"""
from vla_rl_ros.core.envs.base import ACTION_DIM, Observation, StepResult, VectorEnvLike
from vla_rl_ros.core.envs.libero_env import (LiberoEnv, TaskError, TaskSpec, episode_cap, get_task,
                                             list_tasks, sanitize_action)
from vla_rl_ros.core.envs.splits import eval_init_states, train_init_states
from vla_rl_ros.core.envs.vector import VectorEnv, make_vector_env

__all__ = ["ACTION_DIM", "LiberoEnv", "Observation", "StepResult", "TaskError", "TaskSpec", "VectorEnv",
           "VectorEnvLike", "episode_cap", "eval_init_states", "get_task", "list_tasks", "make_vector_env",
           "sanitize_action", "train_init_states"]
