"""OpenVLA's LIBERO evaluation steps as policy options: JPEG round trip, Lanczos resize, 0.9-area
centre crop (in that order, before the checkpoint processor) and the LIBERO gripper convention.

The Lanczos weights are checked against TF's ``scale_and_translate`` rule written out by hand;
the gripper mapping against run_libero_eval.py's ``normalize_gripper_action(binarize=True)`` +
``invert_gripper_action``.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from policy_helpers import INSTRUCTIONS, NORM_STATS, tiny_cfg
from PIL import Image

from vla_rl_ros.core.policy import VLAPolicy
from vla_rl_ros.core.policy.processor import center_crop, jpeg_round_trip, lanczos3_weights, lanczos_resize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smooth_frames(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """Camera-like frames: coarse noise upsampled (a resize of pure noise mostly measures clipping)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (batch, 12, 12, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in coarse])


def tf_lanczos3_row(x: int, out_size: int, in_size: int) -> np.ndarray:
    """One row of TF's scale_and_translate weights (lanczos3, antialias), straight from its C++ rule."""
    scale = out_size / in_size
    kernel_scale = max(1 / scale, 1.0)
    sample = (x + 0.5) / scale
    start = min(max(math.ceil(sample - 3 * kernel_scale - 0.5), 0), in_size - 1)
    end = min(max(math.floor(sample + 3 * kernel_scale - 0.5), 0), in_size - 1) + 1

    def kernel(t: float) -> float:
        t = abs(t)
        if t > 3:
            return 0.0
        if t <= 1e-3:
            return 1.0
        return 3 * math.sin(math.pi * t) * math.sin(math.pi * t / 3) / (math.pi * t) ** 2

    row = np.zeros(in_size)
    for source in range(start, end):
        row[source] = kernel((source + 0.5 - sample) / kernel_scale)
    return row / row.sum()


@pytest.mark.parametrize("out_size,in_size", [(224, 256), (32, 64), (7, 3), (5, 5)])
def test_lanczos_weights_follow_tf_scale_and_translate(out_size, in_size):
    weights = lanczos3_weights(out_size, in_size)
    assert weights.shape == (out_size, in_size) and weights.dtype == np.float32
    for x in {0, 1, out_size // 2, out_size - 1}:
        # float32 sample positions (as TF's) against this float64 statement: ~1e-5 at x = 200
        np.testing.assert_allclose(weights[x], tf_lanczos3_row(x, out_size, in_size), atol=5e-5)


def test_lanczos_resize_rounds_like_tf_and_stays_close_to_pil():
    frames = smooth_frames(2, 256)
    resized = lanczos_resize(frames, 224)
    assert resized.shape == (2, 224, 224, 3) and resized.dtype == np.uint8
    weights = lanczos3_weights(224, 256).astype(np.float64)
    rows_done = np.einsum("oh,bhwc->bowc", weights, frames.astype(np.float64))
    exact = np.einsum("pw,bowc->bopc", weights, rows_done)
    assert np.abs(resized.astype(np.float64) - np.clip(np.rint(exact), 0, 255)).max() <= 1
    pil = np.stack([np.asarray(Image.fromarray(f).resize((224, 224), Image.LANCZOS)) for f in frames])
    difference = np.abs(resized.astype(int) - pil.astype(int))
    assert difference.mean() < 0.5 and difference.max() <= 2  # PIL rounds between its two passes
    flat = np.full((1, 256, 256, 3), 173, np.uint8)
    assert np.array_equal(lanczos_resize(flat, 224), np.full((1, 224, 224, 3), 173, np.uint8))
    assert lanczos_resize(frames, 256) is frames


def test_jpeg_round_trip_is_a_quality_95_encode_and_decode():
    frames = smooth_frames(2, 64, seed=1)
    out = jpeg_round_trip(frames)
    assert out.shape == frames.shape and out.dtype == np.uint8 and not np.array_equal(out, frames)
    buffer = io.BytesIO()
    Image.fromarray(frames[1]).save(buffer, format="JPEG", quality=95)
    assert np.array_equal(out[1], np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    assert np.abs(out.astype(int) - frames.astype(int)).mean() < 8  # saturated test colours: ~4.6


def test_the_published_order_jpeg_then_lanczos_then_crop_then_processor():
    published = VLAPolicy.create(tiny_cfg(jpeg_round_trip=True, lanczos_resize=True, center_crop_area=0.9),
                                 instructions=INSTRUCTIONS)
    plain = VLAPolicy.create(tiny_cfg(), instructions=INSTRUCTIONS)
    frames = smooth_frames(2, 64, seed=2)  # rendered at 64 px, the model takes 32 (LIBERO: 256 -> 224)
    expected = center_crop(lanczos_resize(jpeg_round_trip(frames), 32), 0.9)
    assert np.array_equal(published.processor.frames(frames)[0], expected)
    assert torch.equal(published.processor.pixels(frames), plain.processor.pixels(expected))
    assert not torch.equal(published.processor.pixels(frames), plain.processor.pixels(frames))
    with pytest.raises(ValueError, match="too small"):
        published.processor.pixels(np.zeros((1, 8, 8, 3), np.uint8))


def test_openvla_libero_gripper_is_binarised_and_inverted():
    policy = VLAPolicy.create(tiny_cfg(openvla_libero_gripper=True), instructions=INSTRUCTIONS,
                              norm_stats={"libero_spatial_no_noops": NORM_STATS["libero_spatial_no_noops"]})
    raw = VLAPolicy.create(tiny_cfg(), instructions=INSTRUCTIONS,
                           norm_stats={"libero_spatial_no_noops": NORM_STATS["libero_spatial_no_noops"]})
    end = policy.arch.action_vocab_end
    # gripper tokens: bin centres 0.996 (open in the dataset), 0.0 (closed), -0.996 (below 0: closed)
    tokens = np.array([[end - 128] * 6 + [gripper] for gripper in (end - 256, end - 128, end - 1)])
    model_gripper = raw.chunk_actions(tokens)[:, 0, 6]
    np.testing.assert_allclose(model_gripper, [254 / 255, 0.0, -254 / 255], atol=1e-6)
    expected = -np.sign(2 * model_gripper - 1)  # normalize_gripper_action(binarize) then invert
    assert policy.chunk_actions(tokens)[:, 0, 6].tolist() == expected.tolist() == [-1.0, 1.0, 1.0]
    np.testing.assert_array_equal(policy.chunk_actions(tokens)[:, 0, :6], raw.chunk_actions(tokens)[:, 0, :6])
    # Imitation labels in LIBERO's convention map back to the model's: open (-1) -> 1, close (+1) -> 0.
    env_actions = np.zeros((2, 1, 7))
    env_actions[:, 0, 6] = [-1.0, 1.0]
    labels = policy.chunk_tokens(env_actions)
    assert labels[:, 6].tolist() == [end - 256, end - 128]
    assert policy.chunk_actions(labels)[:, 0, 6].tolist() == [-1.0, 1.0]
    out = policy.decode(smooth_frames(2, 32), INSTRUCTIONS[:2], greedy=True)
    assert set(out.actions[:, 0, 6].tolist()) <= {-1.0, 1.0}
