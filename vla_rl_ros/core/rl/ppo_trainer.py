"""PPO updates of a VLA policy: minibatches, gradient accumulation, warm-up, guards.

The policy object provides ``evaluate(images, instructions, tokens)`` (log-probs [B, K],
entropy [B, K], values [B], with grad, same temperature and vocabulary restriction as
rollout decoding), ``reference_log_probs(...)`` (LoRA disabled, no grad),
``policy_parameters()`` and ``value_parameters()``. A non-finite loss, gradient or reward
never reaches the weights: the update is abandoned and the weights and optimizer state
from before it are restored.

Data-parallel (``ranks`` given, under torchrun): each rank passes its shard of the iteration's
transitions, and the update is the one a single process would run on the concatenation of the
shards in rank order. Every rank draws the same permutation of the global indices (same
``generator`` state), so a global minibatch is the same set of transitions as in one process;
each rank evaluates the ones it holds, weights its mean loss by its share of the minibatch, and
the gradients are summed (:meth:`Ranks.all_reduce_gradients`). Per-minibatch advantage
normalisation uses the global minibatch's mean and std, and the loss terms, the early-stop KL and
the non-finite checks are reduced first, so that every rank takes the same decisions.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from vla_rl_ros.core.rl.buffer import RolloutBatch
from vla_rl_ros.core.rl.config import PPOConfig
from vla_rl_ros.core.rl.distributed import Ranks, params_fingerprint
from vla_rl_ros.core.rl.ppo_math import behaviour_weights, explained_variance, ppo_loss

REF_CHUNK = 64
"""Transitions per no-grad reference forward pass."""
TERMS = ("total", "policy_loss", "value_loss", "kl_ref", "entropy", "approx_kl", "clipfrac")
"""Per-minibatch loss terms, in the order they are reduced over the ranks."""


class PPOTrainer:
    """Owns the optimizer (two groups: LoRA adapters, value head) and the update count."""

    def __init__(self, policy: Any, cfg: PPOConfig, ranks: Ranks | None = None) -> None:
        """Adam over the policy's trainable parameters with separate learning rates.

        ``ranks``: the data-parallel job (None = one process). Call :meth:`sync_ranks` once every
        rank has built (or resumed) its policy, before the first update.
        """
        self.policy = policy
        self.cfg = cfg
        self.ranks = ranks
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

    def sync_ranks(self) -> None:
        """Give every rank rank 0's trainable weights, optimizer state and update count.

        Also checks that the frozen weights agree (same base checkpoint on every host): a rank
        with another base would silently compute other gradients.
        """
        ranks = self.ranks
        if ranks is None:
            return
        model = getattr(self.policy, "model", None)
        if isinstance(model, torch.nn.Module):
            prints = ranks.all_gather_objects(params_fingerprint(model), "weights check")
            if any(not torch.allclose(p, prints[0], rtol=1e-9, atol=0.0) for p in prints):
                raise ValueError("data-parallel ranks hold different model weights (fingerprints "
                                 f"{[p.tolist() for p in prints]}): every rank must load the same "
                                 "policy.model_path (same files on every host) with the same policy.seed")
        ranks.broadcast_tensors(self.policy_params + self.value_params, "weights broadcast")
        state = ranks.broadcast_object(self.state_dict() if ranks.is_main else None, "optimizer broadcast")
        if not ranks.is_main:
            self.load_state_dict(state)

    def reference_log_probs(self, batch: RolloutBatch) -> torch.Tensor:
        """Reference-policy log-probs ``[M, K]`` of the batch's tokens (no-grad chunks, policy's device)."""
        return self._no_grad_log_probs(batch, self.policy.reference_log_probs)

    def proximal_log_probs(self, batch: RolloutBatch) -> torch.Tensor:
        """Log-probs ``[M, K]`` of the batch's tokens under the current weights (decoupled PPO)."""
        return self._no_grad_log_probs(
            batch, lambda *args, **kwargs: self.policy.evaluate(*args, **kwargs).log_probs)

    def _no_grad_log_probs(self, batch: RolloutBatch, score) -> torch.Tensor:
        chunks = []
        with torch.no_grad():
            for start in range(0, batch.size, REF_CHUNK):
                end = min(start + REF_CHUNK, batch.size)
                out = score(batch.images[start:end], batch.instructions[start:end], batch.tokens[start:end],
                            proprio=batch.proprio[start:end])
                chunks.append(torch.as_tensor(out, dtype=torch.float32).detach())
        return torch.cat(chunks)

    def update(self, batch: RolloutBatch | None,
               generator: torch.Generator | None = None) -> dict[str, float]:
        """One iteration of PPO epochs over ``batch``; returns metrics under ``ppo/``.

        Data-parallel: ``batch`` is this rank's shard (None when it holds no transition), every
        rank calls this with the same ``generator`` state, and the metrics are the global ones.
        """
        cfg = self.cfg
        ranks = self.ranks
        warmup = self.in_warmup
        self.updates += 1
        metrics: dict[str, float] = {"ppo/warmup": float(warmup), "ppo/skipped": 0.0}
        if batch is None and ranks is None:
            raise ValueError("PPO update without a batch (only a data-parallel rank may hold none)")
        local = 0 if batch is None else batch.size
        finite = batch is None or all(torch.isfinite(t).all()
                                      for t in (batch.advantages, batch.returns, batch.rewards))
        if ranks is not None:
            finite = not ranks.any(not finite, "batch check")
        if not finite:
            return self._skip(metrics, "non-finite reward or advantage")
        sizes = [local] if ranks is None else ranks.all_gather_objects(local, "batch sizes")
        total = sum(sizes)
        offset = sum(sizes[:ranks.rank]) if ranks is not None else 0
        if total == 0:
            return self._skip(metrics, "no transition on any rank")
        use_ref = cfg.kl_coef > 0 and not warmup
        old_log_probs = old_values = advantages = returns = ref_all = weights = None
        if local:
            # The batch is built on the CPU; the loss meets the policy's outputs on the policy's device.
            device = self.policy.device
            old_log_probs, old_values, advantages, returns = (
                t.to(device) for t in (batch.log_probs, batch.old_values, batch.advantages, batch.returns))
            if cfg.behaviour_correction == "decoupled":
                proximal = self.proximal_log_probs(batch).to(device)
                weights = behaviour_weights(proximal, old_log_probs, cfg.behaviour_weight_cap)
                metrics["ppo/behaviour_weight_mean"] = float(weights.mean())
                metrics["ppo/behaviour_lag_kl"] = float((old_log_probs - proximal).sum(-1).mean())
                old_log_probs = proximal
            ref_all = self.reference_log_probs(batch) if use_ref else old_log_probs
        snapshot = self._snapshot()
        sums: dict[str, list[float]] = {}
        steps, stopped_early = 0, False
        self.optimizer.zero_grad(set_to_none=True)
        pending = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(total, generator=generator)
            starts = range(0, total, cfg.minibatch_size)
            norms = (self._global_advantage_stats(order, starts, offset, local, advantages)
                     if ranks is not None and cfg.uses_critic else None)
            for number, start in enumerate(starts):
                chosen = order[start:start + cfg.minibatch_size]
                if ranks is None:
                    index, share = chosen, 1.0
                else:  # the transitions of this global minibatch that this rank holds
                    mine = (chosen >= offset) & (chosen < offset + local)
                    index, share = chosen[mine] - offset, float(mine.sum()) / len(chosen)
                terms = None
                if len(index):
                    idx = index.numpy()
                    ev = self.policy.evaluate(batch.images[idx], [batch.instructions[i] for i in idx],
                                              batch.tokens[index], proprio=batch.proprio[idx])
                    adv, normalize = advantages[index], cfg.uses_critic
                    if norms is not None:  # normalised with the global minibatch's statistics
                        mean, std = norms[number]
                        adv, normalize = (adv - mean if std is None else (adv - mean) / std), False
                    terms = ppo_loss(ev.log_probs.float(), old_log_probs[index], ref_all[index],
                                     ev.entropy.float(), ev.values.float().reshape(-1), old_values[index],
                                     adv, returns[index], clip_range=cfg.clip_range,
                                     value_clip_range=cfg.value_clip_range,
                                     kl_coef=cfg.kl_coef if use_ref else 0.0,
                                     entropy_coef=cfg.entropy_coef,
                                     value_coef=cfg.value_coef if cfg.uses_critic else 0.0,
                                     per_token=cfg.per_token_ratio, policy_enabled=not warmup,
                                     normalize=normalize,
                                     behaviour_weights=None if weights is None else weights[index])
                values = self._minibatch_terms(terms, share)
                if not math.isfinite(values["total"]):
                    self._restore(snapshot)
                    return self._skip(metrics, "non-finite loss")
                if terms is not None:
                    self._backward(terms, warmup, share)
                pending += 1
                for key in TERMS[1:]:
                    sums.setdefault(key, []).append(values[key])
                if pending == cfg.grad_accum_steps:
                    if not self._step(warmup, sums):
                        self._restore(snapshot)
                        return self._skip(metrics, "non-finite gradient")
                    pending, steps = 0, steps + 1
                if cfg.target_kl > 0 and not warmup and values["approx_kl"] > cfg.target_kl:
                    stopped_early = True
                    break
            if stopped_early:
                break
        if pending:
            if not self._step(warmup, sums):
                self._restore(snapshot)
                return self._skip(metrics, "non-finite gradient")
            steps += 1
        old_values_all, returns_all, advantages_all = self._whole_batch(batch)
        metrics.update({f"ppo/{k}": float(np.mean(v)) for k, v in sums.items()})
        metrics["ppo/optimizer_steps"] = float(steps)
        metrics["ppo/early_stop"] = float(stopped_early)
        metrics["ppo/explained_variance"] = explained_variance(old_values_all, returns_all)
        metrics["ppo/advantage_mean"] = float(advantages_all.mean())
        metrics["ppo/return_mean"] = float(returns_all.mean())
        if ranks is not None:
            metrics["ppo/ranks"] = float(ranks.world_size)
            metrics["ppo/transitions"] = float(total)
        return metrics

    def _minibatch_terms(self, terms: Any, share: float) -> dict[str, float]:
        """The minibatch's loss terms as floats; data-parallel: of the whole global minibatch."""
        vector = torch.zeros(len(TERMS), dtype=torch.float64)
        if terms is not None:
            parts = (terms.total, terms.policy, terms.value, terms.kl_ref, terms.entropy, terms.approx_kl,
                     terms.clip_fraction)
            vector = torch.tensor([float(t.detach()) for t in parts], dtype=torch.float64)
        if self.ranks is not None:  # every term is a mean over transitions: weight by share, sum
            vector = self.ranks.all_reduce_sum(vector * share, "loss terms")
        return dict(zip(TERMS, vector.tolist()))

    def _global_advantage_stats(self, order: torch.Tensor, starts: range, offset: int, local: int,
                                advantages: torch.Tensor | None) -> list[tuple[float, float | None]]:
        """Mean and std + eps of every global minibatch's advantages (as ``normalize_advantages``).

        One all-reduce per epoch of (count, sum, sum of squares) per minibatch, in float64; a
        minibatch of one transition is only centred (std None).
        """
        stats = torch.zeros(len(starts), 3, dtype=torch.float64)
        for number, start in enumerate(starts):
            chosen = order[start:start + self.cfg.minibatch_size]
            mine = (chosen >= offset) & (chosen < offset + local)
            if advantages is not None and bool(mine.any()):
                values = advantages[chosen[mine] - offset].detach().double().cpu()
                stats[number] = torch.stack([torch.tensor(float(len(values)), dtype=torch.float64),
                                             values.sum(), (values * values).sum()])
        stats = self.ranks.all_reduce_sum(stats, "advantage statistics")
        out: list[tuple[float, float | None]] = []
        for count, total, squares in stats.tolist():
            mean = total / count
            if count < 2:
                out.append((mean, None))
                continue
            variance = max(squares - count * mean * mean, 0.0) / (count - 1)
            out.append((mean, math.sqrt(variance) + 1e-8))
        return out

    def _whole_batch(self, batch: RolloutBatch | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Old values, returns and advantages ``[M]`` of the whole batch (all ranks' shards in rank order)."""
        if self.ranks is None:
            return batch.old_values, batch.returns, batch.advantages
        mine = None if batch is None else (batch.old_values, batch.returns, batch.advantages)
        parts = [p for p in self.ranks.all_gather_objects(mine, "batch metrics") if p is not None]
        return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]

    def _backward(self, terms: Any, warmup: bool, share: float = 1.0) -> None:
        # share: this rank's part of the global minibatch (1.0 in one process), so that the sum of
        # the ranks' gradients is the gradient of the whole minibatch's mean loss.
        scale = share / self.cfg.grad_accum_steps
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
        if self.ranks is not None:
            self.ranks.all_reduce_gradients(self.policy_params + self.value_params)
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
