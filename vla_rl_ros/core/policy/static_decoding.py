"""Token steps with a static KV cache and a compiled step: the batch-1 fix for large models on a GPU.

Measured on one H100 (docs/rl.md, "On a GPU"): an openvla-7b-shaped decode at batch 1 spends most
of its 426 ms launching about 18,000 kernels from Python, and the GPU is busy for 92 ms of it.
Capturing the token step in a CUDA graph removes the launch cost, and a graph needs fixed shapes
and fixed tensor addresses, which the dynamic cache (growing by one column per token) cannot give.
So here the cache is a ``transformers.StaticCache`` sized once per (batch, prompt-length bucket),
the attention mask covers the whole cache from the start (positions not yet written are hidden
by causality, since each step passes its ``cache_position``), and the step is
``torch.compile(fullgraph=True)``: ``mode="reduce-overhead"`` on CUDA records CUDA graphs; on a CPU
it is plain inductor. The prefill stays eager: its length varies with the instruction.

Adapters are updated in place (``load_state_dict``, optimizer steps), so recorded graphs read the
new weights; a test checks that a compiled decode after ``load_adapters`` matches the eager one.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers import StaticCache

PROMPT_BUCKET = 64
"""Cache lengths are rounded up to a multiple of this, so prompts of similar length share one
compiled graph instead of compiling once per instruction length."""
MAX_SLOTS = 16
"""Distinct (batch, cache length) shapes kept. Each holds a KV cache and its own compiled graph;
an unbounded number would fill GPU memory in a node whose batch size varies with traffic, so
further shapes decode eagerly (with a warning) rather than fail."""


@dataclass
class _Slot:
    cache: StaticCache
    mask: torch.Tensor  # [batch, cache length], rewritten in place each decode


class StaticCacheStepper:
    """Runs the prefill into a reusable static cache and returns a compiled one-token step.

    ``compile_options`` go to ``torch.compile`` (default: ``mode="reduce-overhead"`` on CUDA,
    inductor's defaults elsewhere); tests pass ``backend="aot_eager"`` to check in seconds that
    the step traces as one graph and gives the eager decode's numbers.
    """

    def __init__(self, language_model: torch.nn.Module, device: torch.device,
                 compile_options: dict[str, Any] | None = None) -> None:
        self.lm = language_model
        if compile_options is None:
            compile_options = {"mode": "reduce-overhead"} if device.type == "cuda" else {}
        self._slots: dict[tuple[int, int], _Slot] = {}
        self._warned_full = False
        self._compiled_step = torch.compile(self._token_step, fullgraph=True, **compile_options)

    def _token_step(self, cache: StaticCache, mask: torch.Tensor, tokens: torch.Tensor,
                    positions: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        out = self.lm.model(input_ids=tokens, attention_mask=mask, position_ids=positions,
                            past_key_values=cache, cache_position=cache_position, use_cache=True)
        return out.last_hidden_state[:, -1]

    def _slot(self, batch: int, length: int, dtype: torch.dtype) -> tuple[_Slot, Callable[..., torch.Tensor]]:
        """The slot of this shape and the step to run on it.

        Kept slots get the compiled step; beyond ``MAX_SLOTS`` shapes, a throwaway slot is
        stepped eagerly (the same numbers, with the launch cost back).
        """
        key = (batch, length)
        if key in self._slots:
            return self._slots[key], self._compiled_step
        slot = _Slot(StaticCache(config=self.lm.config, max_cache_len=length),
                     torch.zeros(batch, length, dtype=dtype, device=self.lm.device))
        if len(self._slots) < MAX_SLOTS:
            self._slots[key] = slot
            return slot, self._compiled_step
        if not self._warned_full:
            self._warned_full = True
            warnings.warn(f"compiled decode keeps {MAX_SLOTS} (batch, cache length) shapes; new shapes "
                          f"such as {key} decode eagerly (steadier batch sizes keep them compiled)",
                          RuntimeWarning)
        return slot, self._token_step

    def start(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
              num_tokens: int) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Prefill ``embeds`` [B, L]; returns the last hidden state [B, H] and ``step(tokens [B]) -> hidden``.

        The cache holds at least ``L + num_tokens - 1`` positions.
        """
        batch, prompt = mask.shape
        needed = prompt + num_tokens - 1
        slot, token_step = self._slot(batch, -(-needed // PROMPT_BUCKET) * PROMPT_BUCKET, mask.dtype)
        slot.cache.reset()  # zeros in place (nothing before the first prefill): graphs keep their addresses
        slot.mask.zero_()
        slot.mask[:, :prompt] = mask
        slot.mask[:, prompt:needed] = 1
        # Every cache slot this decode writes, made on the device once: the prefill's, then one per step.
        cache_positions = torch.arange(needed, device=mask.device)
        out = self.lm.model(inputs_embeds=embeds, attention_mask=slot.mask, position_ids=positions,
                            past_key_values=slot.cache, cache_position=cache_positions[:prompt],
                            use_cache=True)
        state = {"written": prompt, "positions": positions[:, -1:]}

        def step(tokens: torch.Tensor) -> torch.Tensor:
            state["positions"] = state["positions"] + 1
            cache_position = cache_positions[state["written"]:state["written"] + 1]
            state["written"] += 1
            hidden = token_step(slot.cache, slot.mask, tokens.unsqueeze(-1), state["positions"],
                                cache_position)
            return hidden.clone()  # a CUDA graph's output buffer is overwritten by its next replay
        return out.last_hidden_state[:, -1], step


__all__ = ["StaticCacheStepper", "PROMPT_BUCKET", "MAX_SLOTS"]
