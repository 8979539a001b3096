"""The module tree against independent, functional re-statements of OpenVLA's forward pass.

The ViT is recomputed from the raw state dict following timm's semantics (patch conv, position
embeddings on patches only, then class + register tokens, pre-norm blocks with LayerScale,
features of block depth-2 without prefix tokens or final norm); the multimodal sequence is
rebuilt row by row as ``[pads, BOS, patches, text]``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from policy_helpers import INSTRUCTIONS, images, randomize_base, tiny_policy

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.policy.architecture import preset
from vla_rl_ros.core.policy.model import OpenVLAModel


def reference_vit(state: dict, prefix: str, spec, pixels: torch.Tensor) -> torch.Tensor:
    w = lambda name: state[f"{prefix}.{name}"]  # noqa: E731
    x = F.conv2d(pixels, w("patch_embed.proj.weight"), w("patch_embed.proj.bias"), stride=spec.patch)
    x = x.flatten(2).transpose(1, 2) + w("pos_embed")
    tokens = []
    if spec.class_token:
        tokens.append(w("cls_token").expand(x.shape[0], -1, -1))
    if spec.registers:
        tokens.append(w("reg_token").expand(x.shape[0], -1, -1))
    x = torch.cat(tokens + [x], dim=1)
    heads, width = spec.heads, spec.width
    for i in range(spec.depth - 1):  # blocks 0 .. depth-2: the output of block depth-2 is the feature
        b = f"blocks.{i}."
        h = F.layer_norm(x, (width,), w(b + "norm1.weight"), w(b + "norm1.bias"), eps=1e-6)
        qkv = F.linear(h, w(b + "attn.qkv.weight"), w(b + "attn.qkv.bias"))
        q, k, v = qkv.reshape(x.shape[0], x.shape[1], 3, heads, width // heads).unbind(2)
        scores = q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) / (width // heads) ** 0.5
        att = torch.softmax(scores, -1)
        out = (att @ v.transpose(1, 2)).transpose(1, 2).reshape(x.shape)
        out = F.linear(out, w(b + "attn.proj.weight"), w(b + "attn.proj.bias"))
        x = x + (out * w(b + "ls1.scale_factor") if spec.layer_scale else out)
        h = F.layer_norm(x, (width,), w(b + "norm2.weight"), w(b + "norm2.bias"), eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, w(b + "mlp.fc1.weight"), w(b + "mlp.fc1.bias"))),
                     w(b + "mlp.fc2.weight"), w(b + "mlp.fc2.bias"))
        x = x + (h * w(b + "ls2.scale_factor") if spec.layer_scale else h)
    return x[:, int(spec.class_token) + spec.registers:]


def test_vision_features_match_timm_semantics():
    policy = tiny_policy()
    randomize_base(policy, std=0.05)
    model = policy.model
    state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items()}
    pixels = policy.processor.pixels(images(2, seed=3))
    arch = policy.arch
    expected = torch.cat([reference_vit(state, "vision_backbone.featurizer", arch.featurizer, pixels[:, :3]),
                          reference_vit(state, "vision_backbone.fused_featurizer", arch.fused_featurizer,
                                        pixels[:, 3:])], dim=2)
    with torch.no_grad():
        got = model.vision_backbone(pixels)
    assert got.shape == (2, arch.featurizer.num_patches, arch.vision_dim)
    assert torch.allclose(got, expected, atol=1e-5)
    with torch.no_grad():
        projected = model.projector(got)

    def fc(x, name):
        return F.linear(x, state[f"projector.{name}.weight"], state[f"projector.{name}.bias"])
    manual = fc(F.gelu(fc(F.gelu(fc(got, "fc1")), "fc2")), "fc3")
    assert torch.allclose(projected, manual, atol=1e-6)


def test_multimodal_sequence_is_bos_patches_text_with_left_padding():
    policy = tiny_policy()
    model = policy.model
    texts = ["open the drawer", INSTRUCTIONS[0]]
    pixels = policy.processor.pixels(images(2))
    ids, mask = policy.processor.text(texts)
    with torch.no_grad():
        embeds, full_mask = model.multimodal_embeddings(pixels, ids, mask)
        patches = model.embed_images(pixels)
        table = model.language_model.get_input_embeddings()
        for row, text in enumerate(texts):
            prompt = torch.tensor(policy.processor.prompt_ids(text))
            real = torch.cat([table(prompt[:1]), patches[row], table(prompt[1:])])
            pads = embeds.shape[1] - real.shape[0]
            assert torch.equal(embeds[row, pads:], real)
            assert full_mask[row, :pads].sum() == 0 and full_mask[row, pads:].all()


def test_prompt_suffix_like_openvla_29871():
    policy = tiny_policy()
    policy.arch.prompt_suffix_ids = (5,)
    try:
        ids = policy.processor.prompt_ids("open the drawer")
        assert ids[-1] == 5 and ids[0] == policy.arch.bos_token_id
    finally:
        policy.arch.prompt_suffix_ids = ()


def test_7b_preset_shape_builds_on_meta_only():
    arch = preset("openvla-7b", 224, 32000)
    with torch.device("meta"):
        model = OpenVLAModel(arch)
    total = sum(p.numel() for p in model.parameters())
    assert 7.45e9 < total < 7.55e9 and model.num_patches == 256
    assert arch.action_vocab_start == 31744 and arch.llm["vocab_size"] == 32064
    with pytest.raises(ConfigError, match="policy.image_size=128"):
        preset("openvla-7b", 128, 32000)
