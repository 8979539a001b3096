"""Configuration of the VLA policy (model size, decoding, LoRA, critic)."""
from __future__ import annotations

from dataclasses import dataclass, field

from vla_rl_ros.core.config_io import check

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "projector")
"""Allowed ``lora_target_modules``: the Llama linear layers by name, or the whole projector."""


@dataclass
class PolicyConfig:
    """Which VLA to run and how to decode actions from it.

    ``model_path`` empty means: build the embedded small default architecture from
    ``size`` with fresh weights (what a laptop without a checkpoint runs).
    """

    model_path: str = ""
    """Local directory of a saved policy (ours) or an openvla-7b style checkpoint; '' = new small model."""
    size: str = "small"
    """New-model preset: 'tiny' (tests), 'small' (CPU default), 'base', 'openvla-7b' (GPU, shape only)."""
    image_size: int = 128
    """Square input resolution of the vision backbones, in pixels."""
    dtype: str = "float32"
    """'float32' or 'bfloat16'."""
    device: str = "cpu"
    """Torch device, e.g. 'cpu' or 'cuda:0'."""
    temperature: float = 1.5
    """Sampling temperature for rollouts (VLA-RL uses 1.5); also used when computing PPO log-probs."""
    restrict_to_action_tokens: bool = True
    """Sample (and argmax, and score) only among the 256 action token ids: every decision is a valid
    action, the RL default. false = the whole vocabulary, as OpenVLA's ``predict_action`` (greedy
    argmax over all logits; a non-action id decodes to the edge bin, as in the original): what
    reproduces an openvla checkpoint's actions exactly."""
    lora_rank: int = 16
    """LoRA rank on the language model's linear layers (lm_head excluded)."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """Dropout inside LoRA adapters (inactive: the policy always runs in eval mode so that rollout and
    update log-probs agree exactly)."""
    unnorm_key: str = ""
    """Key into the checkpoint's norm_stats for action un-normalisation; '' = the only key present."""
    seed: int = 0
    """Seed for weight initialisation of a new model and for sampling."""
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS[:7]))
    """Where LoRA goes: Llama projections by name (all layers) and/or 'projector'; never lm_head."""
    resize_images: bool = True
    """Resize camera frames of another size (bicubic, like OpenVLA); false = such frames are an error."""
    state_prompt: bool = True
    """New models only: the prompt ends with the gripper opening and hand height as words, read from
    proprio (measured: image-only SFT of the small model scored 0/30 held out, with the state 7/30).
    A loaded model keeps what it was trained with (stored in its config.json)."""
    compile_decode: bool = False
    """Decode the token steps after the prefill with a static KV cache and a ``torch.compile``d step
    (CUDA graphs on a GPU): built for the 7B shape's batch-1 speed, where kernel launches from
    Python take most of the time. Each new (batch size, prompt-length bucket) compiles once, which
    takes seconds to a minute; tokens and log-probs equal the eager decode's. Inductor needs a C++
    compiler on a CPU (set-up's g++) and Triton on a GPU (in CUDA builds of torch)."""
    chunk_size: int = 1
    """Actions per policy call (action chunk). 1 = OpenVLA's one action per call, what openvla-7b
    checkpoints need. A loaded model must have been trained with the same value (a named
    ``ChunkSizeError`` otherwise); the shipped small-model recipe uses 8 (config/train_sim.yaml:
    8-step chunks as SimpleVLA-RL and OpenVLA-OFT on LIBERO; a 280-step episode then costs 35
    decodes and 35 renders instead of 280)."""
    chunk_decoding: str = "parallel"
    """New models with ``chunk_size`` > 1: 'parallel' (one forward pass predicts all K x 7 action
    tokens, each given the observation only, as OpenVLA-OFT) or 'autoregressive' (K x 7 tokens one
    after the other). Parallel is the default: 28.5 ms a call against 195 ms autoregressive for 8
    actions at batch 2 on the CPU (docs/results/learning/rollout_cost_k8_full_meshes.json), and PPO scores it
    with the same single pass."""
    center_crop_area: float = 1.0
    """Keep this central fraction of each frame's area and resize it back (tf ``crop_and_resize``),
    after the JPEG/Lanczos steps: OpenVLA evaluates its LIBERO fine-tunes, which were trained with
    random-crop augmentation (90 % area), with 0.9; 1.0 = no crop."""
    jpeg_round_trip: bool = False
    """JPEG-encode (quality 95) and decode each frame first: OpenVLA's LIBERO fine-tunes were trained
    on JPEG-stored frames and evaluated with this round trip (run_libero_eval.py)."""
    lanczos_resize: bool = False
    """Resize frames to the model's input size with Lanczos3 + antialiasing (tf.image.resize, rounded
    to uint8) before the crop, as OpenVLA's LIBERO evaluation and training data loader do; false =
    only the checkpoint processor's resize (bicubic for openvla-7b)."""
    openvla_libero_gripper: bool = False
    """Map the gripper action of OpenVLA's LIBERO fine-tunes (trained on [0, 1], 1 = open) to LIBERO's
    command (-1 = open, +1 = close): -sign(2g - 1), as run_libero_eval.py; imitation labels map back.
    Only for those checkpoints: models trained here use LIBERO's convention already."""

    def __post_init__(self) -> None:
        check(self.size in ("tiny", "small", "base", "openvla-7b"), "policy.size", self.size,
              "one of tiny, small, base, openvla-7b")
        check(16 <= self.image_size <= 1024, "policy.image_size", self.image_size, "between 16 and 1024")
        check(self.dtype in ("float32", "bfloat16"), "policy.dtype", self.dtype, "float32 or bfloat16")
        check(self.temperature > 0, "policy.temperature", self.temperature, "must be > 0")
        check(self.lora_rank > 0, "policy.lora_rank", self.lora_rank, "must be > 0")
        check(self.lora_alpha > 0, "policy.lora_alpha", self.lora_alpha, "must be > 0")
        check(0.0 <= self.lora_dropout < 1.0, "policy.lora_dropout", self.lora_dropout, "in [0, 1)")
        check(0.1 <= self.center_crop_area <= 1.0, "policy.center_crop_area", self.center_crop_area,
              "in [0.1, 1]")
        check(1 <= self.chunk_size <= 36, "policy.chunk_size", self.chunk_size, "between 1 and 36")
        check(self.chunk_decoding in ("parallel", "autoregressive"), "policy.chunk_decoding",
              self.chunk_decoding, "'parallel' or 'autoregressive'")
        bad = [m for m in self.lora_target_modules if m not in LORA_TARGETS]
        check(bool(self.lora_target_modules) and not bad, "policy.lora_target_modules",
              self.lora_target_modules, f"a non-empty list drawn from {', '.join(LORA_TARGETS)}")


__all__ = ["PolicyConfig", "LORA_TARGETS"]
