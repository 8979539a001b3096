"""Action tokenization against hand-computed values, the word-level tokenizer, prompts and pixels."""
from __future__ import annotations

import numpy as np
import pytest
from policy_helpers import NORM_STATS, tiny_policy

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.policy import ActionTokenizer, compute_norm_stats
from vla_rl_ros.core.policy.action_tokenizer import select_norm_stats
from vla_rl_ros.core.policy.processor import (build_word_tokenizer, center_crop, libero_instructions,
                                              prompt_for)

STATS = select_norm_stats(NORM_STATS, "libero_spatial_no_noops")


def test_openvla_bin_rule_by_hand():
    tok = ActionTokenizer(32000, STATS)
    normalized = np.array([[-1.0, 1.0, 0.0, -0.999, 0.9999, 2.0, -3.0]])
    # digitize on linspace(-1, 1, 256): -1 -> 1, 1 -> 256, 0 -> 128, above/below clip to the ends.
    assert tok.encode_normalized(normalized).tolist() == [[31999, 31744, 31872, 31999, 31745, 31744, 31999]]
    centers = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    decoded = tok.decode_normalized(np.array([[31999, 31744, 31872, 31745, 31998, 31800, 31744]]))
    # idx = clip(32000 - token - 1, 0, 254)
    assert decoded.tolist() == [centers[[0, 254, 127, 254, 1, 199, 254]].tolist()]


def test_unnormalise_with_q01_q99_and_gripper_mask_by_hand():
    tok = ActionTokenizer(32000, STATS)
    a = np.array([[0.0, 1.0, -1.0, 0.5, -0.5, 0.25, -0.7]])
    expected = [0.5 * (0 + 1) * (0.9 + 0.75) - 0.75,       # 0.075
                0.5 * (1 + 1) * (0.8 + 0.6) - 0.6,         # q99
                -0.9,                                      # q01
                0.5 * 1.5 * (0.12 + 0.1) - 0.1,
                0.5 * 0.5 * (0.25 + 0.2) - 0.2,
                0.5 * 1.25 * (0.35 + 0.3) - 0.3,
                -0.7]                                      # gripper: mask False, passes through
    assert np.allclose(tok.unnormalize(a), np.array([expected], dtype=np.float32), atol=1e-7)
    assert tok.unnormalize(a).dtype == np.float32
    assert np.allclose(tok.normalize(tok.unnormalize(a)), a, atol=1e-6)


def test_encode_decode_round_trip_within_one_bin():
    tok = ActionTokenizer(437, STATS)
    rng = np.random.default_rng(0)
    raw = tok.unnormalize(rng.uniform(-0.99, 0.99, (64, 7)))
    tokens = tok.encode(raw)
    assert tokens.dtype == np.int64 and tokens.min() >= 437 - 256 and tokens.max() < 437
    span = np.where(STATS["mask"], (STATS["q99"] - STATS["q01"]) / 255 * 1.01, 2 / 255 * 1.01)
    assert (np.abs(tok.decode(tokens) - raw) <= span).all()
    with pytest.raises(ValueError, match=r"shape \[B, 7\]"):
        tok.encode(np.zeros(7))


def test_norm_stats_errors():
    with pytest.raises(ConfigError, match="no norm_stats"):
        select_norm_stats({}, "")
    with pytest.raises(ConfigError, match="no 'q99'"):
        select_norm_stats({"x": {"action": {"q01": [0] * 7}}}, "x")
    with pytest.raises(ConfigError, match="equal 1-D shapes"):
        select_norm_stats({"x": {"action": {"q01": [0] * 7, "q99": [1] * 6}}}, "x")
    assert select_norm_stats({"x": {"action": {"q01": [0] * 7, "q99": [1] * 7}}}, "")["mask"].all()


def test_word_tokenizer_vocab_and_unknown_words():
    tok = build_word_tokenizer(["Pick up the Alphabet soup", "open the drawer"])
    vocab = tok.get_vocab()
    size = tok.get_vocab_size()
    assert [tok.id_to_token(i) for i in range(size - 256, size)] == [f"<act_{i}>" for i in range(256)]
    assert vocab["<pad>"] == 0 and vocab["<s>"] == 1 and vocab["</s>"] == 2 and vocab["<unk>"] == 3
    ids = tok.encode(prompt_for("pick up the alphabet soup")).ids
    assert ids[0] == 1 and 3 not in ids
    assert tok.id_to_token(ids[-1]) == ":" and tok.id_to_token(ids[-2]) == "out"
    assert 3 in tok.encode(prompt_for("defenestrate the soup")).ids


def test_libero_vocabulary_covers_every_libero_instruction():
    texts = libero_instructions()
    assert len(texts) >= 130
    tok = build_word_tokenizer(texts)
    assert all(3 not in tok.encode(prompt_for(t)).ids for t in texts)


def test_prompt_format_and_left_padding():
    policy = tiny_policy()
    assert prompt_for("Open The Drawer") == "In: What action should the robot take to open the drawer?\nOut:"
    ids, mask = policy.processor.text(["open the drawer", "pick up the black bowl and place it on the plate"])
    assert ids.shape == mask.shape and ids.shape[0] == 2
    short = int(mask[0].sum())
    assert mask[0, :ids.shape[1] - short].sum() == 0 and (ids[0, :ids.shape[1] - short] == 0).all()
    assert ids[0, ids.shape[1] - short] == 1 and ids[1, 0] == 1  # BOS first after the padding


def test_pixels_use_dino_and_siglip_normalisation():
    policy = tiny_policy()
    frame = np.full((1, 32, 32, 3), 255, np.uint8)
    pixels = policy.processor.pixels(frame)
    assert pixels.shape == (1, 6, 32, 32)
    dino = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(pixels[0, :3, 0, 0].numpy(), dino, atol=1e-6)
    assert np.allclose(pixels[0, 3:, 0, 0].numpy(), 1.0)


def test_norm_stats_from_demonstrations_feed_the_tokenizer():
    rng = np.random.default_rng(1)
    demo = np.concatenate([rng.uniform(-0.5, 0.5, (1000, 6)), rng.choice([-1.0, 1.0], (1000, 1))], axis=1)
    entry = compute_norm_stats(demo)
    assert entry["action"]["mask"] == [True] * 6 + [False]
    tok = ActionTokenizer(437, select_norm_stats({"demo": entry}, ""))
    assert np.allclose(tok.q01[:6], np.quantile(demo[:, :6], 0.01, axis=0))
    decoded = tok.decode(tok.encode(demo))
    assert np.array_equal(np.sign(decoded[:, 6]), demo[:, 6])  # the gripper passes through
    with pytest.raises(ValueError, match="non-empty"):
        compute_norm_stats(np.zeros((0, 7)))


def test_center_crop_follows_tf_crop_and_resize_by_hand():
    ramp = np.tile(np.arange(0, 250, 25, dtype=np.uint8)[None, :, None], (10, 1, 3))[None]  # [1, 10, 10, 3]
    out = center_crop(ramp, 0.81)  # side 0.9: samples x = 0.45 + j * 0.9 over 10 output columns
    points = 0.05 * 9 + np.arange(10) * 0.9
    expected = (np.clip(points * 25 / 255.0, 0, 1) * 255.5).astype(np.uint8)
    assert np.array_equal(out[0, 0, :, 0], expected)
    assert np.array_equal(out[0, :, 3, 1], np.full(10, expected[3]))  # rows are constant
    assert center_crop(ramp, 1.0) is ramp
    policy = tiny_policy(center_crop_area=0.9)
    frame = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    plain = tiny_policy().processor.pixels(frame).numpy()
    assert not np.array_equal(policy.processor.pixels(frame).numpy(), plain)
