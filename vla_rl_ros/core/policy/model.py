"""The OpenVLA module tree; parameter names equal the ``openvla/openvla-7b`` checkpoint keys.

``vision_backbone.featurizer`` (DINOv2-style ViT, registers + LayerScale), ``vision_backbone.
fused_featurizer`` (SigLIP-style ViT), ``projector.fc1/fc2/fc3`` and ``language_model``
(``transformers.LlamaForCausalLM``). The ViTs keep only the blocks OpenVLA actually uses
(features of the second-to-last block, no final norm, no attention-pool head), so the unused
checkpoint keys have no parameter to land in and the loader skips them by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from vla_rl_ros.core.policy.architecture import ViTSpec, VLAArchitecture


class LayerScale(nn.Module):
    """Per-channel residual scale; OpenVLA renames timm's ``gamma`` to ``scale_factor``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel by the learned factor."""
        return x * self.scale_factor


class Attention(nn.Module):
    """timm ``Attention``: fused qkv with bias, softmax(QK^T / sqrt(d)) V, output projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over all tokens."""
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    """timm ``Mlp`` with exact GELU."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two-layer GELU MLP."""
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6), optional LayerScale."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.width, eps=1e-6)
        self.attn = Attention(spec.width, spec.heads)
        self.ls1 = LayerScale(spec.width) if spec.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(spec.width, eps=1e-6)
        self.mlp = Mlp(spec.width, spec.mlp_dim)
        self.ls2 = LayerScale(spec.width) if spec.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-norm attention then MLP, each with a LayerScale residual."""
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided convolution (timm key ``patch_embed.proj``)."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, spec.width, kernel_size=spec.patch, stride=spec.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patchify: [B, 3, H, W] -> [B, patches, width]."""
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """timm-layout ViT returning the patch tokens of block ``depth - 2`` (prefix tokens dropped)."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.spec = spec
        self.patch_embed = PatchEmbed(spec)
        if spec.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.width))
        if spec.registers:
            self.reg_token = nn.Parameter(torch.zeros(1, spec.registers, spec.width))
        # Position embeddings cover the patches only (timm no_embed_class; SigLIP has no prefix).
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_patches, spec.width))
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth - 1))
        self.num_prefix_tokens = int(spec.class_token) + spec.registers

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens of the second-to-last block, prefix tokens dropped, no final norm."""
        x = self.patch_embed(pixels) + self.pos_embed
        prefix = []
        if self.spec.class_token:
            prefix.append(self.cls_token.expand(x.shape[0], -1, -1))
        if self.spec.registers:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        if prefix:
            x = torch.cat(prefix + [x], dim=1)
        for block in self.blocks:
            x = block(x)
        return x[:, self.num_prefix_tokens:]


class FusedVisionBackbone(nn.Module):
    """DINO and SigLIP patch features concatenated on channels (pixel_values has 6 channels)."""

    def __init__(self, arch: VLAArchitecture) -> None:
        super().__init__()
        self.featurizer = VisionTransformer(arch.featurizer)
        self.fused_featurizer = VisionTransformer(arch.fused_featurizer)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Concatenated DINO and SigLIP patch features: [B, patches, 2176] at 7B size."""
        dino, siglip = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer(dino), self.fused_featurizer(siglip)], dim=2)


class FusedMLPProjector(nn.Module):
    """OpenVLA ``fused-gelu-mlp``: vision_dim -> 4*vision_dim -> llm -> llm, GELU between."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.act_fn1 = nn.GELU()
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.act_fn2 = nn.GELU()
        self.fc3 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project vision features into the language model's embedding space."""
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(x)))))


def llama_config(arch: VLAArchitecture, attn_implementation: str = "sdpa") -> LlamaConfig:
    """``LlamaConfig`` of the language model (keeps rms_norm_eps from the architecture)."""
    config = LlamaConfig(**arch.llm)
    config._attn_implementation = attn_implementation
    return config


class OpenVLAModel(nn.Module):
    """Vision backbone + projector + Llama; builds the multimodal input ``[BOS, patches, text]``."""

    def __init__(self, arch: VLAArchitecture) -> None:
        super().__init__()
        self.arch = arch
        self.vision_backbone = FusedVisionBackbone(arch)
        self.projector = FusedMLPProjector(arch.vision_dim, arch.hidden_size)
        self.language_model = LlamaForCausalLM(llama_config(arch))

    @property
    def num_patches(self) -> int:
        """Image tokens inserted after BOS."""
        return self.arch.featurizer.num_patches

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected patch embeddings [B, P, hidden]."""
        dtype = self.projector.fc1.weight.dtype
        return self.projector(self.vision_backbone(pixel_values.to(dtype)))

    def multimodal_embeddings(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                              attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and mask of ``[pads..., BOS, patches, text]`` for left-padded ``input_ids``.

        ``input_ids`` [B, T] is left-padded and starts (after padding) with BOS. The patches go
        right after each row's BOS, so padding stays on the left and position ids stay contiguous.
        """
        patches = self.embed_images(pixel_values)
        text = self.language_model.get_input_embeddings()(input_ids)
        batch, length = input_ids.shape
        num_patches = patches.shape[1]
        bos_index = (length - attention_mask.sum(dim=1)).unsqueeze(1)  # first real token per row
        out_pos = torch.arange(length + num_patches, device=input_ids.device).unsqueeze(0)
        # Source index into cat([text, patches]): text up to BOS, then patches, then the rest of text.
        source = torch.where(out_pos <= bos_index, out_pos,
                             torch.where(out_pos <= bos_index + num_patches,
                                         length + out_pos - bos_index - 1, out_pos - num_patches))
        both = torch.cat([text, patches.to(text.dtype)], dim=1)
        embeds = torch.gather(both, 1, source.unsqueeze(-1).expand(-1, -1, both.shape[-1]))
        mask = torch.cat([attention_mask, attention_mask.new_ones(batch, num_patches)], dim=1)
        return embeds, torch.gather(mask, 1, source.expand(batch, -1))


def rebuild_rotary(model: OpenVLAModel, device: str | torch.device) -> None:
    """Recompute the rotary inverse frequencies (a non-persistent buffer, never in checkpoints)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    lm = model.language_model.model
    lm.rotary_emb = LlamaRotaryEmbedding(config=lm.config).to(device)


@torch.no_grad()
def init_weights(model: OpenVLAModel, std: float = 0.02) -> None:
    """Fresh weights for a new model (ViT/GPT-style): normal(0, std) matrices, unit norms and scales."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, LayerScale):
            nn.init.constant_(module.scale_factor, 0.1)
        elif isinstance(module, VisionTransformer):
            for name in ("cls_token", "reg_token", "pos_embed"):
                if hasattr(module, name):
                    nn.init.normal_(getattr(module, name), std=std)
        elif type(module).__name__.endswith("RMSNorm"):
            nn.init.ones_(module.weight)


def new_model(arch: VLAArchitecture, dtype: torch.dtype, device: str | torch.device,
              seed: int) -> OpenVLAModel:
    """A randomly initialised model built directly on ``device`` (a 7B shape never touches the CPU)."""
    with torch.device("meta"):
        model = OpenVLAModel(arch)
    # Allocate directly in the target dtype: a 7B shape in bf16 peaks at 15 GB, not 30 + 15 GB.
    model.to_empty(device=device).to(dtype)
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        init_weights(model)
    rebuild_rotary(model, device)
    return model.eval()
