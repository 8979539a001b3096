"""Headless rendering set-up: GL backend and render GPU of each environment worker.

MuJoCo reads ``MUJOCO_GL`` (and, for EGL, ``MUJOCO_EGL_DEVICE_ID``) when it is first imported,
so these functions must run in a worker process before anything imports mujoco or robosuite.
"""
from __future__ import annotations

import os
from typing import MutableMapping, Sequence

from vla_rl_ros.core.config_io import check


def render_gpu_for_worker(worker_index: int, render_gpus: Sequence[int]) -> int | None:
    """GPU that renders for worker ``worker_index``: round-robin over ``render_gpus``.

    Round-robin keeps the number of rendering workers per GPU within one of each other
    ("GPU-balanced"). Returns None when no GPU list is given (the driver's default device).
    """
    check(worker_index >= 0, "worker_index", worker_index, "must be >= 0")
    if not render_gpus:
        return None
    return int(render_gpus[worker_index % len(render_gpus)])


def gl_environment(renderer: str, render_gpu: int | None) -> dict[str, str]:
    """Environment variables that select the GL backend (egl/osmesa) and the render GPU."""
    check(renderer in ("egl", "osmesa"), "env.renderer", renderer, "'egl' or 'osmesa'")
    variables = {"MUJOCO_GL": renderer, "PYOPENGL_PLATFORM": renderer}
    if renderer == "egl" and render_gpu is not None:
        variables["MUJOCO_EGL_DEVICE_ID"] = str(render_gpu)
    return variables


def apply_gl_environment(renderer: str, render_gpu: int | None,
                         environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Write :func:`gl_environment` into ``environ`` (default ``os.environ``); returns what was set."""
    environ = os.environ if environ is None else environ
    variables = gl_environment(renderer, render_gpu)
    environ.update(variables)
    if "MUJOCO_EGL_DEVICE_ID" not in variables:
        environ.pop("MUJOCO_EGL_DEVICE_ID", None)
    return variables


def describe_renderer() -> dict[str, str]:
    """What renders in this process (backend, device, GL vendor when known), for result files."""
    description = {"mujoco_gl": os.environ.get("MUJOCO_GL", ""),
                   "egl_device_id": os.environ.get("MUJOCO_EGL_DEVICE_ID", "")}
    try:
        import mujoco
        description["mujoco_version"] = mujoco.__version__
    except ImportError:
        pass
    return description
