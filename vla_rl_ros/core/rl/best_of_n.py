"""Best-of-N decoding: sample N candidate actions per observation, execute the best-scored one.

This is test-time scaling (more compute at inference, no training); the module is not named
``test_time.py`` because pytest collects a package's ``test_*.py`` files as tests.

Candidates come from one batched decode of the N-times repeated observations. A scorer maps
``(images, instructions, decode output, proprio or None) -> scores [B*N]``. The PRM scores (observation,
action) pairs, so it can rank candidates. The policy's critic cannot: it reads the prompt
only (V(s)), so every candidate of an observation gets the same value; use it as a
tie-break at most. ``likelihood_scorer`` (the policy's own log-prob) needs no extra model.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

Scorer = Callable[[np.ndarray, list, Any, Any], np.ndarray]
SCORERS = ("prm", "likelihood")


def prm_scorer(prm: Any) -> Scorer:
    """Score candidates by PRM progress after the action."""
    def score(images: np.ndarray, instructions: list, out: Any, proprio: Any = None) -> np.ndarray:
        return prm.score_batched(images, instructions, out.tokens, proprio)
    return score


def likelihood_scorer() -> Scorer:
    """Score candidates by the summed action-token log-prob under the sampling distribution."""
    def score(images: np.ndarray, instructions: list, out: Any, proprio: Any = None) -> np.ndarray:
        return torch.as_tensor(out.log_probs).double().sum(-1).numpy()
    return score


def choose_scorer(kind: str | None, prm_path: str | None, policy: Any,
                  policy_cfg: Any) -> tuple[Scorer, str, str | None]:
    """The scorer ``kind`` names (None: the PRM when ``prm_path`` is set, else the likelihood).

    Returns ``(scorer, kind, prm path or None)``. The PRM is loaded with ``policy_cfg`` and
    checked against ``policy``: a PRM trained with other action bins or normalisation would
    rank tokens that mean different actions, so a mismatch raises ``PRMError``.
    """
    from vla_rl_ros.core.config_io import ConfigError
    kind = kind or ("prm" if prm_path else "likelihood")
    if kind not in SCORERS:
        raise ConfigError(f"unknown best-of-N scorer {kind!r}; expected one of {', '.join(SCORERS)}")
    if kind == "likelihood":
        return likelihood_scorer(), kind, None
    if not prm_path:
        raise ConfigError("the prm scorer needs a PRM: pass --prm DIR or set reward.prm_path")
    from vla_rl_ros.core.rl.prm import ProcessRewardModel
    prm = ProcessRewardModel.load(prm_path, policy_cfg)
    prm.check_compatible(policy)
    return prm_scorer(prm), kind, str(prm_path)


def best_of_n_decode(policy: Any, images: np.ndarray, instructions: Sequence[str], n: int,
                     scorer: Scorer | None = None, generator: torch.Generator | None = None,
                     proprio: np.ndarray | None = None) -> Any:
    """The best of ``n`` sampled actions per observation (``n = 1``: a plain sampled decode).

    Returns the policy's decode output type with rows ``[B]`` (tokens, actions, log_probs,
    values) of the chosen candidates; ``scorer`` defaults to :func:`likelihood_scorer`.
    """
    if n < 1:
        raise ValueError(f"best-of-N needs n >= 1, got {n}")
    if n == 1:
        return policy.decode(images, list(instructions), generator=generator, proprio=proprio)
    batch = len(images)
    rep_images = np.concatenate([images] * n)  # candidate j of observation b sits at row j * B + b
    rep_text = list(instructions) * n
    rep_proprio = None if proprio is None else np.concatenate([proprio] * n)
    out = policy.decode(rep_images, rep_text, generator=generator, proprio=rep_proprio)
    scores = np.asarray((scorer or likelihood_scorer())(rep_images, rep_text, out, rep_proprio),
                        dtype=np.float64)
    if scores.shape != (batch * n,):
        raise ValueError(f"scorer returned shape {scores.shape}, expected ({batch * n},)")
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    best = scores.reshape(n, batch).argmax(0)
    rows = best * batch + np.arange(batch)
    index = torch.as_tensor(rows)
    return type(out)(tokens=out.tokens[index], actions=np.asarray(out.actions)[rows],
                     log_probs=out.log_probs[index], values=out.values[index])


def plot_success_vs_n(per_n: dict[int, dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """PNG of success rate vs log2 N with the 95 % intervals as error bars (matplotlib, Agg).

    ``per_n`` maps N to a dict with ``success_rate`` and ``ci95`` ``[low, high]``.
    """
    import matplotlib
    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    ns = sorted(per_n)
    xs = [math.log2(n) for n in ns]
    rates = [per_n[n]["success_rate"] for n in ns]
    below = [max(r - per_n[n]["ci95"][0], 0.0) for n, r in zip(ns, rates)]
    above = [max(per_n[n]["ci95"][1] - r, 0.0) for n, r in zip(ns, rates)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(xs, rates, yerr=[below, above], fmt="o-", capsize=4)
    ax.set_xticks(xs, [str(n) for n in ns])
    ax.set_xlabel("candidates per step N (log2 scale)")
    ax.set_ylabel("held-out success rate (95 % CI)")
    ax.set_ylim(-0.02, 1.02)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
