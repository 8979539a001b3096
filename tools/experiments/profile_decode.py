"""Experiment (not a test): where one batched decode's time goes, stage by stage, on a GPU.

`vla-rl bench policy` gives the whole decode; this splits it into the vision towers, the
projector, the language model's prefill and each cached token step, and prints the top ops of a
torch.profiler trace, so a slow shape shows whether it waits on the GPU or on Python::

    python3 tools/experiments/profile_decode.py --size openvla-7b --batch 1 --device cuda

Random weights (the shape only): timing does not depend on the values.
"""
import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for vla_rl_ros

from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy  # noqa: E402


def stages(policy: VLAPolicy, frames: np.ndarray, texts: list[str], proprio: np.ndarray) -> dict[str, float]:
    """Milliseconds per stage of one greedy ``policy.decode``, timed by hooks on its own modules.

    Hooks rather than a copy of the decode loop, so the profile measures the path rollouts run.
    Each hook synchronises the device, so the stages add up to slightly more than a plain decode.
    """
    device, model = policy.device, policy.model
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times: dict[str, float] = {}

    def timed(module: torch.nn.Module, names) -> list:
        begun: list[float] = []

        def before(_module, _args) -> None:
            sync()
            begun.append(time.perf_counter())

        def after(_module, _args, output) -> None:
            sync()
            times[names(output)] = 1000 * (time.perf_counter() - begun.pop())
        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    calls = itertools.count()

    def language_model_call(output) -> str:
        index, length = next(calls), output.last_hidden_state.shape[1]
        return f"prefill ({length} tokens)" if index == 0 else f"token step {index}"

    handles = (timed(model.vision_backbone, lambda _: "vision towers")
               + timed(model.projector, lambda _: "projector")
               + timed(model.language_model.model, language_model_call))
    try:
        sync()
        begun = time.perf_counter()
        policy.decode(frames, texts, greedy=True, proprio=proprio)
        sync()
        total = 1000 * (time.perf_counter() - begun)
    finally:
        for handle in handles:
            handle.remove()
    times["the rest (inputs, embedding, sampling)"] = total - sum(times.values())
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
        print(f"  {name:>40}: {statistics.median(r[name] for r in runs):8.2f}")
    print(f"  {'total':>40}: {statistics.median(sum(r.values()) for r in runs):8.2f}")
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
