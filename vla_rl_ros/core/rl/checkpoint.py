"""Training checkpoints: everything an exact resume needs, written atomically.

``<output_dir>/checkpoints/latest/`` holds ``state.pt`` (trainable tensors, optimizer,
curriculum, every RNG state, iteration, metric history, the resolved config) and
``adapters/`` (the LoRA + value head directory the policy node loads). The directory is
written under a temporary name and renamed into place, so a ``kill -9`` at any moment
leaves either the previous or the new checkpoint, never a half-written one.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_rl_ros.core.config_io import ConfigError, flatten
from vla_rl_ros.core.policy.checkpoint import atomic_directory, commit_directory

STATE_FILE = "state.pt"
RESUMABLE_CHANGES = ("train.iterations", "train.output_dir", "train.torch_threads", "train.eval_every",
                     "train.eval_episodes", "train.time_budget_s", "policy.device",
                     "policy.compile_decode")
"""Config keys a resume may change; any other difference would silently change the experiment."""


def checkpoint_dir(output_dir: str | Path) -> Path:
    """Where the latest checkpoint of a run lives."""
    return Path(output_dir) / "checkpoints" / "latest"


def rng_state(generators: dict[str, torch.Generator], numpy_rng: np.random.Generator) -> dict[str, Any]:
    """Global torch/numpy/python RNG states plus the run's own generators."""
    return {"torch": torch.get_rng_state(), "numpy_global": np.random.get_state(),
            "python": random.getstate(),
            "numpy_rng": numpy_rng.bit_generator.state,
            "generators": {name: g.get_state() for name, g in generators.items()}}


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator],
                      numpy_rng: np.random.Generator) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy_global"])
    random.setstate(state["python"])
    numpy_rng.bit_generator.state = state["numpy_rng"]
    for name, gen in generators.items():
        gen.set_state(state["generators"][name])


def save_checkpoint(output_dir: str | Path, state: dict[str, Any], policy: Any | None = None) -> Path:
    """Write ``state`` (+ the policy's adapter directory) atomically; returns the checkpoint dir."""
    tmp, target = atomic_directory(checkpoint_dir(output_dir))
    try:
        torch.save(state, tmp / STATE_FILE)
        if policy is not None:
            policy.save_adapters(str(tmp / "adapters"), int(state["iteration"]))
        with open(tmp / STATE_FILE, "rb") as handle:
            os.fsync(handle.fileno())
        commit_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_checkpoint(output_dir: str | Path) -> dict[str, Any] | None:
    """The latest checkpoint's state, or None when the run has none yet.

    A crash between the two renames of :func:`save_checkpoint` leaves only ``.latest.old-*``;
    that complete previous checkpoint is then used.
    """
    target = checkpoint_dir(output_dir)
    if not (target / STATE_FILE).is_file():
        olds = sorted(target.parent.glob(".latest.old-*")) if target.parent.is_dir() else []
        olds = [o for o in olds if (o / STATE_FILE).is_file()]
        if not olds:
            return None
        os.replace(olds[-1], target)
    try:
        return torch.load(target / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise ConfigError(f"checkpoint {target / STATE_FILE} cannot be read ({err}); "
                          "move it away to start over")


def check_resume_config(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise ConfigError listing every key (outside RESUMABLE_CHANGES) that differs."""
    old, new = flatten(saved), flatten(current)
    diffs = sorted(k for k in set(old) | set(new)
                   if k not in RESUMABLE_CHANGES and old.get(k, "<missing>") != new.get(k, "<missing>"))
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {old.get(k, '<missing>')!r} vs now {new.get(k, '<missing>')!r}"
                           for k in diffs[:8])
        raise ConfigError(f"cannot resume: the configuration differs from the checkpoint's ({detail}"
                          f"{'; ...' if len(diffs) > 8 else ''}). Use the original config or another "
                          f"train.output_dir; only {', '.join(RESUMABLE_CHANGES)} may change on resume")


def trainable_tensors(policy: Any) -> list[torch.Tensor]:
    """Copies of the policy's LoRA and value-head tensors, in a fixed order."""
    params = list(policy.policy_parameters()) + list(policy.value_parameters())
    return [p.detach().cpu().clone() for p in params]


def load_trainable_tensors(policy: Any, tensors: list[torch.Tensor]) -> None:
    """Copy saved tensors back into the policy's LoRA and value-head parameters."""
    params = list(policy.policy_parameters()) + list(policy.value_parameters())
    if len(params) != len(tensors) or any(p.shape != t.shape for p, t in zip(params, tensors)):
        raise ConfigError("checkpoint weights do not fit this policy (different LoRA rank, targets or model)")
    with torch.no_grad():
        for param, saved in zip(params, tensors):
            param.copy_(saved.to(param.device, param.dtype))
