"""Exact loading of openvla-layout checkpoints (sharded safetensors + config.json) and our saved dirs."""
from __future__ import annotations

import json

import pytest
import torch
from policy_helpers import (INSTRUCTIONS, NORM_STATS, images, lm_logits, randomize_adapters, randomize_base,
                            tiny_cfg, tiny_policy, write_openvla_checkpoint)
from safetensors.torch import load_file, save_file

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.policy import VLAPolicy
from vla_rl_ros.core.policy.architecture import from_openvla_config
from vla_rl_ros.core.policy.model_dir import CheckpointError
from vla_rl_ros.core.policy.model import OpenVLAModel


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def source():
    """A tiny policy with perturbed base weights and a trained-looking value head."""
    policy = tiny_policy()
    randomize_base(policy)
    with torch.no_grad():
        policy.value_head.weight.normal_(0, 0.1)
    return policy


@pytest.fixture(scope="module")
def ckpt(source, tmp_path_factory):
    return write_openvla_checkpoint(source, tmp_path_factory.mktemp("openvla"), num_shards=3)


def unnorm_cfg(**kw):
    return tiny_cfg(unnorm_key="libero_spatial_no_noops", **kw)


def test_openvla_layout_round_trip_is_exact(source, ckpt):
    assert len(list(ckpt.glob("model-*-of-00003.safetensors"))) == 3
    loaded = VLAPolicy.load(str(ckpt), unnorm_cfg())
    frames = images(3, seed=1)
    texts = [INSTRUCTIONS[0], "open the drawer", "put the cream cheese in the bowl"]
    assert torch.equal(lm_logits(loaded, frames, texts), lm_logits(source, frames, texts))
    greedy_src = source.decode(frames, texts, greedy=True)
    greedy_new = loaded.decode(frames, texts, greedy=True)
    assert torch.equal(greedy_src.tokens, greedy_new.tokens)
    for name, tensor in list(loaded.model.named_parameters()) + list(loaded.model.named_buffers()):
        assert not tensor.is_meta, name
        assert tensor.device.type == "cpu"


def test_bf16_load_matches_bf16_source(source, ckpt):
    loaded = VLAPolicy.load(str(ckpt), unnorm_cfg(dtype="bfloat16"))
    assert loaded.model.language_model.lm_head.weight.dtype == torch.bfloat16
    assert loaded.model.vision_backbone.featurizer.pos_embed.dtype == torch.bfloat16
    reference = tiny_policy(dtype="bfloat16")  # same architecture in bf16, then the source's weights
    with torch.no_grad():
        for param, value in zip(reference.peft.parameters(), source.peft.parameters()):
            param.copy_(value.to(param.dtype))
    frames, texts = images(2, seed=4), INSTRUCTIONS[:2]
    assert torch.equal(lm_logits(loaded, frames, texts), lm_logits(reference, frames, texts))
    out = loaded.decode(images(2), INSTRUCTIONS[:2], greedy=True)
    assert out.tokens.shape == (2, 7) and torch.isfinite(out.log_probs).all()
    ev = loaded.evaluate(images(2), INSTRUCTIONS[:2], out.tokens)
    assert torch.allclose(ev.log_probs, out.log_probs, atol=0.05)


def test_unused_checkpoint_keys_are_skipped_not_loaded(ckpt):
    keys = set()
    for shard in ckpt.glob("model-*.safetensors"):
        keys |= set(load_file(str(shard)))
    loaded = VLAPolicy.load(str(ckpt), unnorm_cfg())
    model_keys = set(loaded.model.state_dict())
    skipped = keys - {k.replace(".base_layer.", ".") for k in model_keys}
    assert skipped and all(("blocks.2." in k or ".norm." in k or "attn_pool" in k) for k in skipped)
    assert any("attn_pool" in k for k in skipped)


def test_our_saved_directory_round_trip(source, tmp_path):
    source.save(str(tmp_path / "policy"))
    assert sorted(p.name for p in (tmp_path / "policy").iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "value_head.safetensors"]
    loaded = VLAPolicy.load(str(tmp_path / "policy"), tiny_cfg())
    frames = images(2, seed=5)
    texts = INSTRUCTIONS[:2]
    assert torch.equal(lm_logits(loaded, frames, texts), lm_logits(source, frames, texts))
    a = source.decode(frames, INSTRUCTIONS[:2], greedy=True)
    b = loaded.decode(frames, INSTRUCTIONS[:2], greedy=True)
    assert torch.equal(a.tokens, b.tokens) and torch.allclose(a.values, b.values, atol=1e-6)
    assert not list(tmp_path.glob(".policy.tmp-*")), "temporary directory left behind"


def test_save_folds_trained_adapters_into_the_weights(tmp_path):
    policy = tiny_policy()
    randomize_adapters(policy, std=0.1)
    policy.save(str(tmp_path / "merged"))
    loaded = VLAPolicy.load(str(tmp_path / "merged"), tiny_cfg())
    frames = images(2, seed=6)
    reference = lm_logits(policy, frames, INSTRUCTIONS[:2])
    assert torch.allclose(lm_logits(loaded, frames, INSTRUCTIONS[:2]), reference, atol=1e-5)
    assert not torch.allclose(lm_logits(tiny_policy(), frames, INSTRUCTIONS[:2]), reference, atol=1e-3)


def copy_ckpt(ckpt, tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    for path in ckpt.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_missing_shard_is_named(ckpt, tmp_path):
    broken = copy_ckpt(ckpt, tmp_path)
    (broken / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing: model-00002-of-00003"):
        VLAPolicy.load(str(broken), unnorm_cfg())


@pytest.mark.parametrize("damage", ["truncated", "git-lfs pointer"])
def test_unreadable_shard_is_a_checkpoint_error_naming_the_file(ckpt, tmp_path, damage):
    broken = copy_ckpt(ckpt, tmp_path)
    shard = broken / "model-00002-of-00003.safetensors"
    if damage == "truncated":  # an interrupted copy or download
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:  # a clone without git-lfs leaves a small text file in place of the weights
        shard.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(CheckpointError, match="00003.safetensors is not a readable safetensors"):
        VLAPolicy.load(str(broken), unnorm_cfg())


def test_unreadable_value_head_is_a_checkpoint_error_naming_the_file(source, tmp_path):
    source.save(str(tmp_path / "policy"))
    head = tmp_path / "policy" / "value_head.safetensors"
    head.write_bytes(head.read_bytes()[: head.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="value_head.safetensors is not a readable safetensors"):
        VLAPolicy.load(str(tmp_path / "policy"), unnorm_cfg())


def test_extra_shard_is_named(ckpt, tmp_path):
    broken = copy_ckpt(ckpt, tmp_path)
    first = (ckpt / "model-00001-of-00003.safetensors").read_bytes()
    (broken / "model-00004-of-00003.safetensors").write_bytes(first)
    with pytest.raises(CheckpointError, match="extra safetensors.*model-00004"):
        VLAPolicy.load(str(broken), unnorm_cfg())


def test_shape_mismatch_is_named(ckpt, tmp_path):
    broken = copy_ckpt(ckpt, tmp_path)
    key = "language_model.model.layers.1.self_attn.q_proj.weight"
    shard = broken / json.loads((broken / "model.safetensors.index.json").read_text())["weight_map"][key]
    tensors = load_file(str(shard))
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match=f"{key} has shape"):
        VLAPolicy.load(str(broken), unnorm_cfg())


def test_missing_weight_never_falls_back_to_random(ckpt, tmp_path):
    broken = copy_ckpt(ckpt, tmp_path)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    shard_name = index["weight_map"]["projector.fc1.weight"]
    tensors = load_file(str(broken / shard_name))
    del tensors["projector.fc1.weight"]
    save_file(tensors, str(broken / shard_name))
    del index["weight_map"]["projector.fc1.weight"]
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing from the checkpoint.*projector.fc1.weight"):
        VLAPolicy.load(str(broken), unnorm_cfg())


def test_unexpected_key_is_named(ckpt, tmp_path):
    broken = copy_ckpt(ckpt, tmp_path)
    shard = broken / "model-00003-of-00003.safetensors"
    tensors = load_file(str(shard))
    tensors["projector.fc4.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(shard))
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    index["weight_map"]["projector.fc4.weight"] = shard.name
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="unexpected key projector.fc4.weight"):
        VLAPolicy.load(str(broken), unnorm_cfg())


def test_norm_stats_problems_are_named(source, tmp_path):
    no_stats = write_openvla_checkpoint(source, tmp_path / "nostats", num_shards=2, norm_stats=None)
    with pytest.raises(ConfigError, match="no norm_stats"):
        VLAPolicy.load(str(no_stats), tiny_cfg())
    two_keys = write_openvla_checkpoint(source, tmp_path / "twokeys", num_shards=1)
    with pytest.raises(ConfigError, match="unnorm_key='nope' is not in norm_stats"):
        VLAPolicy.load(str(two_keys), tiny_cfg(unnorm_key="nope"))
    with pytest.raises(ConfigError, match="norm_stats has 2 keys"):
        VLAPolicy.load(str(two_keys), tiny_cfg())
    loaded = VLAPolicy.load(str(two_keys), tiny_cfg(unnorm_key="bridge_orig"))
    assert loaded.action_tokenizer.q99[0] == pytest.approx(0.03)


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        VLAPolicy.load(str(tmp_path / "nowhere"), tiny_cfg())
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json not found"):
        VLAPolicy.load(str(tmp_path / "empty"), tiny_cfg())


OPENVLA_7B_CONFIG = {
    "arch_specifier": "no-align+fused-gelu-mlp", "architectures": ["OpenVLAForActionPrediction"],
    "hf_llm_id": "meta-llama/Llama-2-7b-hf", "image_resize_strategy": "resize-naive",
    "image_sizes": [224, 224],
    "llm_backbone_id": "llama2-7b-pure", "model_type": "openvla", "n_action_bins": 256,
    "norm_stats": NORM_STATS, "pad_to_multiple_of": 64, "pad_token_id": 32000,
    "text_config": {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16",
                    "vocab_size": 32064},
    "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
    "timm_override_act_layers": [None, None], "use_fused_vision_backbone": True,
    "vision_backbone_id": "dinosiglip-vit-so-224px"}


def test_openvla_7b_config_gives_the_checkpoint_shapes():
    arch = from_openvla_config(OPENVLA_7B_CONFIG)
    assert arch.action_vocab_end == 32000 and arch.action_vocab_start == 31744
    assert arch.prompt_suffix_ids == (29871,) and arch.llm["rms_norm_eps"] == 1e-6
    with torch.device("meta"):
        model = OpenVLAModel(arch)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["vision_backbone.featurizer.pos_embed"] == (1, 256, 1024)
    assert shapes["vision_backbone.featurizer.reg_token"] == (1, 4, 1024)
    assert shapes["vision_backbone.featurizer.blocks.22.ls2.scale_factor"] == (1024,)
    assert shapes["vision_backbone.fused_featurizer.pos_embed"] == (1, 256, 1152)
    assert shapes["vision_backbone.fused_featurizer.blocks.25.mlp.fc1.weight"] == (4304, 1152)
    assert shapes["projector.fc1.weight"] == (8704, 2176)
    assert shapes["projector.fc3.weight"] == (4096, 4096)
    assert shapes["language_model.model.embed_tokens.weight"] == (32064, 4096)
    assert shapes["language_model.lm_head.weight"] == (32064, 4096)
    assert "vision_backbone.featurizer.blocks.23.attn.qkv.weight" not in shapes  # unused last block
    used = sum(v.numel() for v in model.state_dict().values())
    assert 7.45e9 < used < 7.55e9  # about 7.50 B used of the 7.54 B stored


def test_unsupported_openvla_configs_are_refused():
    with pytest.raises(ConfigError, match="use_fused_vision_backbone"):
        from_openvla_config({**OPENVLA_7B_CONFIG, "use_fused_vision_backbone": False})
    with pytest.raises(ConfigError, match="timm_model_ids"):
        from_openvla_config({**OPENVLA_7B_CONFIG, "timm_model_ids": ["vit_base_patch16_224", "x"]})
