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
from torch import nn

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.policy import lora
from vla_rl_ros.core.policy.action_tokenizer import IDENTITY_NORM_STATS, ActionTokenizer, select_norm_stats
from vla_rl_ros.core.policy.architecture import ACTION_TOKENS_PER_STEP, VLAArchitecture, preset
from vla_rl_ros.core.policy.model_dir import (ARCH_KEY, load_model, read_norm_stats,
                                              read_preprocessor_config, read_tensors, save_model_dir)
from vla_rl_ros.core.policy.config import PolicyConfig
from vla_rl_ros.core.policy.decoding import (ActionSpace, decode_actions, decode_parallel, evaluate_actions,
                                             evaluate_parallel, sft_cross_entropy, sft_cross_entropy_parallel)
from vla_rl_ros.core.policy.static_decoding import StaticCacheStepper
from vla_rl_ros.core.policy.model import OpenVLAModel, new_model
from vla_rl_ros.core.policy.processor import (STATE_VOCABULARY, Processor, TextTokenizer,
                                              build_word_tokenizer, libero_instructions, load_tokenizer,
                                              space_token_id, tokenizer_files, transforms_from_preprocessor)

VALUE_HEAD_FILE = "value_head.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ChunkSizeError(ConfigError):
    """A model, PRM, adapter or message made for K actions per call met a consumer expecting another K."""


@dataclass
class DecodeOutput:
    """One batched rollout decision (all on the CPU): a chunk of K actions per observation."""

    tokens: torch.Tensor
    """Action token ids, int64 [B, K * 7] (action k's 7 tokens at columns 7k..7k+6)."""
    actions: np.ndarray
    """Un-normalised continuous actions, float32 [B, K, 7]."""
    log_probs: torch.Tensor
    """Log-prob of each token under the rollout distribution (temperature, restriction), [B, K * 7]."""
    values: torch.Tensor
    """Critic value of each observation, [B]."""


@dataclass
class EvalOutput:
    """Teacher-forced scores of given tokens (with grad, on the policy's device)."""

    log_probs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor


def libero_gripper_from_openvla(gripper: np.ndarray) -> np.ndarray:
    """OpenVLA LIBERO fine-tune gripper (trained on [0, 1], 1 = open) -> LIBERO command (-1 open, +1 close).

    run_libero_eval.py: ``normalize_gripper_action(binarize=True)`` (sign(2g - 1)) then
    ``invert_gripper_action`` (times -1).
    """
    return (-np.sign(2.0 * np.asarray(gripper, dtype=np.float64) - 1.0)).astype(np.float32)


def openvla_gripper_from_libero(gripper: np.ndarray) -> np.ndarray:
    """Inverse of :func:`libero_gripper_from_openvla` for imitation labels: -1 (open) -> 1, +1 -> 0."""
    return np.clip((1.0 - np.asarray(gripper, dtype=np.float64)) / 2.0, 0.0, 1.0)


def check_chunking(arch: VLAArchitecture, cfg: PolicyConfig) -> None:
    """A model runs only with the chunk size (and, K > 1, the decoding) it was trained with."""
    if arch.chunk_size != cfg.chunk_size:
        raise ChunkSizeError(f"the model emits chunks of {arch.chunk_size} action(s) per call but "
                             f"policy.chunk_size={cfg.chunk_size}; set policy.chunk_size={arch.chunk_size} "
                             "(openvla-7b checkpoints: 1) or use a model trained with "
                             f"{cfg.chunk_size}")
    if arch.chunk_size > 1 and arch.chunk_decoding != cfg.chunk_decoding:
        raise ChunkSizeError(f"the model decodes its chunks with {arch.chunk_decoding!r} but "
                             f"policy.chunk_decoding={cfg.chunk_decoding!r}; set it to "
                             f"{arch.chunk_decoding!r}")


class VLAPolicy:
    """OpenVLA-architecture VLA with LoRA adapters and a critic head; see the module docstring."""

    def __init__(self, model: OpenVLAModel, tokenizer: TextTokenizer, norm_stats: Mapping[str, Any],
                 cfg: PolicyConfig, value_state: Mapping[str, torch.Tensor] | None = None,
                 preprocessor_config: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.arch: VLAArchitecture = model.arch
        check_chunking(self.arch, cfg)
        self.chunk_size = self.arch.chunk_size
        """Actions per decode (K)."""
        self.num_action_tokens = self.arch.tokens_per_call
        """Action tokens per decode: 7 x K."""
        self.device = torch.device(cfg.device)
        self.tokenizer = tokenizer
        self.norm_stats = dict(norm_stats)
        self.action_tokenizer = ActionTokenizer(self.arch.action_vocab_end,
                                                select_norm_stats(norm_stats, cfg.unnorm_key),
                                                self.arch.n_action_bins)
        if self.action_tokenizer.action_dim != ACTION_TOKENS_PER_STEP:
            raise ValueError(f"norm_stats describe {self.action_tokenizer.action_dim}-D actions, "
                             f"the policy emits {ACTION_TOKENS_PER_STEP} tokens per action")
        self.preprocessor_config = dict(preprocessor_config) if preprocessor_config is not None else None
        """A loaded checkpoint's ``preprocessor_config.json`` (what its image processor runs), or None."""
        transforms = (transforms_from_preprocessor(preprocessor_config, self.arch)
                      if preprocessor_config is not None else None)
        self.processor = Processor(self.arch, tokenizer, cfg.resize_images, cfg.center_crop_area, transforms,
                                   cfg.jpeg_round_trip, cfg.lanczos_resize)
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
        decoding = cfg.chunk_decoding if cfg.chunk_size > 1 else "autoregressive"
        arch = preset(cfg.size, cfg.image_size, tokenizer.get_vocab_size(), cfg.state_prompt, cfg.chunk_size,
                      decoding)
        model = new_model(arch, DTYPES[cfg.dtype], cfg.device, cfg.seed)
        return cls(model, tokenizer, norm_stats or {"default": IDENTITY_NORM_STATS}, cfg)

    @classmethod
    def load(cls, path: str, cfg: PolicyConfig) -> "VLAPolicy":
        """Load a directory saved by :meth:`save` or an openvla-7b style checkpoint directory.

        Reads config.json, the weights, tokenizer.json (else tokenizer.model), and when present
        preprocessor_config.json (image resize/crop/normalisation), dataset_statistics.json (action
        statistics, replacing config.json's as OpenVLA's evaluation does) and value_head.safetensors.
        """
        model, config = load_model(path, DTYPES[cfg.dtype], cfg.device)
        tokenizer = load_tokenizer(path)
        if ARCH_KEY not in config:
            # OpenVLA appends Llama-2's '\u2581' (29871) to every prompt; take the id from this
            # directory's own tokenizer (29871 for the real one).
            space = space_token_id(tokenizer)
            model.arch.prompt_suffix_ids = (space,) if space is not None else model.arch.prompt_suffix_ids
        value_path = Path(path) / VALUE_HEAD_FILE
        value_state = read_tensors(value_path) if value_path.is_file() else None
        return cls(model, tokenizer, read_norm_stats(path, config), cfg, value_state,
                   read_preprocessor_config(path))

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
        save_model_dir(path, self.arch, weights, tokenizer_files(self.tokenizer), self.norm_stats, num_shards,
                       extra_files={VALUE_HEAD_FILE: self.value_head.state_dict()},
                       preprocessor_config=self.preprocessor_config)

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
            raise ChunkSizeError(f"tokens must have shape [{batch}, {self.num_action_tokens}], "
                                 f"got {list(tokens.shape)}")
        return tokens

    @property
    def parallel(self) -> bool:
        """True when a chunk is decoded in one forward pass (``chunk_decoding='parallel'``)."""
        return self.chunk_size > 1 and self.arch.chunk_decoding == "parallel"

    def chunk_actions(self, tokens: torch.Tensor | np.ndarray) -> np.ndarray:
        """Token ids [B, K * 7] -> continuous actions float32 [B, K, 7]."""
        tokens = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens)
        flat = self.action_tokenizer.decode(tokens.reshape(-1, ACTION_TOKENS_PER_STEP))
        if self.cfg.openvla_libero_gripper:
            flat[:, -1] = libero_gripper_from_openvla(flat[:, -1])
        return flat.reshape(len(tokens), self.chunk_size, ACTION_TOKENS_PER_STEP)

    def chunk_tokens(self, actions: np.ndarray) -> np.ndarray:
        """Continuous actions [B, K, 7] -> token ids int64 [B, K * 7] (imitation labels)."""
        actions = np.asarray(actions)
        if actions.ndim != 3 or actions.shape[1:] != (self.chunk_size, ACTION_TOKENS_PER_STEP):
            raise ChunkSizeError(f"action chunks must be [B, {self.chunk_size}, {ACTION_TOKENS_PER_STEP}], "
                                 f"got {list(actions.shape)}")
        flat = actions.reshape(-1, ACTION_TOKENS_PER_STEP)
        if self.cfg.openvla_libero_gripper:
            flat = flat.astype(np.float64, copy=True)
            flat[:, -1] = openvla_gripper_from_libero(flat[:, -1])
        return self.action_tokenizer.encode(flat).reshape(len(actions), self.num_action_tokens)

    # ------------------------------------------------------------------------------ inference
    def decode(self, images: np.ndarray, instructions: list[str], greedy: bool = False,
               generator: torch.Generator | None = None, proprio: np.ndarray | None = None) -> DecodeOutput:
        """Actions for B observations in one batched generation (no grad).

        ``generator`` (on the policy's device) makes sampling reproducible. ``proprio`` [B, 8] is
        required when :attr:`reads_state`, ignored otherwise (the same holds for every method below).
        """
        pixels, input_ids, mask = self._inputs(images, instructions, proprio)
        if self.parallel:
            tokens, log_probs, values = decode_parallel(self.model, self.value_head, pixels, input_ids, mask,
                                                        self.num_action_tokens, self.space,
                                                        self.arch.action_vocab_start, greedy, generator)
        else:
            if self.cfg.compile_decode and self._stepper is None:
                self._stepper = StaticCacheStepper(self.model.language_model, self.device)
            stepper = self._stepper if self.cfg.compile_decode else None
            tokens, log_probs, values = decode_actions(self.model, self.value_head, pixels, input_ids, mask,
                                                       self.num_action_tokens, self.space, greedy, generator,
                                                       stepper)
        tokens = tokens.cpu()
        return DecodeOutput(tokens, self.chunk_actions(tokens), log_probs.cpu(), values.cpu())

    def _score(self, pixels: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
               tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.parallel:
            return evaluate_parallel(self.model, self.value_head, pixels, input_ids, mask, tokens, self.space,
                                     self.arch.action_vocab_start)
        return evaluate_actions(self.model, self.value_head, pixels, input_ids, mask, tokens, self.space)

    def evaluate(self, images: np.ndarray, instructions: list[str], tokens: torch.Tensor,
                 proprio: np.ndarray | None = None) -> EvalOutput:
        """Log-probs, entropies and values of ``tokens`` with grad (same distribution as decode)."""
        pixels, input_ids, mask = self._inputs(images, instructions, proprio)
        tokens = self._tokens(tokens, len(images))
        return EvalOutput(*self._score(pixels, input_ids, mask, tokens))

    def reference_log_probs(self, images: np.ndarray, instructions: list[str], tokens: torch.Tensor,
                            proprio: np.ndarray | None = None) -> torch.Tensor:
        """Log-probs of ``tokens`` under the reference policy: the same model, adapters disabled."""
        pixels, input_ids, mask = self._inputs(images, instructions, proprio)
        tokens = self._tokens(tokens, len(images))
        with torch.no_grad(), self.peft.disable_adapter():
            log_probs, _, _ = self._score(pixels, input_ids, mask, tokens)
        return log_probs

    def sft_loss(self, images: np.ndarray, instructions: list[str], tokens: torch.Tensor,
                 proprio: np.ndarray | None = None) -> torch.Tensor:
        """Imitation loss: cross-entropy over the K x 7 action tokens, full vocabulary, T = 1.

        Autoregressive decoding also scores the EOS after them.
        """
        pixels, input_ids, mask = self._inputs(images, instructions, proprio)
        tokens = self._tokens(tokens, len(images))
        if self.parallel:
            return sft_cross_entropy_parallel(self.model, pixels, input_ids, mask, tokens,
                                              self.arch.action_vocab_start)
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
        return lora.save_adapter_dir(directory, self.peft, self.value_head, version,
                                     {"chunk_size": self.chunk_size})

    def load_adapters(self, directory: str) -> int:
        """Load an adapter directory written by :meth:`save_adapters`; returns its version.

        Adapters trained on chunks of another size are refused (``ChunkSizeError``): their LoRA
        shapes match, but their action tokens mean other steps. Directories written before chunks
        existed carry no chunk size and load as before.
        """
        meta, tensors = lora.read_adapter_dir(directory, self.peft)
        theirs = meta.get("chunk_size")
        if theirs is not None and int(theirs) != self.chunk_size:
            raise ChunkSizeError(f"adapters {directory} were trained on chunks of {int(theirs)} action(s); "
                                 f"this policy emits chunks of {self.chunk_size}")
        lora.apply_adapter_tensors(self.peft, self.value_head, tensors, str(directory))
        return int(meta["version"])

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: total (incl. LoRA), LoRA, value head."""
        return {"total": sum(p.numel() for p in self.peft.parameters()),
                "lora": sum(p.numel() for p in self.policy_parameters()),
                "value_head": sum(p.numel() for p in self.value_parameters())}
