"""PPO maths against hand-computed values: GAE, clipped losses, KL estimators, diagnostics."""
import math

import pytest
import torch

from vla_rl_ros.core.rl.ppo_math import (approx_kl, clipped_policy_loss, clipped_value_loss,
                                         explained_variance, generalized_advantage_estimate,
                                         kl_to_reference, normalize_advantages, ppo_loss)


def col(*xs):
    return torch.tensor(xs, dtype=torch.float32).unsqueeze(-1)


def test_gae_truncation_bootstraps_termination_does_not():
    values, next_values, rewards = col(1, 2, 3), col(2, 3, 4), col(0, 0, 1)
    done = col(0, 0, 1)
    # Truncated at the last step: delta_2 = 1 + 0.5 * 4 - 3 = 0.
    adv, ret = generalized_advantage_estimate(0.5, 0.5, values, next_values, rewards, done, col(0, 0, 0))
    assert torch.allclose(adv.squeeze(), torch.tensor([-0.125, -0.5, 0.0]))
    assert torch.allclose(ret, adv + values)
    # Terminated: delta_2 = 1 - 3 = -2, A_1 = -0.5 + 0.25 * -2, A_0 = 0.25 * A_1.
    adv, _ = generalized_advantage_estimate(0.5, 0.5, values, next_values, rewards, done, col(0, 0, 1))
    assert torch.allclose(adv.squeeze(), torch.tensor([-0.25, -1.0, -2.0]))


def test_gae_done_stops_accumulation_across_episodes():
    values, next_values = col(0, 0, 0, 0), col(0, 0, 0, 0)
    rewards = col(0, 1, 5, 7)
    done, term = col(0, 1, 0, 1), col(0, 1, 0, 1)
    adv, _ = generalized_advantage_estimate(1.0, 1.0, values, next_values, rewards, done, term)
    assert adv.squeeze().tolist() == [1.0, 1.0, 12.0, 7.0]


def test_gae_columns_are_independent_and_shapes_checked():
    values = torch.zeros(2, 3)
    rewards = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    done = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    adv, _ = generalized_advantage_estimate(1.0, 1.0, values, values, rewards, done, done)
    assert adv[0].tolist() == [1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="equal"):
        generalized_advantage_estimate(1.0, 1.0, values, values[:1], rewards, done, done)
    with pytest.raises(ValueError, match="terminated"):
        generalized_advantage_estimate(1.0, 1.0, values, values, rewards, torch.zeros(2, 3), done)


def test_normalize_advantages():
    out = normalize_advantages(torch.tensor([1.0, 3.0]))
    assert torch.allclose(out, torch.tensor([-1.0, 1.0]) / math.sqrt(2.0), atol=1e-6)
    assert normalize_advantages(torch.tensor([5.0])).tolist() == [0.0]


def test_clipped_policy_loss_summed_and_per_token():
    old = torch.zeros(2, 2)
    new = torch.tensor([[0.5, 0.0], [0.0, -0.05]])
    adv = torch.tensor([1.0, -1.0])
    loss, clipfrac = clipped_policy_loss(new, old, adv, clip_range=0.2)
    # step 0: ratio e^0.5 = 1.6487, A=+1 -> min(1.6487, 1.2) = 1.2
    # step 1: ratio e^-0.05 = 0.9512, A=-1 -> min(-0.9512, -0.9512) = -0.9512
    expected = -(1.2 - math.exp(-0.05)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert clipfrac.item() == pytest.approx(0.5)
    loss_tok, clipfrac_tok = clipped_policy_loss(new, old, adv, clip_range=0.2, per_token=True)
    # tokens: (1.2, 1.0) for A=+1 and (-1.0, -0.9512) for A=-1
    expected_tok = -(1.2 + 1.0 - 1.0 - math.exp(-0.05)) / 4
    assert loss_tok.item() == pytest.approx(expected_tok, rel=1e-5)
    assert clipfrac_tok.item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="advantages"):
        clipped_policy_loss(new, old, torch.zeros(3), 0.2)


def test_policy_loss_gradient_stops_outside_clip():
    new = torch.tensor([[1.0]], requires_grad=True)
    loss, _ = clipped_policy_loss(new, torch.zeros(1, 1), torch.tensor([1.0]), 0.2)
    loss.backward()
    assert new.grad.item() == 0.0


def test_clipped_value_loss():
    new, old, ret = torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0])
    # unclipped (2-1)^2 = 1; clipped value 0.2 -> (0.2-1)^2 = 0.64; max = 1
    assert clipped_value_loss(new, old, ret, 0.2).item() == pytest.approx(0.5)
    new = torch.tensor([0.5])
    # unclipped 0.25; clipped 0.2 -> 0.64: pessimistic max = 0.64
    assert clipped_value_loss(new, old, ret, 0.2).item() == pytest.approx(0.32)
    assert clipped_value_loss(new, old, ret, 0.0).item() == pytest.approx(0.125)


def test_kl_to_reference_is_k3_and_nonnegative():
    logp = torch.tensor([[math.log(0.5), math.log(0.2)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.2)]])
    # token 0: ratio ref/p = 0.5 -> 0.5 - 1 - log 0.5 = 0.19315; token 1: 0
    assert kl_to_reference(logp, ref).item() == pytest.approx(0.5 - 1 - math.log(0.5), rel=1e-5)
    assert kl_to_reference(ref, logp).item() >= 0
    assert kl_to_reference(logp, logp).item() == 0.0
    torch.manual_seed(0)
    a, b = torch.randn(50, 7), torch.randn(50, 7)
    assert (kl_to_reference(a, b) >= 0).all()


def test_k3_is_unbiased_estimate_of_true_kl():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6), 0)
    q = torch.softmax(torch.randn(6), 0)
    true_kl = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200000, replacement=True)
    est = kl_to_reference(p.log()[samples].unsqueeze(-1), q.log()[samples].unsqueeze(-1)).mean()
    assert est.item() == pytest.approx(true_kl, rel=0.05)


def test_approx_kl_sums_tokens():
    new = torch.tensor([[0.1, 0.2]])
    expected = math.exp(0.3) - 1 - 0.3
    assert approx_kl(new, torch.zeros(1, 2)).item() == pytest.approx(expected, rel=1e-5)


def test_explained_variance():
    target = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(target, target) == pytest.approx(1.0)
    assert explained_variance(torch.full((3,), 2.0), target) == pytest.approx(0.0)
    assert math.isnan(explained_variance(target, torch.ones(3)))


def test_ppo_loss_warmup_keeps_only_value_term():
    torch.manual_seed(0)
    new = torch.randn(4, 7, requires_grad=True)
    values = torch.randn(4, requires_grad=True)
    args = (new, new.detach() + 0.1, new.detach() - 0.1, torch.ones(4, 7), values,
            values.detach(), torch.randn(4), torch.randn(4))
    kw = dict(clip_range=0.2, value_clip_range=0.2, kl_coef=0.1, entropy_coef=0.01, value_coef=0.5)
    warm = ppo_loss(*args, **kw, policy_enabled=False)
    assert warm.total.item() == pytest.approx(0.5 * warm.value.item())
    warm.total.backward()
    assert new.grad is None or new.grad.abs().sum() == 0
    full = ppo_loss(*args, **kw)
    expected = full.policy + 0.5 * full.value + 0.1 * full.kl_ref - 0.01 * 7.0
    assert full.total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert full.entropy.item() == pytest.approx(1.0)


def test_behaviour_weights_are_the_capped_chunk_ratio():
    from vla_rl_ros.core.rl.ppo_math import behaviour_weights
    behaviour = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]))
    proximal = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.5], [1.0, 1.0]]))
    weights = behaviour_weights(proximal, behaviour, cap=2.0)
    assert torch.allclose(weights, torch.tensor([1.0, 0.5, 2.0]))  # the last one is 4, capped
    loss_weighted, _ = clipped_policy_loss(proximal, proximal, torch.ones(3), 0.2, weights=weights)
    assert loss_weighted.item() == pytest.approx(-(1.0 + 0.5 + 2.0) / 3)
