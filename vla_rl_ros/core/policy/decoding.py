"""Batched action decoding and teacher-forced action log-probs: the two halves of PPO.

Both paths score tokens with :meth:`ActionSpace.log_probs` (same temperature, same optional
restriction to the action-token range), so rollout log-probs and update log-probs agree by
construction; a test checks they match to float rounding across batch sizes and padding.
The value estimate is read from the last prompt token's hidden state in both paths.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vla_rl_ros.core.policy.model import OpenVLAModel
from vla_rl_ros.core.policy.static_decoding import StaticCacheStepper


@dataclass(frozen=True)
class ActionSpace:
    """How action tokens are scored: temperature and an optional id range ``[start, end)``."""

    temperature: float
    start: int
    end: int
    restrict: bool

    def log_probs(self, hidden: torch.Tensor, lm_head: nn.Linear) -> torch.Tensor:
        """Log-probs over the candidates (the action range if restricted, else the whole vocab).

        When restricted, only the 256 action rows of ``lm_head`` are multiplied (the 7B head has
        32064 rows); ``lm_head`` never carries LoRA, so its weight is the whole story.
        """
        if self.restrict:
            logits = F.linear(hidden, lm_head.weight[self.start:self.end])
        else:
            logits = lm_head(hidden)
        return F.log_softmax(logits.float() / self.temperature, dim=-1)

    def candidate_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids -> column in :meth:`log_probs`'s output."""
        if not self.restrict:
            return tokens
        if bool(((tokens < self.start) | (tokens >= self.end)).any()):
            raise ValueError(f"tokens outside the action range [{self.start}, {self.end}): "
                             f"{tokens[(tokens < self.start) | (tokens >= self.end)][:5].tolist()}")
        return tokens - self.start

    def token_id(self, index: torch.Tensor) -> torch.Tensor:
        """Column in the candidates -> token id."""
        return index + self.start if self.restrict else index


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # Left padding: positions count real tokens only, so every row starts at 0.
    return (mask.cumsum(dim=-1) - 1).clamp(min=0)


def _dynamic_start(lm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                   num_tokens: int) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Eager prefill into a cache that grows by one column per token.

    Same contract as :meth:`StaticCacheStepper.start` (``num_tokens`` is unused: the cache grows).
    """
    out = lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    state = {"mask": mask, "positions": positions[:, -1:], "cache": out.past_key_values}

    def step(tokens: torch.Tensor) -> torch.Tensor:
        state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(state["mask"].shape[0], 1)], dim=1)
        state["positions"] = state["positions"] + 1
        stepped = lm.model(input_ids=tokens.unsqueeze(-1), attention_mask=state["mask"],
                           position_ids=state["positions"], past_key_values=state["cache"], use_cache=True)
        return stepped.last_hidden_state[:, -1]
    return out.last_hidden_state[:, -1], step


@torch.no_grad()
def decode_actions(model: OpenVLAModel, value_head: nn.Module, pixel_values: torch.Tensor,
                   input_ids: torch.Tensor, attention_mask: torch.Tensor, num_tokens: int,
                   space: ActionSpace, greedy: bool = False, generator: torch.Generator | None = None,
                   stepper: StaticCacheStepper | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample (or argmax) ``num_tokens`` tokens for B prompts with one prefill and a KV cache.

    ``stepper`` runs the token steps with a static cache and a compiled step (``policy.compile_decode``);
    without it the cache grows eagerly. Both give the same tokens and log-probs (a test checks).
    Returns token ids [B, K], their log-probs under ``space`` [B, K] (float32) and values [B].
    """
    lm = model.language_model
    embeds, mask = model.multimodal_embeddings(pixel_values, input_ids, attention_mask)
    start = stepper.start if stepper is not None else partial(_dynamic_start, lm)
    hidden, step = start(embeds, mask, _positions(mask), num_tokens)
    values = value_head(hidden.float()).squeeze(-1)
    tokens, log_probs = [], []
    for index in range(num_tokens):
        logp = space.log_probs(hidden, lm.lm_head)
        choice = _sample(logp, greedy, generator)
        tokens.append(space.token_id(choice))
        log_probs.append(logp.gather(-1, choice.unsqueeze(-1)).squeeze(-1))
        if index < num_tokens - 1:
            hidden = step(tokens[-1])
    return torch.stack(tokens, dim=1), torch.stack(log_probs, dim=1), values


def teacher_forced_hidden(model: OpenVLAModel, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Hidden states [B, K, H] that predict each of the K ``targets`` (one forward, no cache).

    Position k holds the state after the prompt and ``targets[:, :k]``; position 0 is the last
    prompt token, where the critic reads the value.
    """
    lm = model.language_model
    count = targets.shape[1]
    ids = torch.cat([input_ids, targets[:, :-1]], dim=1)
    mask = torch.cat([attention_mask, attention_mask.new_ones(targets.shape[0], count - 1)], dim=1)
    embeds, full_mask = model.multimodal_embeddings(pixel_values, ids, mask)
    out = lm.model(inputs_embeds=embeds, attention_mask=full_mask, position_ids=_positions(full_mask))
    return out.last_hidden_state[:, -count:]


def evaluate_actions(model: OpenVLAModel, value_head: nn.Module, pixel_values: torch.Tensor,
                     input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: torch.Tensor,
                     space: ActionSpace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs [B, K] and entropies [B, K] of given ``tokens`` under ``space``, and values [B]."""
    hidden = teacher_forced_hidden(model, pixel_values, input_ids, attention_mask, tokens)
    logp_all = space.log_probs(hidden, model.language_model.lm_head)
    log_probs = logp_all.gather(-1, space.candidate_index(tokens).unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(dim=-1)
    values = value_head(hidden[:, 0].float()).squeeze(-1)
    return log_probs, entropy, values


def slot_hidden(model: OpenVLAModel, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, slot_start: int, count: int) -> torch.Tensor:
    """Hidden states [B, 1 + count, H] of parallel decoding: the last prompt token, then ``count`` slots.

    The prompt is followed by ``count`` action slots whose inputs are the token ids
    ``slot_start .. slot_start + count - 1``: parallel decoding never feeds a chosen action token
    back, so the action tokens' input embeddings are free to serve as learned slot queries (OFT
    feeds zero embeddings with bidirectional attention; distinct queries let a causal 2-layer model
    tell its slots apart with no new parameter). Slot j's hidden state predicts action token j;
    position 0 is where the critic reads the value, as in :func:`teacher_forced_hidden`.
    """
    batch = input_ids.shape[0]
    slots = torch.arange(slot_start, slot_start + count, device=input_ids.device).expand(batch, count)
    ids = torch.cat([input_ids, slots], dim=1)
    mask = torch.cat([attention_mask, attention_mask.new_ones(batch, count)], dim=1)
    embeds, full_mask = model.multimodal_embeddings(pixel_values, ids, mask)
    lm = model.language_model.model
    out = lm(inputs_embeds=embeds, attention_mask=full_mask, position_ids=_positions(full_mask))
    return out.last_hidden_state[:, -count - 1:]


def _sample(logp: torch.Tensor, greedy: bool, generator: torch.Generator | None) -> torch.Tensor:
    """One choice per row of ``logp`` [..., C]: argmax, or a draw from ``exp(logp)``."""
    if greedy:
        return logp.argmax(dim=-1)
    probs = logp.exp().reshape(-1, logp.shape[-1])
    if generator is not None and generator.device != probs.device:
        probs = probs.to(generator.device)  # e.g. a CPU generator driving a GPU policy
    choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logp.device)
    return choice.reshape(logp.shape[:-1])


@torch.no_grad()
def decode_parallel(model: OpenVLAModel, value_head: nn.Module, pixel_values: torch.Tensor,
                    input_ids: torch.Tensor, attention_mask: torch.Tensor, num_tokens: int,
                    space: ActionSpace, slot_start: int, greedy: bool = False,
                    generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ``num_tokens`` action tokens from one forward pass (see :func:`slot_hidden`).

    Same return contract as :func:`decode_actions`: tokens [B, K], log-probs [B, K], values [B].
    """
    hidden = slot_hidden(model, pixel_values, input_ids, attention_mask, slot_start, num_tokens)
    values = value_head(hidden[:, 0].float()).squeeze(-1)
    logp = space.log_probs(hidden[:, 1:], model.language_model.lm_head)
    choice = _sample(logp, greedy, generator)
    return space.token_id(choice), logp.gather(-1, choice.unsqueeze(-1)).squeeze(-1), values


def evaluate_parallel(model: OpenVLAModel, value_head: nn.Module, pixel_values: torch.Tensor,
                      input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: torch.Tensor,
                      space: ActionSpace, slot_start: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`evaluate_actions` for parallel decoding: the very forward pass the decode ran, with grad."""
    hidden = slot_hidden(model, pixel_values, input_ids, attention_mask, slot_start, tokens.shape[1])
    logp_all = space.log_probs(hidden[:, 1:], model.language_model.lm_head)
    log_probs = logp_all.gather(-1, space.candidate_index(tokens).unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(dim=-1)
    values = value_head(hidden[:, 0].float()).squeeze(-1)
    return log_probs, entropy, values


def sft_cross_entropy_parallel(model: OpenVLAModel, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                               attention_mask: torch.Tensor, tokens: torch.Tensor, slot_start: int
                               ) -> torch.Tensor:
    """Imitation loss of parallel decoding: mean cross-entropy of every slot's token.

    No EOS: the length is fixed.
    """
    hidden = slot_hidden(model, pixel_values, input_ids, attention_mask, slot_start, tokens.shape[1])
    logits = model.language_model.lm_head(hidden[:, 1:]).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))


def sft_cross_entropy(model: OpenVLAModel, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, tokens: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """OpenVLA's imitation loss: mean cross-entropy over the K action tokens and the EOS after them."""
    eos = torch.full_like(tokens[:, :1], eos_token_id)
    targets = torch.cat([tokens, eos], dim=1)
    hidden = teacher_forced_hidden(model, pixel_values, input_ids, attention_mask, targets)
    logits = model.language_model.lm_head(hidden).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
