"""Batched decoding vs teacher-forced log-probs (the PPO contract), sampling modes and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from policy_helpers import PADDED_TEXTS, images, randomize_base, tiny_policy, varied_policy


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def policy():
    """Tiny policy with non-trivial base, LoRA and value weights, sampling over the action ids."""
    return varied_policy()


TEXTS = PADDED_TEXTS  # prompts of different lengths, so batches are left-padded


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_rollout_log_probs_equal_teacher_forced_ones(policy, batch):
    frames, texts = images(batch, seed=batch), TEXTS[:batch]
    out = policy.decode(frames, texts, generator=torch.Generator().manual_seed(batch))
    assert out.tokens.shape == (batch, 7) and out.tokens.dtype == torch.long
    assert out.actions.shape == (batch, 1, 7) and out.actions.dtype == np.float32  # one chunk of K = 1
    assert out.log_probs.shape == (batch, 7) and out.values.shape == (batch,)
    ev = policy.evaluate(frames, texts, out.tokens)
    assert ev.log_probs.requires_grad
    assert torch.allclose(ev.log_probs.detach(), out.log_probs, atol=1e-5, rtol=0)
    assert torch.allclose(ev.values.detach(), out.values, atol=1e-5, rtol=0)
    assert (ev.entropy > 0).all() and (ev.entropy <= np.log(256) + 1e-4).all()


def test_padding_does_not_change_a_row(policy):
    """A row's log-probs and values are the same alone and inside a padded batch."""
    frames = images(5, seed=11)
    tokens = torch.from_numpy(policy.action_tokenizer.encode(np.random.default_rng(0).uniform(-1, 1, (5, 7))))
    together = policy.evaluate(frames, TEXTS, tokens)
    for row in range(5):
        alone = policy.evaluate(frames[row:row + 1], TEXTS[row:row + 1], tokens[row:row + 1])
        assert torch.allclose(alone.log_probs, together.log_probs[row:row + 1], atol=1e-5, rtol=0)
        assert torch.allclose(alone.values, together.values[row:row + 1], atol=1e-5, rtol=0)
    greedy_all = policy.decode(frames, TEXTS, greedy=True)
    for row in (0, 1):
        greedy_one = policy.decode(frames[row:row + 1], TEXTS[row:row + 1], greedy=True)
        assert torch.equal(greedy_one.tokens[0], greedy_all.tokens[row])


def test_restricted_sampling_stays_in_the_action_range(policy):
    out = policy.decode(images(4), TEXTS[:4], generator=torch.Generator().manual_seed(0))
    start, end = policy.arch.action_vocab_start, policy.arch.action_vocab_end
    assert end == policy.tokenizer.get_vocab_size()  # action ids are the LAST 256 ids of the vocabulary
    assert ((out.tokens >= start) & (out.tokens < end)).all()
    assert (out.log_probs <= 0).all()
    bad = out.tokens.clone()
    bad[0, 0] = 5
    with pytest.raises(ValueError, match="outside the action range"):
        policy.evaluate(images(4), TEXTS[:4], bad)


def test_unrestricted_sampling_scores_over_the_whole_vocabulary():
    free = tiny_policy(restrict_to_action_tokens=False, temperature=1.0)
    randomize_base(free, std=0.05)
    frames = images(3, seed=2)
    out = free.decode(frames, TEXTS[:3], generator=torch.Generator().manual_seed(1))
    ev = free.evaluate(frames, TEXTS[:3], out.tokens)
    assert torch.allclose(ev.log_probs.detach(), out.log_probs, atol=1e-5, rtol=0)
    assert (ev.entropy > np.log(256)).all()  # spread over > 256 candidates


def test_greedy_is_deterministic_and_sampling_follows_the_generator(policy):
    frames = images(3, seed=4)
    assert torch.equal(policy.decode(frames, TEXTS[:3], greedy=True).tokens,
                       policy.decode(frames, TEXTS[:3], greedy=True).tokens)
    a = policy.decode(frames, TEXTS[:3], generator=torch.Generator().manual_seed(9))
    b = policy.decode(frames, TEXTS[:3], generator=torch.Generator().manual_seed(9))
    c = policy.decode(frames, TEXTS[:3], generator=torch.Generator().manual_seed(10))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert np.array_equal(a.actions[:, 0], policy.action_tokenizer.decode(a.tokens))


def test_temperature_is_applied_at_rollout_and_update():
    hot, cold = tiny_policy(temperature=2.0), tiny_policy(temperature=0.5)
    frames = images(2, seed=3)
    tokens = hot.decode(frames, TEXTS[:2], greedy=True).tokens
    assert torch.equal(tokens, cold.decode(frames, TEXTS[:2], greedy=True).tokens)
    hot_entropy = hot.evaluate(frames, TEXTS[:2], tokens).entropy
    assert (hot_entropy > cold.evaluate(frames, TEXTS[:2], tokens).entropy).all()


def test_evaluate_gives_gradients_to_lora_and_value_head(policy):
    frames = images(2, seed=8)
    tokens = policy.decode(frames, TEXTS[:2]).tokens
    ev = policy.evaluate(frames, TEXTS[:2], tokens)
    (ev.log_probs.sum() + ev.values.sum()).backward()
    assert all(p.grad is not None for p in policy.policy_parameters() + policy.value_parameters())
    base = [p for n, p in policy.peft.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad for p in base)
    for param in policy.policy_parameters() + policy.value_parameters():
        param.grad = None


def test_sft_learns_a_fixed_action_on_cpu():
    student = tiny_policy()
    frames = images(4, seed=1)
    actions = np.tile([[0.5, -0.5, 0.2, 0, 0, 0.1, 1.0]], (4, 1))
    target = torch.from_numpy(student.action_tokenizer.encode(actions))
    params = student.sft_parameters(full=True)
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    first = None
    for _ in range(40):
        loss = student.sft_loss(frames, TEXTS[:4], target)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.25 * first
    assert torch.equal(student.decode(frames, TEXTS[:4], greedy=True).tokens, target)
    student.freeze_base()
    assert all(p.requires_grad == ("lora_" in n) for n, p in student.peft.named_parameters())


def test_bad_observations_are_named(policy):
    with pytest.raises(ValueError, match="dtype float32"):
        policy.decode(images(1).astype(np.float32), ["open the drawer"])
    with pytest.raises(ValueError, match=r"shape \[B, H, W, 3\]"):
        policy.decode(np.zeros((1, 32, 32, 4), np.uint8), ["open the drawer"])
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        policy.decode(images(2), ["open the drawer"])
    with pytest.raises(ValueError, match="empty"):
        policy.decode(images(1), ["  "])
    with pytest.raises(ValueError, match="single string"):
        policy.decode(images(1), "open the drawer")
    with pytest.raises(ValueError, match="too small"):
        policy.decode(np.zeros((1, 8, 8, 3), np.uint8), ["open the drawer"])
    with pytest.raises(ValueError, match=r"tokens must have shape \[1, 7\]"):
        policy.evaluate(images(1), ["open the drawer"], torch.zeros(1, 6, dtype=torch.long))


def test_other_image_sizes_are_resized_unless_forbidden():
    strict = tiny_policy(resize_images=False)
    with pytest.raises(ValueError, match="48x48 but the policy expects 32x32"):
        strict.decode(images(1, size=48), ["open the drawer"])
    relaxed = tiny_policy()
    assert relaxed.decode(images(2, size=48), TEXTS[:2]).tokens.shape == (2, 7)
