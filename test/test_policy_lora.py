"""LoRA targets, the adapters-disabled reference policy, and versioned adapter directories."""
from __future__ import annotations

import json

import pytest
import torch
from policy_helpers import INSTRUCTIONS, images, randomize_adapters, tiny_policy

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.policy import PolicyConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_lora_targets_are_explicit_and_exclude_lm_head():
    policy = tiny_policy()
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in policy.peft.named_parameters() if ".lora_A" in n}
    assert wrapped and all(".layers." in n for n in wrapped)
    assert not any("lm_head" in n or "vision_backbone" in n or "projector" in n for n in wrapped)
    assert len(wrapped) == 7 * policy.arch.llm["num_hidden_layers"]
    with_projector = tiny_policy(lora_target_modules=["q_proj", "projector"])
    names = {n for n, _ in with_projector.peft.named_parameters() if "lora_A" in n}
    assert any("projector.fc3" in n for n in names) and not any("lm_head" in n for n in names)
    with pytest.raises(ConfigError, match="lora_target_modules"):
        PolicyConfig(lora_target_modules=["lm_head"])


def test_reference_policy_is_the_base_model_with_adapters_disabled():
    policy = tiny_policy()
    frames, texts = images(3), [INSTRUCTIONS[0], "open the drawer", INSTRUCTIONS[2]]
    tokens = policy.decode(frames, texts).tokens
    base = policy.evaluate(frames, texts, tokens).log_probs.detach()
    assert torch.equal(policy.reference_log_probs(frames, texts, tokens), base)  # fresh LoRA is a no-op
    randomize_adapters(policy, std=0.2)
    tuned = policy.evaluate(frames, texts, tokens).log_probs.detach()
    ref = policy.reference_log_probs(frames, texts, tokens)
    assert torch.equal(ref, base) and not torch.allclose(tuned, base, atol=1e-3)
    assert not ref.requires_grad
    # Disabling is temporary: the adapters are active again afterwards.
    assert torch.equal(policy.evaluate(frames, texts, tokens).log_probs.detach(), tuned)


def test_adapters_round_trip_with_version_and_sha256(tmp_path):
    trained = tiny_policy()
    randomize_adapters(trained, std=0.2)
    frames, texts = images(2), INSTRUCTIONS[:2]
    digest = trained.save_adapters(str(tmp_path / "v0007"), version=7)
    meta = json.loads((tmp_path / "v0007" / "adapter.json").read_text())
    assert meta["version"] == 7 and meta["sha256"] == digest and len(digest) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v0007"]  # no temporary directory left
    fresh = tiny_policy()
    assert fresh.load_adapters(str(tmp_path / "v0007")) == 7
    a = trained.decode(frames, texts, greedy=True)
    b = fresh.decode(frames, texts, greedy=True)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.log_probs, b.log_probs)
    assert torch.equal(a.values, b.values) and not torch.equal(a.values, torch.zeros(2))
    # Overwriting a version replaces it atomically.
    trained.save_adapters(str(tmp_path / "v0007"), version=8)
    assert fresh.load_adapters(str(tmp_path / "v0007")) == 8


def test_corrupted_or_mismatched_adapters_are_refused(tmp_path):
    policy = tiny_policy()
    policy.save_adapters(str(tmp_path / "v1"), version=1)
    weights = tmp_path / "v1" / "adapter.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    before = [p.detach().clone() for p in policy.policy_parameters()]
    with pytest.raises(ValueError, match="sha256"):
        policy.load_adapters(str(tmp_path / "v1"))
    assert all(torch.equal(a, b) for a, b in zip(before, policy.policy_parameters()))
    policy.save_adapters(str(tmp_path / "v2"), version=2)
    with pytest.raises(ValueError, match="saved for LoRA"):
        tiny_policy(lora_rank=4).load_adapters(str(tmp_path / "v2"))
    with pytest.raises(FileNotFoundError, match="lacks adapter.json"):
        policy.load_adapters(str(tmp_path))
    with pytest.raises(ValueError, match="version must be >= 0"):
        policy.save_adapters(str(tmp_path / "v3"), version=-1)


def test_parameter_groups():
    policy = tiny_policy()
    lora_ids = {id(p) for p in policy.policy_parameters()}
    value_ids = {id(p) for p in policy.value_parameters()}
    assert lora_ids and value_ids and not lora_ids & value_ids
    assert all(p.requires_grad for p in policy.policy_parameters() + policy.value_parameters())
    assert policy.num_action_tokens == 7 and policy.cfg.size == "tiny"
