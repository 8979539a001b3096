"""Automatic task segmentation of trajectories and pseudo progress labels for the PRM.

A manipulation trajectory is cut into sub-tasks at events that need no annotation:
gripper open/close events (from the action's gripper dimension or the proprio gripper
joints) and end-effector stops (the eef moved, then rests for a few steps). Successful
trajectories earn progress rising to 1 across their segments; failed trajectories earn the
segments they completed but never the final one, and stall (flat labels) after their last
completed segment. The PRM regresses these labels.

Indexing: a trajectory of T actions has T+1 observations ``o_0..o_T``; a boundary ``b`` in
``1..T`` means a segment is complete at observation ``o_b``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def gripper_closed_from_actions(actions: np.ndarray) -> np.ndarray:
    """Commanded gripper state per step (True = close) from actions ``[T, 7]`` (dim 6 > 0 closes)."""
    actions = np.asarray(actions)
    if actions.ndim != 2 or actions.shape[1] < 7:
        raise ValueError(f"actions must be [T, 7], got {actions.shape}")
    return actions[:, 6] > 0


def gripper_closed_from_proprio(proprio: np.ndarray, gripper_dims: slice = slice(6, 8)) -> np.ndarray:
    """Gripper state per observation from proprio ``[T, D]`` finger joints (closed = narrow opening).

    The opening is the sum of absolute finger positions; closed means below the midpoint of
    the trajectory's own range. A gripper that never moves is reported as never closed.
    """
    proprio = np.asarray(proprio, dtype=np.float64)
    if proprio.ndim != 2 or proprio.shape[1] < gripper_dims.stop:
        raise ValueError(f"proprio must be [T, >= {gripper_dims.stop}], got {proprio.shape}")
    opening = np.abs(proprio[:, gripper_dims]).sum(-1)
    low, high = opening.min(), opening.max()
    if high - low < 1e-3:
        return np.zeros(len(opening), dtype=bool)
    return opening < (low + high) / 2


def gripper_events(closed: np.ndarray) -> list[int]:
    """Indices ``i`` where the gripper state differs from index ``i - 1`` (open<->close switches)."""
    closed = np.asarray(closed, dtype=bool)
    return [int(i) for i in np.flatnonzero(closed[1:] != closed[:-1]) + 1]


def eef_stop_events(eef_pos: np.ndarray, stop_speed: float = 0.002, min_stop_steps: int = 3,
                    min_move_steps: int = 3) -> list[int]:
    """Observation indices where the end effector comes to rest after moving.

    ``eef_pos`` is ``[T+1, 3]``. A stop is ``min_stop_steps`` consecutive displacements below
    ``stop_speed`` (per step) preceded by at least ``min_move_steps`` displacements above it;
    the event is the first resting observation.
    """
    eef_pos = np.asarray(eef_pos, dtype=np.float64)
    if eef_pos.ndim != 2 or eef_pos.shape[1] != 3:
        raise ValueError(f"eef_pos must be [T+1, 3], got {eef_pos.shape}")
    speed = np.linalg.norm(np.diff(eef_pos, axis=0), axis=-1)
    moving = speed >= stop_speed
    events: list[int] = []
    run_moving = 0
    step = 0
    while step < len(moving):
        if moving[step]:
            run_moving += 1
            step += 1
            continue
        rest_end = step
        while rest_end < len(moving) and not moving[rest_end]:
            rest_end += 1
        if run_moving >= min_move_steps and rest_end - step >= min_stop_steps:
            events.append(step)  # displacement ``step`` goes o_step -> o_step+1: o_step is at rest
        run_moving = 0
        step = rest_end
    return events


def segment_boundaries(num_obs: int, events: Sequence[int], min_gap: int = 5) -> list[int]:
    """Sorted, de-duplicated boundaries in ``1..num_obs-1``; events closer than ``min_gap`` merge."""
    merged: list[int] = []
    for event in sorted(set(int(e) for e in events)):
        if not 1 <= event <= num_obs - 1:
            continue
        if merged and event - merged[-1] < min_gap:
            continue
        merged.append(event)
    return merged


def segment_trajectory(num_obs: int, gripper_closed: np.ndarray | None = None,
                       eef_pos: np.ndarray | None = None, min_gap: int = 5,
                       stop_speed: float = 0.002) -> list[int]:
    """Boundaries from whichever signals are given (gripper events and/or eef stops)."""
    events: list[int] = []
    if gripper_closed is not None:
        events += gripper_events(gripper_closed)
    if eef_pos is not None:
        events += eef_stop_events(eef_pos, stop_speed=stop_speed)
    return segment_boundaries(num_obs, events, min_gap)


def progress_labels(num_obs: int, boundaries: Sequence[int], success: bool,
                    num_segments: int | None = None) -> np.ndarray:
    """Pseudo progress ``[num_obs]`` in [0, 1] from segment boundaries.

    Successful: the last observation closes the final segment; progress rises linearly from
    k/S to (k+1)/S across segment k and ends at exactly 1. ``S`` is its own segment count.
    Failed: ``S = num_segments`` (the task's typical count, e.g. the median over its successful
    trajectories; default: detected boundaries + 1); at most S - 1 segments are credited, and
    the labels stay flat after the last credited boundary (the trajectory stalled).
    """
    if num_obs < 2:
        raise ValueError(f"a trajectory needs at least 2 observations, got {num_obs}")
    cuts = [b for b in boundaries if 1 <= b <= num_obs - 1]
    if success:
        if not cuts or cuts[-1] != num_obs - 1:
            cuts = cuts + [num_obs - 1]
        total = len(cuts)
    else:
        total = max(num_segments or len(cuts) + 1, 1)
        cuts = cuts[:max(total - 1, 0)]
    labels = np.zeros(num_obs, dtype=np.float32)
    start = 0
    for k, end in enumerate(cuts):
        span = np.arange(start, end + 1)
        labels[span] = (k + (span - start) / (end - start)) / total
        start = end
    labels[start:] = len(cuts) / total
    return labels


def typical_segment_count(boundary_lists: Sequence[Sequence[int]], num_obs: Sequence[int]) -> int | None:
    """Median number of segments of successful trajectories (None without any)."""
    counts = []
    for cuts, length in zip(boundary_lists, num_obs):
        inner = [b for b in cuts if 1 <= b < length - 1]
        counts.append(len(inner) + 1)
    return int(np.median(counts)) if counts else None
