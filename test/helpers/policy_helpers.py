"""Shared builders for the policy tests: tiny models and an openvla-layout checkpoint written in code."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.policy.model_dir import ARCH_KEY, write_shards
from vla_rl_ros.core.policy.model import OpenVLAModel

INSTRUCTIONS = ["pick up the black bowl and place it on the plate", "open the top drawer of the cabinet",
                "put the cream cheese in the bowl"]

NORM_STATS = {
    "libero_spatial_no_noops": {"action": {
        "q01": [-0.75, -0.6, -0.9, -0.1, -0.2, -0.3, 0.0], "q99": [0.9, 0.8, 0.95, 0.12, 0.25, 0.35, 1.0],
        "mask": [True, True, True, True, True, True, False]}},
    "bridge_orig": {"action": {"q01": [-0.03] * 7, "q99": [0.03] * 7, "mask": [True] * 6 + [False]}},
}


def tiny_cfg(**overrides) -> PolicyConfig:
    """The 'tiny' preset, fp32, deterministic; image-only unless ``state_prompt=True`` is passed
    (these tests are about decoding and checkpoints; test_policy_state_prompt covers the state)."""
    return PolicyConfig(**{"size": "tiny", "image_size": 32, "seed": 3, "state_prompt": False, **overrides})


def tiny_policy(**overrides) -> VLAPolicy:
    """A fresh tiny policy over the test instructions."""
    return VLAPolicy.create(tiny_cfg(**overrides), instructions=INSTRUCTIONS)


# Prompts of different lengths, so batches of them are left-padded.
PADDED_TEXTS = [INSTRUCTIONS[0], "open the drawer", INSTRUCTIONS[2], "pick up the bowl", INSTRUCTIONS[1]]


def images(batch: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random uint8 camera frames [B, size, size, 3]."""
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def randomize_adapters(policy: VLAPolicy, seed: int = 0, std: float = 0.2) -> None:
    """Give LoRA and the value head non-trivial weights (fresh LoRA is an exact no-op)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in policy.policy_parameters() + policy.value_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * std)


def randomize_base(policy: VLAPolicy, seed: int = 0, std: float = 0.02) -> None:
    """Perturb every base weight (LoRA stays an exact no-op) so a checkpoint is not the init one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in policy.peft.named_parameters():
            if "lora_" not in name:
                param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * std)


def varied_policy() -> VLAPolicy:
    """Tiny policy with non-trivial base, LoRA and value weights, sampling at temperature 1.5."""
    policy = tiny_policy(temperature=1.5)
    randomize_base(policy, std=0.05)
    randomize_adapters(policy, std=0.05)
    return policy


def unused_openvla_tensors(model: OpenVLAModel) -> dict[str, torch.Tensor]:
    """What openvla-7b stores but never uses: each ViT's last block, final norms, SigLIP's attn_pool."""
    gen = torch.Generator().manual_seed(7)
    extra = {}
    for name, vit in (("featurizer", model.vision_backbone.featurizer),
                      ("fused_featurizer", model.vision_backbone.fused_featurizer)):
        width, last = vit.spec.width, vit.spec.depth - 1
        for key, tensor in vit.blocks[0].state_dict().items():
            extra[f"vision_backbone.{name}.blocks.{last}.{key}"] = torch.randn(tensor.shape, generator=gen)
        extra[f"vision_backbone.{name}.norm.weight"] = torch.ones(width)
        extra[f"vision_backbone.{name}.norm.bias"] = torch.zeros(width)
    width = model.vision_backbone.fused_featurizer.spec.width
    for key, shape in {"latent": (1, 1, width), "q.weight": (width, width), "kv.weight": (2 * width, width),
                       "proj.weight": (width, width), "mlp.fc1.weight": (4 * width, width)}.items():
        extra[f"vision_backbone.fused_featurizer.attn_pool.{key}"] = torch.randn(shape, generator=gen)
    return extra


def write_openvla_checkpoint(policy: VLAPolicy, directory: Path, num_shards: int = 3,
                             norm_stats: dict | None = NORM_STATS) -> Path:
    """An openvla-layout directory (real key names, unused keys included, sharded) from ``policy``."""
    directory.mkdir(parents=True, exist_ok=True)
    model = policy.peft.base_model.model
    from vla_rl_ros.core.policy.lora import merged_state_dict
    state = merged_state_dict(policy.peft)
    assert not any("lora" in k or "base_layer" in k for k in state)
    state.update(unused_openvla_tensors(model))
    write_shards(state, directory, num_shards)
    arch = policy.arch
    config = {"architectures": ["OpenVLAForActionPrediction"], "model_type": "openvla",
              "use_fused_vision_backbone": True, "n_action_bins": 256, "image_sizes": [arch.image_size] * 2,
              "pad_to_multiple_of": 64,
              "text_config": {"model_type": "llama", "vocab_size": arch.llm["vocab_size"]},
              "timm_model_ids": ["tiny_dinov2_reg4", "tiny_siglip"], ARCH_KEY: arch.to_dict()}
    if norm_stats is not None:
        config["norm_stats"] = norm_stats
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "tokenizer.json").write_text(policy.tokenizer.to_str())
    return directory


def lm_logits(policy: VLAPolicy, frames: np.ndarray, instructions: list[str]) -> torch.Tensor:
    """Full-vocabulary logits of every position of the multimodal prompt (the model's raw output)."""
    pixels, ids, mask = policy._inputs(frames, instructions)
    model = policy.model
    with torch.no_grad():
        embeds, full_mask = model.multimodal_embeddings(pixels, ids, mask)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        return model.language_model(inputs_embeds=embeds, attention_mask=full_mask,
                                    position_ids=positions).logits.float()
