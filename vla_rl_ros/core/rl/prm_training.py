"""Training and measuring the process reward model on pseudo progress labels.

Quality is reported two ways on held-out trajectories: ``prm/auc`` (does the final progress
score separate successful from failed trajectories? ``prm/auc_mean_progress`` ranks by the
mean instead) and ``prm/rank_corr`` (within a
trajectory, does the score order the steps like the pseudo labels? Spearman, averaged).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from vla_rl_ros.core.rl.prm import ProcessRewardModel, label_episodes
from vla_rl_ros.core.rl.rollout import Episode, step_inputs


def step_dataset(episodes: Sequence[Episode], labels: Sequence[np.ndarray]
                 ) -> tuple[np.ndarray, list[str], np.ndarray, torch.Tensor, torch.Tensor]:
    """Flat (image o_t, instruction, proprio o_t, tokens a_t, target = label of o_{t+1}) over all steps."""
    kept = [(e, lab) for e, lab in zip(episodes, labels) if e.length > 0]
    if not kept:
        raise ValueError("PRM training needs at least one trajectory with a step")
    images, instructions, proprio, tokens = step_inputs([e for e, _ in kept])
    targets = torch.as_tensor(np.concatenate([lab[1:] for _, lab in kept]), dtype=torch.float32)
    return images, instructions, proprio, tokens, targets


def train_prm(prm: ProcessRewardModel, episodes: Sequence[Episode], epochs: int = 3, lr: float = 1e-3,
              batch_size: int = 32, generator: torch.Generator | None = None,
              progress: bool = False) -> list[float]:
    """Regress PRM scores onto pseudo labels (MSE); returns the mean loss of each epoch.

    Successful and failed steps are weighted so that each outcome contributes half the loss;
    otherwise a mostly-failing rollout set teaches "progress is always low".
    """
    labels = label_episodes(episodes)
    images, instructions, proprio, tokens, targets = step_dataset(episodes, labels)
    outcome = torch.as_tensor(np.concatenate([[e.success] * e.length for e in episodes if e.length > 0]))
    weights = torch.ones(len(targets))
    for flag in (True, False):
        chosen = outcome == flag
        if chosen.any() and (~chosen).any():
            weights[chosen] = 0.5 * len(targets) / float(chosen.sum())
    # Labels are built on the CPU; the loss meets the scores on the PRM's device.
    targets, weights = targets.to(prm.backbone.device), weights.to(prm.backbone.device)
    optimizer = torch.optim.Adam(prm.parameters(), lr=lr)
    history = []
    steps = range(epochs)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="train-prm", unit="epoch")
    for _ in steps:
        order = torch.randperm(len(targets), generator=generator)
        losses = []
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            idx = index.numpy()
            scores = prm.score(images[idx], [instructions[i] for i in idx], tokens[index], proprio[idx])
            loss = (weights[index] * (scores - targets[index]) ** 2).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError("PRM training produced a non-finite loss; lower reward.prm_lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(prm.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
    return history


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(random positive outscores random negative), ties count half; NaN if a side is empty."""
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    def ranks(values: np.ndarray) -> np.ndarray:
        order = np.argsort(values, kind="mergesort")
        out = np.empty(len(values))
        out[order] = np.arange(len(values), dtype=np.float64)
        for value in np.unique(values):  # average the ranks of ties
            same = values == value
            out[same] = out[same].mean()
        return out
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def separation(episodes: Sequence[Episode]) -> dict[str, float]:
    """How the progress already on ``episodes`` separates successes from failures.

    ``prm/auc`` ranks by the final progress; ``prm/auc_mean_progress`` by the mean over the
    episode, which also credits a failure that got far and then stalled. NaN when one outcome
    is missing (an AUC needs both).
    """
    scored = [e for e in episodes if e.length > 0 and e.progress is not None]
    wins = [e for e in scored if e.success]
    losses = [e for e in scored if not e.success]
    return {"prm/auc": roc_auc([float(e.progress[-1]) for e in wins],
                               [float(e.progress[-1]) for e in losses]),
            "prm/auc_mean_progress": roc_auc([float(np.mean(e.progress[1:])) for e in wins],
                                             [float(np.mean(e.progress[1:])) for e in losses]),
            "prm/episodes": float(len(scored)), "prm/successes": float(len(wins))}


def evaluate_prm(prm: ProcessRewardModel, episodes: Sequence[Episode]) -> dict[str, float]:
    """``prm/auc``, ``prm/rank_corr``, ``prm/label_mse`` and counts on (held-out) trajectories."""
    episodes = [e for e in episodes if e.length > 0]
    labels = label_episodes(episodes)
    prm.score_episodes(episodes)
    corrs = [spearman(e.progress[1:], lab[1:]) for e, lab in zip(episodes, labels)]
    corrs = [c for c in corrs if np.isfinite(c)]
    errors = [(e.progress[1:] - lab[1:]) ** 2 for e, lab in zip(episodes, labels)]
    mse = float(np.mean(np.concatenate(errors)))
    return {**separation(episodes), "prm/rank_corr": float(np.mean(corrs)) if corrs else float("nan"),
            "prm/label_mse": mse}
