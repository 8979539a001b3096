"""Training checkpoints: everything an exact resume needs, written atomically.

``<output_dir>/checkpoints/latest/`` holds ``state.pt`` (trainable tensors, optimizer,
curriculum, every RNG state, iteration, metric history, the resolved config) and
``adapters/`` (the LoRA + value head directory the policy node loads). The directory is
written under a temporary name and renamed into place, so a ``kill -9`` at any moment
leaves either the previous or the new checkpoint, never a half-written one.

State files are read with ``torch.load(weights_only=True)``: tensors and plain containers only.
Unpickling anything else can run code chosen by whoever wrote the file, and a checkpoint or
learner state is a file another user, a shared disk or a copied run directory may have put there.
:func:`plain_state` turns what the run keeps (numpy RNG states, numpy scalars in metrics) into
types that loader accepts.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_rl_ros.core.config_io import ConfigError, flatten
from vla_rl_ros.core.policy.model_dir import atomic_directory, commit_directory

STATE_FILE = "state.pt"
RESUMABLE_CHANGES = ("train.iterations", "train.output_dir", "train.torch_threads", "train.eval_every",
                     "train.eval_episodes", "train.time_budget_s", "policy.device",
                     "policy.compile_decode")
"""Config keys a resume may change; any other difference would silently change the experiment."""


def checkpoint_dir(output_dir: str | Path) -> Path:
    """Where the latest checkpoint of a run lives."""
    return Path(output_dir) / "checkpoints" / "latest"


def rng_state(generators: dict[str, torch.Generator], numpy_rng: np.random.Generator) -> dict[str, Any]:
    """Global torch/numpy/python RNG states plus the run's own generators (all weights_only-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy_global": {"bit_generator": str(name), "keys": [int(k) for k in keys], "pos": int(pos),
                             "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate(),
            "numpy_rng": numpy_rng.bit_generator.state,
            "generators": {name: g.get_state() for name, g in generators.items()}}


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator],
                      numpy_rng: np.random.Generator) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    mt = state["numpy_global"]
    np.random.set_state((mt["bit_generator"], np.asarray(mt["keys"], dtype=np.uint32), mt["pos"],
                         mt["has_gauss"], mt["cached_gaussian"]))
    random.setstate(state["python"])
    numpy_rng.bit_generator.state = state["numpy_rng"]
    for name, gen in generators.items():
        gen.set_state(state["generators"][name])


def plain_state(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and numpy arrays as lists, containers copied.

    ``torch.load(weights_only=True)`` refuses numpy objects (restoring them means unpickling
    numpy internals); metrics often hold ``np.float64``, which also passes ``isinstance(x, float)``.
    """
    if isinstance(value, dict):
        return {key: plain_state(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain_state(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_state_file(path: str | Path) -> Any:
    """``torch.load`` of a state file, tensors and plain containers only; anything else is a ConfigError.

    The refusal happens while unpickling, before any object of the file is built: a crafted file
    never gets to run its code.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own message goes on to suggest weights_only=False; keep only what it found.
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+?)(?:\.\s|\n|$)", str(err))
        detail = found.group(1) if found else type(err).__name__
        raise ConfigError(f"refused {path}: it cannot be read as tensors and plain containers ({detail}), "
                          "and anything else is not unpickled because that can run code. Files written "
                          "by older versions held numpy objects: move the file away to start over") from None


def save_checkpoint(output_dir: str | Path, state: dict[str, Any], policy: Any | None = None) -> Path:
    """Write ``state`` (+ the policy's adapter directory) atomically; returns the checkpoint dir."""
    tmp, target = atomic_directory(checkpoint_dir(output_dir))
    try:
        torch.save(plain_state(state), tmp / STATE_FILE)
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
        return load_state_file(target / STATE_FILE)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - a truncated or garbage file means the same thing here
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
