"""``policy.compile_decode``: static KV cache + compiled token step gives the eager decode's numbers.

On a CPU the step compiles with inductor (no CUDA graphs); ``aot_eager`` checks in seconds that
the step traces as one graph (``fullgraph=True`` raises on any graph break, which would also
break CUDA-graph capture on a GPU).
"""
from __future__ import annotations

import pytest
import torch
from policy_helpers import PADDED_TEXTS, images, randomize_adapters, tiny_policy, varied_policy

from vla_rl_ros.core.policy import static_decoding
from vla_rl_ros.core.policy.decoding import decode_actions
from vla_rl_ros.core.policy.static_decoding import StaticCacheStepper

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = PADDED_TEXTS  # prompts of different lengths, so batches are left-padded


def _decode(policy, batch: int, stepper: StaticCacheStepper | None, greedy: bool, seed: int):
    pixels, input_ids, mask = policy._inputs(images(batch, seed=seed), TEXTS[:batch])
    return decode_actions(policy.model, policy.value_head, pixels, input_ids, mask, policy.num_action_tokens,
                          policy.space, greedy, torch.Generator().manual_seed(seed), stepper)


@pytest.fixture(scope="module")
def policy():
    return varied_policy()


def test_static_cache_steps_give_the_eager_tokens_log_probs_and_values(policy):
    stepper = StaticCacheStepper(policy.model.language_model, policy.device, {"backend": "aot_eager"})
    # Batch 3 twice (the second reuses its cache and graph), then batch 1 (a second slot).
    for batch, greedy, seed in ((3, False, 0), (3, False, 1), (3, True, 2), (1, False, 3)):
        eager = _decode(policy, batch, None, greedy, seed)
        static = _decode(policy, batch, stepper, greedy, seed)
        assert torch.equal(static[0], eager[0])
        assert torch.allclose(static[1], eager[1], atol=1e-5, rtol=0)
        assert torch.allclose(static[2], eager[2], atol=1e-6, rtol=0)
    assert sorted(stepper._slots) == [(1, static_decoding.PROMPT_BUCKET), (3, static_decoding.PROMPT_BUCKET)]


def test_shapes_beyond_the_kept_ones_decode_eagerly_with_one_warning(policy, monkeypatch):
    monkeypatch.setattr(static_decoding, "MAX_SLOTS", 2)
    stepper = StaticCacheStepper(policy.model.language_model, policy.device, {"backend": "aot_eager"})
    _decode(policy, 1, stepper, False, 0)
    _decode(policy, 2, stepper, False, 0)
    with pytest.warns(RuntimeWarning, match="keeps 2 .*decode eagerly"):
        extra = _decode(policy, 3, stepper, False, 4)
    eager = _decode(policy, 3, None, False, 4)
    assert torch.equal(extra[0], eager[0]) and torch.allclose(extra[1], eager[1], atol=1e-5, rtol=0)
    assert len(stepper._slots) == 2


def test_compiled_policy_decode_follows_adapters_loaded_after_it_compiled(tmp_path):
    """The configured path (inductor on a CPU): after ``load_adapters`` the compiled decode must use the
    new LoRA weights, as a CUDA graph recorded before the load would if they were not updated in place."""
    compiled = tiny_policy(temperature=1.5, compile_decode=True)
    eager = tiny_policy(temperature=1.5)
    frames = images(2, seed=5)
    before = compiled.decode(frames, TEXTS[:2], generator=torch.Generator().manual_seed(5))
    assert compiled._stepper is not None and eager._stepper is None
    randomize_adapters(eager, seed=9, std=0.3)
    eager.save_adapters(str(tmp_path / "adapters"), version=1)
    assert compiled.load_adapters(str(tmp_path / "adapters")) == 1
    after = compiled.decode(frames, TEXTS[:2], generator=torch.Generator().manual_seed(5))
    reference = eager.decode(frames, TEXTS[:2], generator=torch.Generator().manual_seed(5))
    assert torch.equal(after.tokens, reference.tokens)
    assert torch.allclose(after.log_probs, reference.log_probs, atol=1e-4, rtol=0)
    assert torch.allclose(after.values, reference.values, atol=1e-5, rtol=0)
    assert not torch.allclose(after.log_probs, before.log_probs, atol=1e-3)  # the load did change them
