"""PPO updates of a VLA policy: minibatches, gradient accumulation, warm-up, guards.

The policy object provides ``evaluate(images, instructions, tokens)`` (log-probs [B, K],
entropy [B, K], values [B], with grad, same temperature and vocabulary restriction as
rollout decoding), ``reference_log_probs(...)`` (LoRA disabled, no grad),
``policy_parameters()`` and ``value_parameters()``. A non-finite loss, gradient or reward
never reaches the weights: the update is abandoned and the weights and optimizer state
from before it are restored.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from vla_rl_ros.core.rl.buffer import RolloutBatch
from vla_rl_ros.core.rl.config import PPOConfig
from vla_rl_ros.core.rl.ppo_math import explained_variance, ppo_loss

REF_CHUNK = 64
"""Transitions per no-grad reference forward pass."""


class PPOTrainer:
    """Owns the optimizer (two groups: LoRA adapters, value head) and the update count."""

    def __init__(self, policy: Any, cfg: PPOConfig) -> None:
        """Adam over the policy's trainable parameters with separate learning rates."""
        self.policy = policy
        self.cfg = cfg
        self.policy_params = [p for p in policy.policy_parameters() if p.requires_grad]
        self.value_params = [p for p in policy.value_parameters() if p.requires_grad]
        if not self.value_params:
            raise ValueError("PPO: the policy has no trainable value-head parameters")
        groups = [{"params": self.value_params, "lr": cfg.value_lr, "name": "value"}]
        if self.policy_params:
            groups.insert(0, {"params": self.policy_params, "lr": cfg.policy_lr, "name": "policy"})
        self.optimizer = torch.optim.Adam(groups, eps=1e-5)
        self.updates = 0
        """Completed PPO iterations (skipped ones included); drives the critic warm-up."""

    @property
    def in_warmup(self) -> bool:
        """True while only the value head learns (critic estimator, first ``critic_warmup_iters`` updates)."""
        return self.cfg.uses_critic and self.updates < self.cfg.critic_warmup_iters

    def _snapshot(self) -> tuple[list[torch.Tensor], dict]:
        params = [p.detach().clone() for p in self.policy_params + self.value_params]
        return params, copy.deepcopy(self.optimizer.state_dict())

    def _restore(self, snapshot: tuple[list[torch.Tensor], dict]) -> None:
        params, optim_state = snapshot
        with torch.no_grad():
            for p, saved in zip(self.policy_params + self.value_params, params):
                p.copy_(saved)
        self.optimizer.load_state_dict(optim_state)
        self.optimizer.zero_grad(set_to_none=True)

    def reference_log_probs(self, batch: RolloutBatch) -> torch.Tensor:
        """Reference-policy log-probs ``[M, K]`` of the batch's tokens (no-grad chunks, policy's device)."""
        chunks = []
        with torch.no_grad():
            for start in range(0, batch.size, REF_CHUNK):
                end = min(start + REF_CHUNK, batch.size)
                ref = self.policy.reference_log_probs(batch.images[start:end], batch.instructions[start:end],
                                                      batch.tokens[start:end],
                                                      proprio=batch.proprio[start:end])
                chunks.append(torch.as_tensor(ref, dtype=torch.float32).detach())
        return torch.cat(chunks)

    def update(self, batch: RolloutBatch, generator: torch.Generator | None = None) -> dict[str, float]:
        """One iteration of PPO epochs over ``batch``; returns metrics under ``ppo/``."""
        cfg = self.cfg
        warmup = self.in_warmup
        self.updates += 1
        metrics: dict[str, float] = {"ppo/warmup": float(warmup), "ppo/skipped": 0.0}
        if not all(torch.isfinite(t).all() for t in (batch.advantages, batch.returns, batch.rewards)):
            return self._skip(metrics, "non-finite reward or advantage")
        use_ref = cfg.kl_coef > 0 and not warmup
        # The batch is built on the CPU; the loss meets the policy's outputs on the policy's device.
        device = self.policy.device
        old_log_probs, old_values, advantages, returns = (
            t.to(device) for t in (batch.log_probs, batch.old_values, batch.advantages, batch.returns))
        ref_all = self.reference_log_probs(batch) if use_ref else old_log_probs
        snapshot = self._snapshot()
        sums: dict[str, list[float]] = {}
        steps, stopped_early = 0, False
        self.optimizer.zero_grad(set_to_none=True)
        pending = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(batch.size, generator=generator)
            for start in range(0, batch.size, cfg.minibatch_size):
                index = order[start:start + cfg.minibatch_size]
                idx = index.numpy()
                ev = self.policy.evaluate(batch.images[idx], [batch.instructions[i] for i in idx],
                                          batch.tokens[index], proprio=batch.proprio[idx])
                terms = ppo_loss(ev.log_probs.float(), old_log_probs[index], ref_all[index],
                                 ev.entropy.float(), ev.values.float().reshape(-1), old_values[index],
                                 advantages[index], returns[index], clip_range=cfg.clip_range,
                                 value_clip_range=cfg.value_clip_range,
                                 kl_coef=cfg.kl_coef if use_ref else 0.0,
                                 entropy_coef=cfg.entropy_coef,
                                 value_coef=cfg.value_coef if cfg.uses_critic else 0.0,
                                 per_token=cfg.per_token_ratio, policy_enabled=not warmup,
                                 normalize=cfg.uses_critic)
                if not torch.isfinite(terms.total):
                    self._restore(snapshot)
                    return self._skip(metrics, "non-finite loss")
                self._backward(terms, warmup)
                pending += 1
                for key, value in (("policy_loss", terms.policy), ("value_loss", terms.value),
                                   ("kl_ref", terms.kl_ref), ("entropy", terms.entropy),
                                   ("approx_kl", terms.approx_kl), ("clipfrac", terms.clip_fraction)):
                    sums.setdefault(key, []).append(float(value.detach()))
                if pending == cfg.grad_accum_steps:
                    if not self._step(warmup, sums):
                        self._restore(snapshot)
                        return self._skip(metrics, "non-finite gradient")
                    pending, steps = 0, steps + 1
                if cfg.target_kl > 0 and not warmup and float(terms.approx_kl) > cfg.target_kl:
                    stopped_early = True
                    break
            if stopped_early:
                break
        if pending:
            if not self._step(warmup, sums):
                self._restore(snapshot)
                return self._skip(metrics, "non-finite gradient")
            steps += 1
        metrics.update({f"ppo/{k}": float(np.mean(v)) for k, v in sums.items()})
        metrics["ppo/optimizer_steps"] = float(steps)
        metrics["ppo/early_stop"] = float(stopped_early)
        metrics["ppo/explained_variance"] = explained_variance(batch.old_values, batch.returns)
        metrics["ppo/advantage_mean"] = float(batch.advantages.mean())
        metrics["ppo/return_mean"] = float(batch.returns.mean())
        return metrics

    def _backward(self, terms: Any, warmup: bool) -> None:
        scale = 1.0 / self.cfg.grad_accum_steps
        if not self.cfg.uses_critic:  # group advantages: no value loss, only the policy learns
            (terms.total * scale).backward()
            return
        if self.cfg.value_trunk_grad:
            (terms.total * scale).backward()
            return
        # The value loss trains the head only: its gradient through the shared trunk would move
        # the adapters in directions unrelated to the policy objective.
        value_part = self.cfg.value_coef * terms.value * scale
        policy_part = (terms.total - self.cfg.value_coef * terms.value) * scale
        grads = torch.autograd.grad(value_part, self.value_params, retain_graph=not warmup)
        for param, grad in zip(self.value_params, grads):
            param.grad = grad if param.grad is None else param.grad + grad
        if not warmup:
            policy_part.backward()

    def _step(self, warmup: bool, sums: dict[str, list[float]]) -> bool:
        if warmup:  # critic warm-up: the adapters must not move, whatever reached their grads
            for p in self.policy_params:
                p.grad = None
        params = [p for p in self.policy_params + self.value_params if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm) if params else torch.tensor(0.0)
        if not math.isfinite(float(norm)):
            return False
        sums.setdefault("grad_norm", []).append(float(norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def _skip(self, metrics: dict[str, float], reason: str) -> dict[str, float]:
        metrics["ppo/skipped"] = 1.0
        metrics["ppo/skip_reason"] = reason  # type: ignore[assignment]
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state and update count (the weights are saved by the caller)."""
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
