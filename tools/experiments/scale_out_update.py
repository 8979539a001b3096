"""Learner update time with 1 and 2 data-parallel ranks (issue 30), written as JSON.

One PPO update (critic estimator, the default ``ppo`` settings: 1 epoch, minibatches of 32) of
the default policy (``small``, 128 px, chunks of 8) on a fixed batch of toy-env transitions,
timed in three set-ups: 1 rank with 1 thread, 2 ranks (torchrun, gloo) with 1 thread each, and
1 rank with 2 threads (the same cores used by one process). Each rank updates on its
contiguous shard of the batch, as the learner node's ranks do; the update is the same as one
process's (test/test_data_parallel.py). The batch is collected once, before any timing.

    nice -n 19 .venv/bin/python tools/experiments/scale_out_update.py \
        --out docs/results/scale_out/update_time_cpu.json

On a shared CPU the figures are indicative only: the JSON records the load average before and
after each set-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SETUPS = ((1, 1), (2, 1), (1, 2))
"""(ranks, threads per rank)."""


def policy_config(size: str):
    """The policy of the default run (config/train_sim.yaml: small, 128 px, chunks of 8)."""
    from vla_rl_ros.core.policy import PolicyConfig
    return PolicyConfig(size=size, image_size=128, chunk_size=8, seed=0)


def make_policy(size: str):
    """The policy every rank builds (seeded, so the ranks agree)."""
    from vla_rl_ros.core.envs.toy import toy_instruction
    from vla_rl_ros.core.policy import VLAPolicy
    return VLAPolicy.create(policy_config(size), instructions=[toy_instruction(i) for i in range(4)])


def collect_batch(size: str, transitions: int, path: Path) -> int:
    """Collect toy episodes until ``transitions`` decisions; save the batch's tensors to ``path``."""
    from vla_rl_ros.core.envs.toy import ToyVectorEnv
    from vla_rl_ros.core.rl.buffer import build_batch, episode_rewards
    from vla_rl_ros.core.rl.rollout import collect_episodes, policy_decoder
    policy = make_policy(size)
    env = ToyVectorEnv(num_envs=4, max_episode_steps=64, image_size=128)
    decode = policy_decoder(policy, generator=torch.Generator().manual_seed(1))
    episodes, count = [], 0
    while count < transitions:
        found = collect_episodes(env, decode, [(i % 2, len(episodes) + i) for i in range(4)])
        episodes += found
        count += sum(e.length for e in found)
    batch = build_batch(episodes, [episode_rewards(e, 1.0, 0.0) for e in episodes], 0.99, 0.95)
    keep = slice(0, transitions)
    torch.save({"images": torch.from_numpy(np.ascontiguousarray(batch.images[keep])),
                "instructions": list(batch.instructions[keep]),
                "proprio": torch.from_numpy(batch.proprio[keep]),
                "tokens": batch.tokens[keep], "log_probs": batch.log_probs[keep],
                "old_values": batch.old_values[keep], "advantages": batch.advantages[keep],
                "returns": batch.returns[keep], "rewards": batch.rewards}, path)
    return transitions


def load_batch(path: Path):
    """The saved transitions as a RolloutBatch (time-major fields only for the finiteness check)."""
    from vla_rl_ros.core.rl.buffer import RolloutBatch
    data = torch.load(path, weights_only=True)
    empty = torch.zeros(0, 0)
    return RolloutBatch(rewards=data["rewards"], values=empty, next_values=empty, done=empty,
                        terminated=empty, mask=empty, advantages_tm=empty, images=data["images"].numpy(),
                        instructions=data["instructions"], proprio=data["proprio"].numpy(),
                        tokens=data["tokens"],
                        log_probs=data["log_probs"], old_values=data["old_values"],
                        advantages=data["advantages"], returns=data["returns"])


def worker(batch_path: Path, out: Path, size: str, repeats: int) -> None:
    """torchrun entry: time ``repeats`` updates (after one untimed) on this rank's shard."""
    from vla_rl_ros.core.rl import distributed
    from vla_rl_ros.core.rl.config import PPOConfig
    from vla_rl_ros.core.rl.learner_ranks import split_batch
    from vla_rl_ros.core.rl.ppo_trainer import PPOTrainer
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ranks = distributed.from_environment("cpu")
    policy = make_policy(size)
    batch = load_batch(batch_path)
    if ranks is not None:
        batch = split_batch(batch, ranks.world_size)[ranks.rank]
    trainer = PPOTrainer(policy, PPOConfig(advantage_estimator="critic", critic_warmup_iters=0), ranks)
    trainer.sync_ranks()
    generator = torch.Generator().manual_seed(0)
    seconds, metrics = [], []
    for index in range(repeats + 1):
        start = time.perf_counter()
        result = trainer.update(batch, generator)
        if index:  # the first update warms up allocators and caches
            seconds.append(time.perf_counter() - start)
            metrics.append({k: result[k] for k in ("ppo/optimizer_steps", "ppo/skipped", "ppo/approx_kl")})
    if ranks is None or ranks.is_main:
        out.write_text(json.dumps({"seconds": seconds, "metrics": metrics,
                                   "local_transitions": 0 if batch is None else batch.size}))
    distributed.shutdown()


def run_setup(ranks: int, threads: int, batch_path: Path, size: str, repeats: int, workdir: Path) -> dict:
    """One set-up under torchrun; its timings, load averages and wall time."""
    out = workdir / f"ranks{ranks}_threads{threads}.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    load_before = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={ranks}", __file__, "--worker", str(batch_path), str(out), size,
                           str(repeats)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{ranks} rank(s) x {threads} thread(s) failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result.update({"ranks": ranks, "threads_per_rank": threads,
                   "median_s": statistics.median(result["seconds"]),
                   "min_s": min(result["seconds"]), "load_average_before": list(load_before),
                   "load_average_after": list(os.getloadavg()), "wall_s": time.perf_counter() - started})
    return result


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('' elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def main(argv: list[str] | None = None) -> int:
    """Collect the batch, time every set-up, write the JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        worker(Path(argv[1]), Path(argv[2]), argv[3], int(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--size", default="small", help="policy size preset (default: small)")
    parser.add_argument("--transitions", type=int, default=128, help="transitions in the batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed updates per set-up")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        batch_path = workdir / "batch.pt"
        started = time.perf_counter()
        collect_batch(args.size, args.transitions, batch_path)
        collect_s = time.perf_counter() - started
        setups = [run_setup(r, t, batch_path, args.size, args.repeats, workdir) for r, t in SETUPS]
    by_setup = {(s["ranks"], s["threads_per_rank"]): s["median_s"] for s in setups}
    report = {
        "what": "one PPO update (critic, 1 epoch, minibatches of 32) of the policy on a fixed batch; "
                "median seconds over the timed updates, after one untimed",
        "command": "nice -n 19 .venv/bin/python tools/experiments/scale_out_update.py " + " ".join(argv),
        "policy": {"size": args.size, "image_size": 128, "chunk_size": 8}, "transitions": args.transitions,
        "repeats": args.repeats, "backend": "gloo", "device": "cpu",
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "torch": torch.__version__,
                    "python": platform.python_version(), "gpu": torch.cuda.is_available()},
        "note": "the CPU is shared with other jobs (load averages recorded): indicative figures only",
        "collect_s": collect_s, "setups": setups,
        "speedup_2_ranks_vs_1_rank_1_thread": by_setup[(1, 1)] / by_setup[(2, 1)],
        "speedup_2_ranks_vs_1_rank_2_threads": by_setup[(1, 2)] / by_setup[(2, 1)],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    headline = {key: report[key] for key in ("speedup_2_ranks_vs_1_rank_1_thread",
                                             "speedup_2_ranks_vs_1_rank_2_threads")}
    for setup in setups:
        headline[f"{setup['ranks']}x{setup['threads_per_rank']}_median_s"] = round(setup["median_s"], 2)
    print(json.dumps(headline, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
