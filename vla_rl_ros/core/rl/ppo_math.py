"""Pure PPO maths over action tokens: GAE, clipped losses, KL to the reference, diagnostics.

Shape contract: rollout tensors are time-major ``[T, N]`` (N = episodes or envs); per-step
action log-probs are ``[B, K]`` with K action tokens (7 for OpenVLA). Functions take tensors
and floats, never config objects, so they can be tested against hand-computed values.
"""
from __future__ import annotations

import math

from dataclasses import dataclass

import torch


def generalized_advantage_estimate(gamma: float, lmbda: float, values: torch.Tensor,
                                   next_values: torch.Tensor, rewards: torch.Tensor,
                                   done: torch.Tensor, terminated: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over time-major ``[T, N]`` tensors; returns ``(advantages, returns)``.

    ``next_values[t]`` is the critic's value of the observation reached by step ``t`` (for
    a time-limit truncation: the value of the final observation). ``done`` stops the
    accumulation across episode boundaries; ``terminated`` stops bootstrapping, so a
    truncated step still adds ``gamma * next_value``.
    """
    shapes = {t.shape for t in (values, next_values, rewards, done, terminated)}
    if len(shapes) != 1 or values.dim() != 2:
        raise ValueError(f"GAE expects equal [T, N] shapes, got {[tuple(s) for s in shapes]}")
    if bool((terminated.bool() & ~done.bool()).any()):
        raise ValueError("GAE: a terminated step must also be done")
    not_done = 1.0 - done.float()
    not_terminated = 1.0 - terminated.float()
    deltas = rewards + gamma * not_terminated * next_values - values
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[0])
    for t in reversed(range(values.shape[0])):
        running = deltas[t] + gamma * lmbda * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values


def normalize_advantages(advantages: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero-mean, unit-std advantages (per minibatch); a single element is only centred."""
    centred = advantages - advantages.mean()
    if advantages.numel() < 2:
        return centred
    return centred / (advantages.std() + eps)


def approx_kl(new_log_probs: torch.Tensor, old_log_probs: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(old || new) of the joint action distribution, averaged over steps.

    Log-probs ``[B, K]`` are summed over the K tokens first (the action is one sample of
    the joint distribution). k3 = (r - 1) - log r with r = new/old is unbiased and >= 0.
    """
    log_ratio = (new_log_probs - old_log_probs).sum(-1)
    return ((log_ratio.exp() - 1.0) - log_ratio).mean()


def clipped_policy_loss(new_log_probs: torch.Tensor, old_log_probs: torch.Tensor,
                        advantages: torch.Tensor, clip_range: float, per_token: bool = False,
                        weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate loss (to minimise) and the clipped fraction.

    ``new_log_probs``/``old_log_probs`` are ``[B, K]``; ``advantages`` is ``[B]``. With
    ``per_token=False`` the ratio is that of the whole action (summed token log-probs);
    with ``per_token=True`` every token has its own ratio sharing the step's advantage.
    ``weights`` ``[B]`` scale each step's term (decoupled PPO's behaviour weights, below).
    """
    if new_log_probs.shape != old_log_probs.shape or new_log_probs.dim() != 2:
        raise ValueError(f"log-probs must be equal [B, K], got {tuple(new_log_probs.shape)} "
                         f"and {tuple(old_log_probs.shape)}")
    if advantages.shape != new_log_probs.shape[:1]:
        raise ValueError(f"advantages must be [B]={new_log_probs.shape[0]}, got {tuple(advantages.shape)}")
    if per_token:
        log_ratio = new_log_probs - old_log_probs
        adv = advantages.unsqueeze(-1)
    else:
        log_ratio = (new_log_probs - old_log_probs).sum(-1)
        adv = advantages
    ratio = log_ratio.exp()
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * adv
    surrogate = torch.minimum(unclipped, clipped)
    if weights is not None:
        surrogate = surrogate * (weights.unsqueeze(-1) if per_token else weights)
    loss = -surrogate.mean()
    clip_fraction = ((ratio - 1.0).abs() > clip_range).float().mean()
    return loss, clip_fraction


def behaviour_weights(proximal_log_probs: torch.Tensor, behaviour_log_probs: torch.Tensor,
                      cap: float) -> torch.Tensor:
    """Decoupled PPO's per-step weights ``min(pi_prox / pi_behav, cap)`` ``[B]`` (Hilton et al. 2021).

    When the episodes were decoded by an older policy (the graph: rollouts go on while the learner
    trains), the ratio is clipped around the *proximal* policy (the learner's weights when the
    update starts) instead of around the behaviour policy, so a few versions of lag do not clip the
    whole update away, and this weight corrects for sampling under the behaviour policy. The cap
    bounds the variance (a chunk's 7 K tokens multiply into large ratios quickly).
    """
    log_ratio = (proximal_log_probs - behaviour_log_probs).sum(-1)
    return log_ratio.clamp(max=math.log(cap)).exp()


def clipped_value_loss(new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip_range: float) -> torch.Tensor:
    """0.5 * squared error to the returns, pessimistic over the clipped update; 0 disables clipping."""
    unclipped = (new_values - returns) ** 2
    if clip_range <= 0:
        return 0.5 * unclipped.mean()
    clipped_values = old_values + (new_values - old_values).clamp(-clip_range, clip_range)
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped).mean()


def kl_to_reference(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-step KL(policy || reference) estimate ``[B]``: k3 per token, summed over tokens.

    With samples from the policy, k3 = exp(ref - logp) - 1 - (ref - logp) is an unbiased,
    non-negative per-token estimate; its gradient pulls the policy toward the reference.
    A mean log-ratio is not a KL (it can be negative and has the wrong gradient).
    """
    if log_probs.shape != ref_log_probs.shape:
        raise ValueError(f"log-prob shapes differ: {tuple(log_probs.shape)} vs {tuple(ref_log_probs.shape)}")
    diff = ref_log_probs - log_probs
    return (diff.exp() - 1.0 - diff).sum(-1)


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); NaN when the target has no variance."""
    predicted = predicted.detach().flatten().double()
    target = target.detach().flatten().double()
    var_target = target.var(unbiased=False) if target.numel() > 0 else torch.tensor(0.0)
    if target.numel() < 2 or float(var_target) == 0.0:
        return float("nan")
    return float(1.0 - (target - predicted).var(unbiased=False) / var_target)


@dataclass
class LossTerms:
    """Every term of one minibatch's PPO loss plus its diagnostics (tensors keep their graph)."""

    total: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    kl_ref: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor


def ppo_loss(new_log_probs: torch.Tensor, old_log_probs: torch.Tensor, ref_log_probs: torch.Tensor,
             entropy: torch.Tensor, new_values: torch.Tensor, old_values: torch.Tensor,
             advantages: torch.Tensor, returns: torch.Tensor, *, clip_range: float,
             value_clip_range: float, kl_coef: float, entropy_coef: float, value_coef: float,
             per_token: bool = False, policy_enabled: bool = True, normalize: bool = True,
             behaviour_weights: torch.Tensor | None = None) -> LossTerms:
    """Total PPO loss for one minibatch.

    Advantages are normalised here (per minibatch) unless ``normalize`` is False: group
    advantages arrive already centred per group, and re-centring a minibatch that holds part of
    a group would flip some of their signs.

    ``entropy`` is per-token ``[B, K]``; the bonus uses the joint entropy (sum over tokens).
    ``policy_enabled=False`` (critic warm-up) keeps only the value term in ``total``.
    ``behaviour_weights``: see :func:`behaviour_weights`.
    """
    adv = normalize_advantages(advantages) if normalize else advantages
    pg, clip_fraction = clipped_policy_loss(new_log_probs, old_log_probs, adv, clip_range, per_token,
                                            behaviour_weights)
    v_loss = clipped_value_loss(new_values, old_values, returns, value_clip_range)
    kl_ref = kl_to_reference(new_log_probs, ref_log_probs).mean()
    ent = entropy.sum(-1).mean()
    total = value_coef * v_loss
    if policy_enabled:
        total = total + pg + kl_coef * kl_ref - entropy_coef * ent
    with torch.no_grad():
        kl_old = approx_kl(new_log_probs, old_log_probs)
    return LossTerms(total=total, policy=pg, value=v_loss, kl_ref=kl_ref, entropy=entropy.mean(),
                     approx_kl=kl_old, clip_fraction=clip_fraction)
