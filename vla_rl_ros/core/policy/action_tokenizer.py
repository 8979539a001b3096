"""OpenVLA's action tokenization: 256 uniform bins on [-1, 1] mapped onto the last 256 token ids.

Continuous actions are first normalised with the dataset statistics ``q01``/``q99`` (dimensions
whose ``mask`` is False, the gripper, pass through unchanged), then binned. Decoding returns the
bin centre and un-normalises with the same statistics.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from vla_rl_ros.core.config_io import ConfigError

IDENTITY_NORM_STATS = {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}}
"""Statistics of actions that are already in [-1, 1] (LIBERO's OSC deltas): a no-op."""


def select_norm_stats(norm_stats: Mapping[str, Any] | None, unnorm_key: str) -> dict[str, np.ndarray]:
    """``norm_stats[unnorm_key]["action"]`` as arrays; '' picks the only key. Errors name the problem."""
    if not norm_stats:
        raise ConfigError("checkpoint config has no norm_stats: cannot un-normalise actions "
                          "(save the dataset statistics with the model)")
    if not unnorm_key:
        if len(norm_stats) != 1:
            raise ConfigError(f"policy.unnorm_key='' but norm_stats has {len(norm_stats)} keys "
                              f"({', '.join(sorted(norm_stats))}); set policy.unnorm_key to one of them")
        unnorm_key = next(iter(norm_stats))
    if unnorm_key not in norm_stats:
        raise ConfigError(f"policy.unnorm_key={unnorm_key!r} is not in norm_stats "
                          f"(known: {', '.join(sorted(norm_stats))})")
    entry = norm_stats[unnorm_key]
    if not isinstance(entry, Mapping) or "action" not in entry:
        raise ConfigError(f"norm_stats[{unnorm_key!r}] has no 'action' statistics")
    action = entry["action"]
    for name in ("q01", "q99"):
        if name not in action:
            raise ConfigError(f"norm_stats[{unnorm_key!r}]['action'] has no {name!r}")
    q01 = np.asarray(action["q01"], dtype=np.float64)
    q99 = np.asarray(action["q99"], dtype=np.float64)
    mask = np.asarray(action.get("mask", [True] * len(q01)), dtype=bool)
    if not (q01.shape == q99.shape == mask.shape) or q01.ndim != 1:
        raise ConfigError(f"norm_stats[{unnorm_key!r}]['action']: q01 {q01.shape}, q99 {q99.shape} and "
                          f"mask {mask.shape} must be equal 1-D shapes")
    return {"q01": q01, "q99": q99, "mask": mask}


def compute_norm_stats(actions: np.ndarray, gripper_dims: tuple[int, ...] = (6,)) -> dict:
    """OpenVLA-style statistics of demonstration actions [N, D]: 1st/99th percentiles per dimension.

    The result is one ``norm_stats`` entry (``{"action": {...}}``); the gripper dimensions get
    mask False so they pass through un-normalised, as in OpenVLA.
    """
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or len(actions) == 0:
        raise ValueError(f"actions must be a non-empty [N, D] array, got shape {actions.shape}")
    mask = [i not in gripper_dims for i in range(actions.shape[1])]
    return {"action": {"q01": np.quantile(actions, 0.01, axis=0).tolist(),
                       "q99": np.quantile(actions, 0.99, axis=0).tolist(),
                       "mean": actions.mean(axis=0).tolist(), "std": actions.std(axis=0).tolist(),
                       "min": actions.min(axis=0).tolist(), "max": actions.max(axis=0).tolist(),
                       "mask": mask}}


class ActionTokenizer:
    """Continuous actions <-> token ids ``[vocab_end - n_bins, vocab_end)``, OpenVLA's exact rule."""

    def __init__(self, vocab_end: int, stats: Mapping[str, np.ndarray], n_bins: int = 256) -> None:
        self.vocab_end = int(vocab_end)
        self.n_bins = int(n_bins)
        self.bins = np.linspace(-1.0, 1.0, self.n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0
        self.q01 = np.asarray(stats["q01"], dtype=np.float64)
        self.q99 = np.asarray(stats["q99"], dtype=np.float64)
        self.mask = np.asarray(stats["mask"], dtype=bool)
        self.action_dim = len(self.q01)

    @property
    def first_id(self) -> int:
        """Smallest action token id."""
        return self.vocab_end - self.n_bins

    def _check(self, values: np.ndarray, what: str) -> np.ndarray:
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.action_dim:
            raise ValueError(f"{what} must have shape [B, {self.action_dim}], got {values.shape}")
        return values

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Map raw actions into [-1, 1] with q01/q99 (masked dims pass through), clipped."""
        actions = self._check(actions, "actions").astype(np.float64)
        span = np.where(self.q99 > self.q01, self.q99 - self.q01, 1.0)
        scaled = 2.0 * (actions - self.q01) / span - 1.0
        return np.clip(np.where(self.mask, scaled, actions), -1.0, 1.0)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """OpenVLA: ``where(mask, 0.5 * (a + 1) * (q99 - q01) + q01, a)``."""
        normalized = self._check(normalized, "normalized actions").astype(np.float64)
        raw = 0.5 * (normalized + 1.0) * (self.q99 - self.q01) + self.q01
        return np.where(self.mask, raw, normalized).astype(np.float32)

    def encode_normalized(self, normalized: np.ndarray) -> np.ndarray:
        """Actions in [-1, 1] -> token ids: ``vocab_end - digitize(clip(a), bins)``."""
        normalized = self._check(normalized, "normalized actions")
        return (self.vocab_end - np.digitize(np.clip(normalized, -1.0, 1.0), self.bins)).astype(np.int64)

    def decode_normalized(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        """Token ids -> bin centres in [-1, 1] (``idx = clip(vocab_end - token - 1, 0, n_bins - 2)``)."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        tokens = self._check(tokens, "tokens").astype(np.int64)
        index = np.clip(self.vocab_end - tokens - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[index]

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Raw (environment) actions [B, D] -> int64 token ids [B, D]."""
        return self.encode_normalized(self.normalize(actions))

    def decode(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        """Token ids [B, D] -> raw (environment) actions float32 [B, D]."""
        return self.unnormalize(self.decode_normalized(tokens))
