"""Imitation (SFT) of the VLA on scripted-expert demonstrations: cross-entropy over action tokens.

Layout of ``sft.output_dir``::

    checkpoint/policy/        last resumable checkpoint (model directory, VLAPolicy.load-able)
    checkpoint/trainer.pt     optimiser, step, RNG states
    policy/                   final model (what ``vla-rl eval`` and RL start from)
    tb/                       TensorBoard logs (sft/loss, sft/lr, sft/grad_norm, eval/success_rate)
    eval_step<N>.json         held-out evaluations during and after training
    sft_result.json           summary: steps, wall time, data size, final evaluation

A rerun with the same output directory resumes from ``checkpoint/`` (interrupted training loses
at most ``sft.checkpoint_every`` steps).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from vla_rl_ros.core.config import ExperimentConfig
from vla_rl_ros.core.policy.model_dir import commit_directory

CHECKPOINT_DIR, FINAL_DIR, TRAINER_FILE = "checkpoint", "policy", "trainer.pt"


def learning_rate_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to ``peak`` then cosine decay to 10 % of it at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def random_shift(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Shift each image by up to ``pad`` pixels (edge padding).

    Cheap augmentation that makes behaviour cloning less brittle to small visual differences.
    """
    count, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.empty_like(images)
    offsets = rng.integers(0, 2 * pad + 1, size=(count, 2))
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, dy:dy + height, dx:dx + width]
    return out


def _save_checkpoint(directory: Path, policy, optimizer, step: int, rng: np.random.Generator) -> None:
    target = directory / CHECKPOINT_DIR
    staging = directory / (CHECKPOINT_DIR + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    policy.save(str(staging / "policy"))
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state()}, staging / TRAINER_FILE)
    commit_directory(staging, target)  # the previous checkpoint stays until the new one is complete


def train_sft(cfg: ExperimentConfig, progress: bool = True, max_steps: int | None = None) -> dict:
    """Train (or resume training) the policy on ``cfg.sft.demo_dir``; returns the result summary.

    ``max_steps`` stops early after that many steps in this call (tests, interruption drills),
    leaving a resumable checkpoint.
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from vla_rl_ros.core.data.dataset import DemoDataset
    from vla_rl_ros.core.policy import VLAPolicy
    sft = cfg.sft
    output = Path(sft.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if sft.torch_threads:
        torch.set_num_threads(sft.torch_threads)
    # Only training contexts (init states and layouts): held-out ones are for evaluation, even if
    # a bag exists.
    dataset = DemoDataset(sft.demo_dir, task_ids=list(cfg.env.task_ids),
                          num_train_init_states=cfg.env.num_train_init_states)
    norm_stats = dataset.norm_stats(cfg.env.suite)
    checkpoint = output / CHECKPOINT_DIR
    rng = np.random.default_rng(sft.seed)
    torch.manual_seed(sft.seed)
    if (checkpoint / TRAINER_FILE).is_file():
        policy = VLAPolicy.load(str(checkpoint / "policy"), cfg.policy)
        state = torch.load(checkpoint / TRAINER_FILE, weights_only=True)  # no pickled code runs
        start_step = int(state["step"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
    else:
        policy = VLAPolicy.create(cfg.policy, None, norm_stats)
        state, start_step = None, 0
    parameters = policy.sft_parameters(full=True)
    optimizer = torch.optim.AdamW(parameters, lr=sft.learning_rate, weight_decay=sft.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    writer = SummaryWriter(str(output / "tb"))
    # Row t's label is the chunk the policy should emit at frame t: K actions from t on.
    tokens_all = policy.chunk_tokens(dataset.action_chunks(policy.chunk_size))
    end_step = sft.steps if max_steps is None else min(sft.steps, start_step + max_steps)
    bar = tqdm(total=sft.steps, initial=start_step, desc="sft", unit="step", disable=not progress)
    started, losses = time.time(), []
    policy.model.train()
    for step in range(start_step, end_step):
        lr = learning_rate_at(step, sft.learning_rate, sft.warmup_steps, sft.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = rng.integers(0, len(dataset), size=sft.batch_size)
        images = random_shift(dataset.images[batch], rng)
        instructions = [dataset.instruction_of_episode[e] for e in dataset.episode_ids[batch]]
        loss = policy.sft_loss(images, instructions, torch.from_numpy(tokens_all[batch]),
                               proprio=dataset.proprio[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, sft.grad_clip))
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        done = step + 1
        if done % sft.log_every == 0 or done == end_step:
            writer.add_scalar("sft/loss", float(np.mean(losses[-sft.log_every:])), done)
            writer.add_scalar("sft/lr", lr, done)
            writer.add_scalar("sft/grad_norm", grad_norm, done)
        if done % sft.checkpoint_every == 0 or done == end_step:
            _save_checkpoint(output, policy, optimizer, done, rng)
        if sft.eval_every and done % sft.eval_every == 0 and done < sft.steps:
            _evaluate(policy, cfg, output, done, writer, progress)
            policy.model.train()
    bar.close()
    result = dict(steps_done=end_step, steps=sft.steps, resumed_from=start_step,
                  wall_s_this_run=round(time.time() - started, 1), demo_episodes=len(dataset.episodes),
                  demo_frames=len(dataset), final_loss=float(np.mean(losses[-20:])) if losses else None,
                  norm_stats=norm_stats)
    if end_step >= sft.steps:
        policy.model.eval()
        policy.save(str(output / FINAL_DIR))
        result["policy_dir"] = str(output / FINAL_DIR)
        if sft.eval_episodes_per_task:
            result["eval"] = _evaluate(policy, cfg, output, end_step, writer, progress)
        (output / "sft_result.json").write_text(json.dumps(result, indent=1))
    writer.close()
    return result


def _evaluate(policy, cfg: ExperimentConfig, output: Path, step: int, writer, progress: bool) -> dict:
    from vla_rl_ros.core.evaluation import evaluate_policy
    policy.model.eval()
    with torch.no_grad():
        result = evaluate_policy(policy, cfg.env, seeds=[cfg.sft.seed],
                                 episodes_per_task=cfg.sft.eval_episodes_per_task, progress=progress)
    (output / f"eval_step{step}.json").write_text(json.dumps(result, indent=1))
    writer.add_scalar("eval/success_rate", result["overall"]["success_rate"], step)
    for task, entry in result["per_task"].items():
        writer.add_scalar(f"eval/success_rate_task{task}", entry["success_rate"], step)
    return {k: result[k] for k in ("overall", "per_task", "wall_s", "episodes_per_hour")}
