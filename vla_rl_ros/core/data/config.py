"""Configuration of demonstration recording and of imitation (SFT)."""
from __future__ import annotations

from dataclasses import dataclass

from vla_rl_ros.core.config_io import check


@dataclass
class DemosConfig:
    """What ``vla-rl demos`` records and where."""

    output_dir: str = "data/demos/default"
    """Directory of the episode bags and their index.json."""
    episodes_per_task: int = 0
    """Training init states tried per task (ids 0..N-1); 0 = all of env.num_train_init_states.
    All 40 x 3 default tasks record in about 20 min on a 2-core CPU with rendering."""
    retry_failed: bool = False
    """On a rerun, try again the init states whose expert episode failed before."""
    action_noise: float = 0.1
    """Std of Gaussian noise added to the arm part of the actions the simulator executes while
    the recorded labels stay the expert's (DART): the demos then show recoveries from drift.
    0.1 keeps the expert at 100 % on the default tasks; 0.2 drops it to about 92 %, 0.3 to 33 %."""
    fresh_layouts_per_task: int = 0
    """Demonstrations per task on fresh training layouts (ids 1000, 1001, ...), after the fixed
    init states. Held-out evaluation is mostly fresh held-out layouts; the 40 fixed init states
    alone leave the object placements it meets unseen. Recorded with ``vla-rl demos``."""
    passes: int = 1
    """Expert episodes per (task, init state). Pass p > 0 replays the same scene with another
    action-noise stream (so it needs action_noise > 0 to differ from pass 0); bags of pass p > 0
    are named ``..._pass{p}``. More passes = more demonstrations without new init states."""

    def __post_init__(self) -> None:
        check(bool(self.output_dir), "demos.output_dir", self.output_dir, "must not be empty")
        check(self.episodes_per_task >= 0, "demos.episodes_per_task", self.episodes_per_task, "must be >= 0")
        check(0.0 <= self.action_noise <= 1.0, "demos.action_noise", self.action_noise, "in [0, 1]")
        check(self.passes >= 1, "demos.passes", self.passes, "must be >= 1")
        check(self.fresh_layouts_per_task >= 0, "demos.fresh_layouts_per_task", self.fresh_layouts_per_task,
              "must be >= 0")


@dataclass
class SFTConfig:
    """Imitation of the demonstrations by the VLA (cross-entropy over action tokens)."""

    demo_dir: str = "data/demos/default"
    """Recorded demonstrations (output of ``vla-rl demos``)."""
    output_dir: str = "runs/sft"
    """Checkpoints, TensorBoard logs and evaluation results."""
    steps: int = 2500
    """Optimiser steps (the default set: 2500 x batch 32 is about 6 passes over the 13,783 demo frames,
    16 min with 2 threads on an idle 2-core machine; measured 7/30 held out, docs/envs.md)."""
    batch_size: int = 32
    """Frames per optimiser step."""
    learning_rate: float = 5e-4
    """Peak AdamW learning rate (linear warm-up, cosine decay)."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    checkpoint_every: int = 250
    """Save a resumable checkpoint every N steps (and at the end)."""
    eval_every: int = 0
    """Held-out evaluation every N steps during training; 0 = only at the end."""
    eval_episodes_per_task: int = 10
    """Held-out episodes per task for each evaluation during and after training (10 = all held-out)."""
    log_every: int = 10
    """TensorBoard scalars every N steps."""
    seed: int = 0
    """Seed of data order and initialisation."""
    torch_threads: int = 1
    """torch intra-op threads; 0 = torch's default. 1 is fastest on a shared 2-core CPU (measured:
    0.8 s vs 30+ s per step for the small model when other processes compete for the cores)."""

    def __post_init__(self) -> None:
        check(self.steps >= 0, "sft.steps", self.steps, "must be >= 0")
        check(self.batch_size >= 1, "sft.batch_size", self.batch_size, "must be >= 1")
        check(self.learning_rate > 0, "sft.learning_rate", self.learning_rate, "must be > 0")
        check(self.warmup_steps >= 0, "sft.warmup_steps", self.warmup_steps, "must be >= 0")
        check(self.grad_clip > 0, "sft.grad_clip", self.grad_clip, "must be > 0")
        check(self.checkpoint_every >= 1, "sft.checkpoint_every", self.checkpoint_every, "must be >= 1")
        check(self.eval_every >= 0, "sft.eval_every", self.eval_every, "must be >= 0")
        check(self.eval_episodes_per_task >= 0, "sft.eval_episodes_per_task", self.eval_episodes_per_task,
              "must be >= 0")
        check(self.log_every >= 1, "sft.log_every", self.log_every, "must be >= 1")
        check(self.torch_threads >= 0, "sft.torch_threads", self.torch_threads, "must be >= 0")
