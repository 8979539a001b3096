"""Throughput of batched action decoding (and of the PPO forward/backward) for one policy config.

``actions/s`` counts one 7-D action (7 tokens) per observation: a batch of B observations
decoded in one call yields B actions. Latency is the wall time of one ``decode`` call,
including image preprocessing and tokenisation, i.e. what a rollout worker sees.
"""
from __future__ import annotations

import platform
import resource
import statistics
import time
from typing import Sequence

import numpy as np
import torch

from vla_rl_ros.core.policy.config import PolicyConfig
from vla_rl_ros.core.policy.policy import VLAPolicy

BENCH_INSTRUCTIONS = [
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "open the middle drawer of the cabinet",
    "put the cream cheese in the bowl",
    "turn on the stove",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _timed(fn, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def bench_policy(cfg: PolicyConfig, batch_sizes: Sequence[int], repeats: int = 10, warmup: int = 2,
                 with_update: bool = True, policy: VLAPolicy | None = None) -> dict:
    """Decode latency, actions/s and peak memory per batch size, plus the PPO fwd+bwd time."""
    device = torch.device(cfg.device)
    start = time.perf_counter()
    policy = policy or VLAPolicy.from_config(cfg)
    build_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    generator = torch.Generator(device=device).manual_seed(0)
    rows = []
    for batch in batch_sizes:
        frames = rng.integers(0, 256, (batch, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
        texts = [BENCH_INSTRUCTIONS[i % len(BENCH_INSTRUCTIONS)] for i in range(batch)]
        proprio = np.tile(np.array([0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.04, -0.04], np.float32), (batch, 1))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        decode = lambda: policy.decode(frames, texts, generator=generator, proprio=proprio)  # noqa: E731
        first = _timed(decode, warmup, device)  # the first call of a batch size compiles (compile_decode)
        times = _timed(decode, repeats, device)
        median = statistics.median(times)
        row = {"batch": batch, "first_call_ms": round(1000 * first[0], 2) if first else None,
               "latency_ms_median": round(1000 * median, 2),
               "latency_ms_min": round(1000 * min(times), 2), "latency_ms_max": round(1000 * max(times), 2),
               "actions_per_s": round(batch / median, 2),
               "tokens_per_s": round(batch * policy.num_action_tokens / median, 1)}
        if with_update:
            tokens = decode().tokens

            def update() -> None:
                out = policy.evaluate(frames, texts, tokens, proprio=proprio)
                (out.log_probs.sum() + out.values.sum()).backward()
                for param in policy.policy_parameters() + policy.value_parameters():
                    param.grad = None
            _timed(update, 1, device)
            update_times = _timed(update, max(2, repeats // 3), device)
            row["ppo_fwd_bwd_ms_median"] = round(1000 * statistics.median(update_times), 2)
        row["peak_memory_mb"] = round(_peak_memory_mb(device), 1)
        rows.append(row)
    by_batch = {r["batch"]: r for r in rows}
    result = {
        "target": "policy", "size": cfg.size, "dtype": cfg.dtype, "device": str(device),
        "compile_decode": cfg.compile_decode,
        "image_size": cfg.image_size, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "parameters": policy.num_parameters(), "build_s": round(build_s, 2), "repeats": repeats,
        "peak_memory_note": ("torch.cuda.max_memory_allocated per batch size" if device.type == "cuda"
                             else "process peak RSS so far (monotonic over batch sizes)"),
        "results": rows,
    }
    base = by_batch.get(1)
    if base:
        result["speedup_vs_batch1"] = {str(b): round(r["actions_per_s"] / base["actions_per_s"], 2)
                                       for b, r in by_batch.items()}
        if 8 in by_batch:
            result["goal_batch8_4x_batch1"] = by_batch[8]["actions_per_s"] >= 4 * base["actions_per_s"]
        if device.type == "cuda" and cfg.size == "openvla-7b":
            result["goal_batch1_6_actions_per_s"] = base["actions_per_s"] >= 6
            if 64 in by_batch:
                wide = by_batch[64]["actions_per_s"]
                result["goal_batch64_20x_batch1"] = wide >= 20 * base["actions_per_s"]
    return result
