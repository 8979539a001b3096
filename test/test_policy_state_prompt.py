"""The state prompt: a policy that reads the gripper opening and hand height as prompt words.

Why it exists (docs/envs.md): image-only SFT of the small model confused "open gripper above the
object" with "closed gripper holding it" and scored 0/30 held out; with the state words, 5/30.
"""
import json

import numpy as np
import pytest
import torch

from policy_helpers import INSTRUCTIONS, images, tiny_cfg
from vla_rl_ros.core.envs.base import PROPRIO_DIM
from vla_rl_ros.core.policy import VLAPolicy
from vla_rl_ros.core.policy.architecture import VLAArchitecture
from vla_rl_ros.core.policy.processor import state_words

torch.set_num_threads(1)


def proprio(opening_m: float, height_m: float, batch: int = 1) -> np.ndarray:
    row = np.array([0.1, -0.05, height_m, 0.0, 0.0, 0.0, opening_m / 2, -opening_m / 2], np.float32)
    return np.tile(row, (batch, 1))


@pytest.fixture(scope="module")
def policy():
    return VLAPolicy.create(tiny_cfg(state_prompt=True), instructions=INSTRUCTIONS)


def test_state_words_are_whole_centimetres_clipped():
    assert state_words(proprio(0.08, 0.273)[0]) == "state gripper 8 height 27"
    assert state_words(proprio(0.0, -0.1)[0]) == "state gripper 0 height 0"
    assert state_words(proprio(0.5, 2.0)[0]) == "state gripper 50 height 60"


def test_state_words_are_in_the_vocabulary_and_change_the_prompt(policy):
    assert policy.reads_state and policy.arch.state_prompt
    unknown = policy.tokenizer.token_to_id("<unk>")
    ids, _ = policy.processor.text(INSTRUCTIONS[:1], proprio=proprio(0.08, 0.27))
    assert unknown not in ids[0].tolist()
    low, _ = policy.processor.text(INSTRUCTIONS[:1], proprio=proprio(0.08, 0.05))
    assert ids.shape == low.shape and not torch.equal(ids, low)
    # different state, different action distribution for the same image and instruction
    frames = images(1)
    high_out = policy.decode(frames, INSTRUCTIONS[:1], greedy=True, proprio=proprio(0.08, 0.27))
    low_lp = policy.evaluate(frames, INSTRUCTIONS[:1], high_out.tokens, proprio=proprio(0.08, 0.05)).log_probs
    assert not torch.allclose(high_out.log_probs, low_lp.detach())


def test_missing_or_bad_proprio_is_a_clear_error(policy):
    frames = images(2)
    with pytest.raises(ValueError, match="reads the robot state"):
        policy.decode(frames, INSTRUCTIONS[:2])
    with pytest.raises(ValueError, match=r"proprio must have shape \[2, >= 8\]"):
        policy.decode(frames, INSTRUCTIONS[:2], proprio=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"proprio must have shape \[2, >= 8\]"):
        policy.sft_loss(frames, INSTRUCTIONS[:2], torch.zeros(2, 7, dtype=torch.long),
                        proprio=proprio(0.08, 0.2))
    bad = proprio(0.08, 0.2, batch=2)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        policy.decode(frames, INSTRUCTIONS[:2], proprio=bad)
    with pytest.raises(ValueError, match="empty"):  # the state words must not hide an empty instruction
        policy.decode(frames[:1], [" "], proprio=proprio(0.08, 0.2))


def test_image_only_policy_ignores_proprio():
    plain = VLAPolicy.create(tiny_cfg(), instructions=INSTRUCTIONS)
    assert not plain.reads_state
    frames = images(2)
    a = plain.decode(frames, INSTRUCTIONS[:2], greedy=True)
    b = plain.decode(frames, INSTRUCTIONS[:2], greedy=True, proprio=proprio(0.01, 0.5, batch=2))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.log_probs, b.log_probs)


def test_flag_survives_save_and_load_and_old_configs_default_to_image_only(policy, tmp_path):
    policy.save(str(tmp_path / "p"))
    loaded = VLAPolicy.load(str(tmp_path / "p"), tiny_cfg(state_prompt=False))  # the model decides
    assert loaded.reads_state
    frames, state = images(2), proprio(0.04, 0.15, batch=2)
    assert torch.equal(policy.decode(frames, INSTRUCTIONS[:2], greedy=True, proprio=state).tokens,
                       loaded.decode(frames, INSTRUCTIONS[:2], greedy=True, proprio=state).tokens)
    stored = json.loads((tmp_path / "p" / "config.json").read_text())["vla_rl_ros_architecture"]
    assert stored["state_prompt"] is True
    del stored["state_prompt"]  # a model saved before the option existed
    assert VLAArchitecture.from_dict(stored).state_prompt is False


def test_imitation_uses_the_state_to_tell_identical_frames_apart():
    """Same frame, same instruction, two states, two expert actions: only the state separates them
    (the descend-vs-lift confusion of the image-only policy, in miniature)."""
    torch.manual_seed(0)
    student = VLAPolicy.create(tiny_cfg(state_prompt=True), instructions=INSTRUCTIONS)
    frames = np.repeat(images(1), 2, axis=0)
    texts = [INSTRUCTIONS[0]] * 2
    state = np.concatenate([proprio(0.08, 0.05), proprio(0.02, 0.25)])
    descend, lift = np.array([0, 0, -1, 0, 0, 0, -1.0]), np.array([0, 0, 1, 0, 0, 0, 1.0])
    target = torch.as_tensor(student.action_tokenizer.encode(np.stack([descend, lift])), dtype=torch.long)
    optimizer = torch.optim.Adam(student.sft_parameters(full=True), lr=3e-3)
    for _ in range(60):
        loss = student.sft_loss(frames, texts, target, proprio=state)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    student.model.eval()
    out = student.decode(frames, texts, greedy=True, proprio=state)
    assert torch.equal(out.tokens, target)
    assert out.actions[0, 0, 2] < 0 < out.actions[1, 0, 2]


def test_proprio_layout_constant_matches_the_simulator_and_franka_conventions():
    from vla_rl_ros.core.safety import EefPose, proprio_from_state
    row = proprio_from_state(EefPose(np.array([0.4, 0.0, 0.3]), np.array([0.0, 0.0, 0.0, 1.0])),
                             np.array([0.02, 0.02]))
    assert row.shape == (PROPRIO_DIM,)
    assert state_words(row) == "state gripper 4 height 30"
