"""Experiment (not a test): where one batched decode's time goes, stage by stage, on a GPU.

`vla-rl bench policy` gives the whole decode; this splits it into the vision towers plus
projector, the language model's prefill and each cached token step, and prints the top ops of a
torch.profiler trace, so a slow shape shows whether it waits on the GPU or on Python::

    python3 tools/experiments/profile_decode.py --size openvla-7b --batch 1 --device cuda

Random weights (the shape only): timing does not depend on the values.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for vla_rl_ros

from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy  # noqa: E402
from vla_rl_ros.core.policy.decoding import _positions  # noqa: E402


def stages(policy: VLAPolicy, frames: np.ndarray, texts: list[str], proprio: np.ndarray) -> dict[str, float]:
    """Milliseconds of each stage of one greedy decode, synchronised around every stage."""
    device, lm = policy.device, policy.model.language_model
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times, mark = {}, [time.perf_counter()]

    def lap(name: str) -> None:
        sync()
        now = time.perf_counter()
        times[name] = 1000 * (now - mark[0])
        mark[0] = now

    with torch.no_grad():
        sync()
        mark[0] = time.perf_counter()
        pixels, input_ids, mask = policy._inputs(frames, texts, proprio)
        lap("inputs")
        embeds, mask = policy.model.multimodal_embeddings(pixels, input_ids, mask)
        lap("vision+embed")
        positions = _positions(mask)
        out = lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
        lap(f"prefill ({embeds.shape[1]} tokens)")
        cache, token = out.past_key_values, out.last_hidden_state[:, -1:].argmax(-1) % 100
        for step in range(policy.num_action_tokens - 1):
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = lm.model(input_ids=token, attention_mask=mask, position_ids=positions,
                           past_key_values=cache, use_cache=True)
            lap(f"token step {step + 1}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="openvla-7b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--merged", action="store_true",
                        help="fold the LoRA adapters into the base weights first (an eval-only node could)")
    args = parser.parse_args()
    seven = args.size == "openvla-7b"
    cfg = PolicyConfig(size=args.size, device=args.device, dtype="bfloat16" if seven else "float32",
                       image_size=224 if seven else 128)
    policy = VLAPolicy.from_config(cfg)
    if args.merged:
        policy.peft.merge_adapter()  # no adapter kernels left: each linear is one matrix product
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.batch, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    texts = ["put the cream cheese in the bowl"] * args.batch
    proprio = np.tile(np.array([0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.04, -0.04], np.float32), (args.batch, 1))
    for _ in range(2):
        stages(policy, frames, texts, proprio)
    runs = [stages(policy, frames, texts, proprio) for _ in range(args.repeats)]
    merged = ", adapters merged" if args.merged else ""
    print(f"{args.size}, batch {args.batch}, {args.device}{merged}: median ms per stage, {args.repeats} runs")
    for name in runs[0]:
        print(f"  {name:>24}: {statistics.median(r[name] for r in runs):8.2f}")
    print(f"  {'total':>24}: {statistics.median(sum(r.values()) for r in runs):8.2f}")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if policy.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        stages(policy, frames, texts, proprio)
    events = prof.key_averages()
    print(f"kernel launches and other ops: {sum(e.count for e in events)}")
    sort = "self_cuda_time_total" if policy.device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=12, max_name_column_width=40))
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    main()
