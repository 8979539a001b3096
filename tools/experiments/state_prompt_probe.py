"""Experiment (not a test): does telling the small VLA its gripper opening and hand height fix SFT?

Diagnosis that motivates it (docs/envs.md): the image-only SFT policy confuses phases that look
alike from the agentview camera at 128 px. Offline on a training demo it outputs the LIFT action
(up, gripper closed) while the expert is still descending with an open gripper, and hovers over
the basket where the expert lowers, so closed-loop it carries an empty gripper to the basket.
The gripper opening and the hand height (both in the recorded proprio) separate those phases.

This probe appends them to the instruction as words ("... state gripper 8 height 27", cm),
trains SFT on the recorded demos exactly as ``vla-rl sft`` does otherwise, and evaluates on the
held-out init states with the same protocol. Nothing in the library changes; if it works, the
state prompt becomes a policy option used by every call site (SFT, eval, rollouts, nodes)::

    .venv/bin/python tools/experiments/state_prompt_probe.py --config config/train_sim.yaml \\
        --steps 3000 --out runs/probe_state_prompt
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for vla_rl_ros

STATE_VOCABULARY = "state gripper height " + " ".join(str(n) for n in range(61))


def state_words(proprio: np.ndarray) -> str:
    """Gripper opening and hand height in whole centimetres, as prompt words."""
    opening = int(np.clip(round((proprio[6] - proprio[7]) * 100), 0, 60))
    height = int(np.clip(round(proprio[2] * 100), 0, 60))
    return f"state gripper {opening} height {height}"


def with_state(instruction: str, proprio: np.ndarray) -> str:
    """The instruction the policy reads: the task, then the robot state words."""
    return f"{instruction} {state_words(proprio)}"


def train(cfg, steps: int, out: Path) -> "object":
    """SFT as in vla_rl_ros.core.sft (same optimiser, schedule, augmentation), state in the prompt."""
    from vla_rl_ros.core.data.dataset import DemoDataset
    from vla_rl_ros.core.envs.splits import train_init_states
    from vla_rl_ros.core.policy import VLAPolicy
    from vla_rl_ros.core.sft import learning_rate_at, random_shift
    sft = cfg.sft
    dataset = DemoDataset(sft.demo_dir, task_ids=list(cfg.env.task_ids),
                          init_state_ids=train_init_states(cfg.env.num_train_init_states))
    torch.manual_seed(sft.seed)
    rng = np.random.default_rng(sft.seed)
    policy = VLAPolicy.create(cfg.policy, dataset.instructions + [STATE_VOCABULARY],
                              dataset.norm_stats(cfg.env.suite))
    parameters = policy.sft_parameters(full=True)
    optimizer = torch.optim.AdamW(parameters, lr=sft.learning_rate, weight_decay=sft.weight_decay)
    tokens_all = policy.action_tokenizer.encode(dataset.actions)
    policy.model.train()
    started, losses = time.time(), []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, sft.learning_rate, sft.warmup_steps, steps)
        batch = rng.integers(0, len(dataset), size=sft.batch_size)
        texts = [with_state(dataset.instruction_of_episode[e], p)
                 for e, p in zip(dataset.episode_ids[batch], dataset.proprio[batch])]
        loss = policy.sft_loss(random_shift(dataset.images[batch], rng), texts,
                               torch.from_numpy(tokens_all[batch]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, sft.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 250 == 0:
            print(f"step {step + 1}: loss {np.mean(losses[-250:]):.3f} ({time.time() - started:.0f} s)",
                  flush=True)
    policy.model.eval()
    policy.save(str(out / "policy"))
    return policy, dict(steps=steps, wall_s=round(time.time() - started, 1), frames=len(dataset),
                        episodes=len(dataset.episodes), final_loss=float(np.mean(losses[-50:])))


def main() -> None:
    """Train (or reuse ``--out/policy``), evaluate held out, write ``--out/result.json``."""
    from vla_rl_ros.core.config import load_config
    from vla_rl_ros.core.evaluation import evaluate_policy
    from vla_rl_ros.core.policy import VLAPolicy
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default="runs/probe_state_prompt")
    parser.add_argument("--episodes-per-task", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "policy").is_dir():
        policy, training = VLAPolicy.load(str(out / "policy"), cfg.policy), {"reused": str(out / "policy")}
    else:
        policy, training = train(cfg, args.steps, out)

    def act(observations):  # greedy, like vla-rl eval
        images = np.stack([o.image for o in observations])
        texts = [with_state(o.instruction, o.proprio) for o in observations]
        with torch.no_grad():
            return policy.decode(images, texts, greedy=True).actions

    result = evaluate_policy(act, cfg.env, seeds=[cfg.sft.seed], episodes_per_task=args.episodes_per_task)
    summary = dict(training=training, overall=result["overall"], per_task=result["per_task"],
                   init_state_ids=result["init_state_ids"], wall_s=result["wall_s"])
    (out / "result.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
