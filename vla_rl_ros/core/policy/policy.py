"""``VLAPolicy``: the OpenVLA-architecture policy as the rest of the package uses it.

One object holds the model (with LoRA adapters injected), the critic's value head, the text
processor and the action tokenizer. Rollouts call :meth:`VLAPolicy.decode`, PPO calls
:meth:`VLAPolicy.evaluate` and :meth:`VLAPolicy.reference_log_probs`, imitation calls
:meth:`VLAPolicy.sft_loss`. The learner ships weights as adapter directories.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from vla_rl_ros.core.policy import lora
from vla_rl_ros.core.policy.action_tokenizer import IDENTITY_NORM_STATS, ActionTokenizer, select_norm_stats
from vla_rl_ros.core.policy.architecture import VLAArchitecture, preset
from vla_rl_ros.core.policy.checkpoint import load_model, read_tensors, save_model_dir
from vla_rl_ros.core.policy.config import PolicyConfig
from vla_rl_ros.core.policy.decoding import ActionSpace, decode_actions, evaluate_actions, sft_cross_entropy
from vla_rl_ros.core.policy.static_decoding import StaticCacheStepper
from vla_rl_ros.core.policy.model import OpenVLAModel, new_model
from vla_rl_ros.core.policy.processor import (STATE_VOCABULARY, Processor, build_word_tokenizer,
                                              libero_instructions, load_tokenizer)

VALUE_HEAD_FILE = "value_head.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class DecodeOutput:
    """One batched rollout step (all on the CPU)."""

    tokens: torch.Tensor
    """Action token ids, int64 [B, 7]."""
    actions: np.ndarray
    """Un-normalised continuous actions, float32 [B, 7]."""
    log_probs: torch.Tensor
    """Log-prob of each token under the rollout distribution (temperature, restriction), [B, 7]."""
    values: torch.Tensor
    """Critic value of each observation, [B]."""


@dataclass
class EvalOutput:
    """Teacher-forced scores of given tokens (with grad, on the policy's device)."""

    log_probs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor


class VLAPolicy:
    """OpenVLA-architecture VLA with LoRA adapters and a critic head; see the module docstring."""

    num_action_tokens = 7

    def __init__(self, model: OpenVLAModel, tokenizer: Tokenizer, norm_stats: Mapping[str, Any],
                 cfg: PolicyConfig, value_state: Mapping[str, torch.Tensor] | None = None) -> None:
        self.cfg = cfg
        self.arch: VLAArchitecture = model.arch
        self.device = torch.device(cfg.device)
        self.tokenizer = tokenizer
        self.norm_stats = dict(norm_stats)
        self.action_tokenizer = ActionTokenizer(self.arch.action_vocab_end,
                                                select_norm_stats(norm_stats, cfg.unnorm_key),
                                                self.arch.n_action_bins)
        if self.action_tokenizer.action_dim != self.num_action_tokens:
            raise ValueError(f"norm_stats describe {self.action_tokenizer.action_dim}-D actions, "
                             f"the policy emits {self.num_action_tokens}")
        self.processor = Processor(self.arch, tokenizer, cfg.resize_images, cfg.center_crop_area)
        self.value_head = nn.Linear(self.arch.hidden_size, 1).to(self.device)  # float32 whatever the LM dtype
        with torch.no_grad():
            self.value_head.weight.zero_()
            self.value_head.bias.zero_()
        if value_state is not None:
            self.value_head.load_state_dict(value_state)
        self.peft = lora.attach_lora(model.to(self.device), list(cfg.lora_target_modules), cfg.lora_rank,
                                     cfg.lora_alpha, cfg.lora_dropout, cfg.seed)
        self.model = model  # the same object, adapters injected in place
        self.model.eval()
        self._stepper: StaticCacheStepper | None = None  # built on the first compiled decode

    @property
    def space(self) -> ActionSpace:
        """How tokens are scored now (read from ``cfg`` on every call, so a changed temperature applies)."""
        return ActionSpace(self.cfg.temperature, self.arch.action_vocab_start, self.arch.action_vocab_end,
                           self.cfg.restrict_to_action_tokens)

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def create(cls, cfg: PolicyConfig, instructions: list[str] | None = None,
               norm_stats: dict | None = None) -> "VLAPolicy":
        """A new model of preset ``cfg.size`` with fresh weights and a word-level tokenizer.

        ``instructions`` define the vocabulary (default: every LIBERO instruction); unknown words
        become ``<unk>``. ``norm_stats`` default to identity statistics for actions in [-1, 1].
        """
        texts = libero_instructions() if instructions is None else list(instructions)
        if cfg.state_prompt:
            texts.append(STATE_VOCABULARY)
        tokenizer = build_word_tokenizer(texts)
        arch = preset(cfg.size, cfg.image_size, tokenizer.get_vocab_size(), cfg.state_prompt)
        model = new_model(arch, DTYPES[cfg.dtype], cfg.device, cfg.seed)
        return cls(model, tokenizer, norm_stats or {"default": IDENTITY_NORM_STATS}, cfg)

    @classmethod
    def load(cls, path: str, cfg: PolicyConfig) -> "VLAPolicy":
        """Load a directory saved by :meth:`save` or an openvla-7b style checkpoint directory."""
        model, config = load_model(path, DTYPES[cfg.dtype], cfg.device)
        value_path = Path(path) / VALUE_HEAD_FILE
        value_state = read_tensors(value_path) if value_path.is_file() else None
        return cls(model, load_tokenizer(path), config.get("norm_stats") or {}, cfg, value_state)

    @classmethod
    def from_config(cls, cfg: PolicyConfig) -> "VLAPolicy":
        """``load(cfg.model_path)`` when set, else ``create(cfg)``."""
        return cls.load(cfg.model_path, cfg) if cfg.model_path else cls.create(cfg)

    @classmethod
    def from_pretrained(cls, path: str, cfg: PolicyConfig | None = None) -> "VLAPolicy":
        """Alias of :meth:`load` (default config when none is given)."""
        return cls.load(path, cfg or PolicyConfig())

    def save_pretrained(self, path: str) -> None:
        """Alias of :meth:`save`."""
        self.save(path)

    def save(self, path: str, num_shards: int = 1) -> None:
        """Full model directory (LoRA folded into the weights, value head beside), written atomically."""
        weights = lora.merged_state_dict(self.peft)
        save_model_dir(path, self.arch, weights, self.tokenizer.to_str(), self.norm_stats, num_shards,
                       extra_files={VALUE_HEAD_FILE: self.value_head.state_dict()})

    # ---------------------------------------------------------------------------------- inputs
    @property
    def reads_state(self) -> bool:
        """True when the model's prompt carries the robot state: pass ``proprio`` to every call."""
        return bool(self.arch.state_prompt)

    def _inputs(self, images: np.ndarray, instructions: Sequence[str], proprio: np.ndarray | None = None):
        if isinstance(instructions, str):
            raise ValueError("instructions must be a list of strings, one per image, not a single string")
        if not isinstance(images, np.ndarray) or images.ndim != 4:
            shape = getattr(images, "shape", None)
            raise ValueError(f"images must be a uint8 numpy array [B, H, W, 3], got shape {shape}")
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        pixels = self.processor.pixels(images, self.device)
        input_ids, mask = self.processor.text(instructions, self.device, proprio)
        return pixels, input_ids, mask

    def _tokens(self, tokens: torch.Tensor | np.ndarray, batch: int) -> torch.Tensor:
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        if tuple(tokens.shape) != (batch, self.num_action_tokens):
            raise ValueError(f"tokens must have shape [{batch}, {self.num_action_tokens}], "
                             f"got {list(tokens.shape)}")
        return tokens

    # ------------------------------------------------------------------------------ inference
    def decode(self, images: np.ndarray, instructions: list[str], greedy: bool = False,
               generator: torch.Generator | None = None, proprio: np.ndarray | None = None) -> DecodeOutput:
        """Actions for B observations in one batched generation (no grad).

        ``generator`` (on the policy's device) makes sampling reproducible. ``proprio`` [B, 8] is
        required when :attr:`reads_state`, ignored otherwise (the same holds for every method below).
        """
        pixels, input_ids, mask = self._inputs(images, instructions, proprio)
        if self.cfg.compile_decode and self._stepper is None:
            self._stepper = StaticCacheStepper(self.model.language_model, self.device)
        stepper = self._stepper if self.cfg.compile_decode else None
        tokens, log_probs, values = decode_actions(self.model, self.value_head, pixels, input_ids, mask,
                                                   self.num_action_tokens, self.space, greedy, generator,
                                                   stepper)
        tokens = tokens.cpu()
        actions = self.action_tokenizer.decode(tokens.numpy())
        return DecodeOutput(tokens, actions, log_probs.cpu(), values.cpu())

    def evaluate(self, images: np.ndarray, instructions: list[str], tokens: torch.Tensor,
                 proprio: np.ndarray | None = None) -> EvalOutput:
        """Log-probs, entropies and values of ``tokens`` with grad (same distribution as decode)."""
        pixels, input_ids, mask = self._inputs(images, instructions, proprio)
        tokens = self._tokens(tokens, len(images))
        return EvalOutput(*evaluate_actions(self.model, self.value_head, pixels, input_ids, mask, tokens,
                                            self.space))

    def reference_log_probs(self, images: np.ndarray, instructions: list[str], tokens: torch.Tensor,
                            proprio: np.ndarray | None = None) -> torch.Tensor:
        """Log-probs of ``tokens`` under the reference policy: the same model, adapters disabled."""
        pixels, input_ids, mask = self._inputs(images, instructions, proprio)
        tokens = self._tokens(tokens, len(images))
        with torch.no_grad(), self.peft.disable_adapter():
            log_probs, _, _ = evaluate_actions(self.model, self.value_head, pixels, input_ids, mask, tokens,
                                               self.space)
        return log_probs

    def sft_loss(self, images: np.ndarray, instructions: list[str], tokens: torch.Tensor,
                 proprio: np.ndarray | None = None) -> torch.Tensor:
        """Imitation loss: cross-entropy over the 7 action tokens and EOS (full vocabulary, T = 1)."""
        pixels, input_ids, mask = self._inputs(images, instructions, proprio)
        tokens = self._tokens(tokens, len(images))
        return sft_cross_entropy(self.model, pixels, input_ids, mask, tokens, self.arch.eos_token_id)

    # ------------------------------------------------------------------------------ parameters
    def policy_parameters(self) -> list[nn.Parameter]:
        """The LoRA parameters (what PPO's policy optimizer group trains)."""
        return [p for n, p in self.peft.named_parameters() if "lora_" in n]

    def value_parameters(self) -> list[nn.Parameter]:
        """The critic head's parameters (the value optimizer group)."""
        return list(self.value_head.parameters())

    def sft_parameters(self, full: bool = True) -> list[nn.Parameter]:
        """Parameters imitation trains: all base weights (unfrozen by this call) or only LoRA."""
        if not full:
            return self.policy_parameters()
        base = [p for n, p in self.peft.named_parameters() if "lora_" not in n]
        for param in base:
            param.requires_grad_(True)
        return base

    def freeze_base(self) -> None:
        """Freeze the base weights again (after full SFT, before RL on adapters only)."""
        for name, param in self.peft.named_parameters():
            param.requires_grad_("lora_" in name)

    # -------------------------------------------------------------------------------- adapters
    def save_adapters(self, directory: str, version: int) -> str:
        """Write LoRA + value head to a versioned directory (atomically); returns the weights' sha256."""
        return lora.save_adapter_dir(directory, self.peft, self.value_head, version)

    def load_adapters(self, directory: str) -> int:
        """Load an adapter directory written by :meth:`save_adapters`; returns its version."""
        meta, tensors = lora.read_adapter_dir(directory, self.peft)
        lora.apply_adapter_tensors(self.peft, self.value_head, tensors, str(directory))
        return int(meta["version"])

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: total (incl. LoRA), LoRA, value head."""
        return {"total": sum(p.numel() for p in self.peft.parameters()),
                "lora": sum(p.numel() for p in self.policy_parameters()),
                "value_head": sum(p.numel() for p in self.value_parameters())}
