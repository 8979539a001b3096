"""Configuration of the VLA-RL learning core: PPO, critic warm-up, PRM rewards, curriculum."""
from __future__ import annotations

from dataclasses import dataclass

from vla_rl_ros.core.config_io import check


@dataclass
class PPOConfig:
    """Trajectory-level PPO over action tokens (defaults follow the VLA-RL public scripts)."""

    gamma: float = 0.99
    """Discount per control step."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO ratio clip."""
    value_clip_range: float = 0.2
    """Clip of the value update around the rollout value; 0 disables value clipping."""
    kl_coef: float = 0.01
    """Weight of the KL penalty to the reference policy (LoRA adapters disabled)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight."""
    value_coef: float = 0.5
    """Weight of the value loss."""
    target_kl: float = 0.0
    """Stop the epoch early when approx-KL exceeds this; 0 disables."""
    policy_lr: float = 5e-5
    """Learning rate of the LoRA adapters."""
    value_lr: float = 5e-4
    """Learning rate of the value head."""
    epochs: int = 1
    """Passes over each iteration's rollouts."""
    minibatch_size: int = 32
    """Transitions per minibatch."""
    grad_accum_steps: int = 1
    """Minibatches accumulated before an optimizer step."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    critic_warmup_iters: int = 5
    """First iterations update only the value head (VLA-RL: 5)."""
    per_token_ratio: bool = False
    """Clip the ratio per action token instead of on the summed log-prob of the 7 tokens."""
    value_trunk_grad: bool = False
    """Let the value loss also train the shared trunk's LoRA adapters (default: the value head only)."""
    advantage_estimator: str = "loo"
    """'loo' (leave-one-out baseline within each group of ``train.group_size`` rollouts of one
    context, RIPT-VLA), 'grpo' (group-normalised, SimpleVLA-RL/RLinf) or 'critic' (VLA-RL: value
    head, GAE, critic warm-up). The group estimators are the default: with a 0/1 reward and a few
    hundred episodes, a from-scratch critic is mostly noise, while a group comparison is exact
    (../shared/notes/field-2026-12.md). The critic, its warm-up and value loss act only with 'critic'."""
    behaviour_correction: str = "none"
    """'decoupled': clip the ratio around the learner's weights at the start of the update and weight
    each step by min(pi_prox / pi_behaviour, ``behaviour_weight_cap``) (decoupled PPO), for
    episodes decoded by older policy versions, as in the graph, where rollouts go on while the
    learner trains (one extra no-grad pass over the batch). 'none': the classic ratio against the
    recorded log-probs, exact for ``vla-rl train``'s on-policy batches."""
    behaviour_weight_cap: float = 2.0
    """Upper bound of the decoupled behaviour weight (bounds its variance)."""

    def __post_init__(self) -> None:
        check(0.0 < self.gamma <= 1.0, "ppo.gamma", self.gamma, "in (0, 1]")
        check(0.0 <= self.gae_lambda <= 1.0, "ppo.gae_lambda", self.gae_lambda, "in [0, 1]")
        check(self.clip_range > 0, "ppo.clip_range", self.clip_range, "must be > 0")
        check(self.value_clip_range >= 0, "ppo.value_clip_range", self.value_clip_range, "must be >= 0")
        check(self.kl_coef >= 0, "ppo.kl_coef", self.kl_coef, "must be >= 0")
        check(self.entropy_coef >= 0, "ppo.entropy_coef", self.entropy_coef, "must be >= 0")
        check(self.target_kl >= 0, "ppo.target_kl", self.target_kl, "must be >= 0")
        check(self.policy_lr > 0, "ppo.policy_lr", self.policy_lr, "must be > 0")
        check(self.value_lr > 0, "ppo.value_lr", self.value_lr, "must be > 0")
        check(self.epochs >= 1, "ppo.epochs", self.epochs, "must be >= 1")
        check(self.minibatch_size >= 1, "ppo.minibatch_size", self.minibatch_size, "must be >= 1")
        check(self.grad_accum_steps >= 1, "ppo.grad_accum_steps", self.grad_accum_steps, "must be >= 1")
        check(self.max_grad_norm > 0, "ppo.max_grad_norm", self.max_grad_norm, "must be > 0")
        check(self.critic_warmup_iters >= 0, "ppo.critic_warmup_iters", self.critic_warmup_iters, ">= 0")
        check(self.advantage_estimator in ("loo", "grpo", "critic"), "ppo.advantage_estimator",
              self.advantage_estimator, "'loo', 'grpo' or 'critic'")
        check(self.behaviour_correction in ("none", "decoupled"), "ppo.behaviour_correction",
              self.behaviour_correction, "'none' or 'decoupled'")
        check(self.behaviour_weight_cap >= 1.0, "ppo.behaviour_weight_cap", self.behaviour_weight_cap, ">= 1")

    @property
    def uses_critic(self) -> bool:
        """True when advantages come from the value head (GAE), False for group estimators."""
        return self.advantage_estimator == "critic"


@dataclass
class RewardConfig:
    """How the sparse success reward and the PRM's dense progress reward combine."""

    success_weight: float = 1.0
    """Reward on the step where the task succeeds."""
    prm_weight: float = 0.1
    """Weight of the PRM's per-step progress reward; 0 disables the PRM (ablation)."""
    prm_path: str = ""
    """Directory of a trained PRM; '' = no PRM (outcome-only reward)."""
    prm_epochs: int = 5
    """``vla-rl train-prm``: passes over the labelled steps."""
    prm_lr: float = 1e-3
    """``vla-rl train-prm``: learning rate of the PRM's adapters and progress head."""
    prm_batch_size: int = 32
    """``vla-rl train-prm``: steps per PRM minibatch."""
    prm_rollout_episodes: int = 32
    """``vla-rl train-prm``: policy rollouts collected (on training init states) besides the demos."""
    prm_heldout_fraction: float = 0.25
    """``vla-rl train-prm``: share of trajectories held out to measure AUC and rank correlation."""

    def __post_init__(self) -> None:
        check(self.success_weight >= 0, "reward.success_weight", self.success_weight, "must be >= 0")
        check(self.prm_weight >= 0, "reward.prm_weight", self.prm_weight, "must be >= 0")
        check(self.prm_epochs >= 1, "reward.prm_epochs", self.prm_epochs, "must be >= 1")
        check(self.prm_lr > 0, "reward.prm_lr", self.prm_lr, "must be > 0")
        check(self.prm_batch_size >= 1, "reward.prm_batch_size", self.prm_batch_size, "must be >= 1")
        check(self.prm_rollout_episodes >= 0, "reward.prm_rollout_episodes", self.prm_rollout_episodes,
              ">= 0")
        check(0.0 <= self.prm_heldout_fraction < 1.0, "reward.prm_heldout_fraction",
              self.prm_heldout_fraction, "in [0, 1)")


@dataclass
class CurriculumConfig:
    """Task sampling by running success rate, favouring tasks near 50 % success."""

    enabled: bool = True
    """False samples tasks uniformly (ablation)."""
    target_success: float = 0.5
    """Success rate the sampler favours."""
    temperature: float = 0.2
    """Softness of the preference; smaller concentrates on tasks nearest the target."""
    floor: float = 0.05
    """Minimum share of sampling probability kept for every task, so none starves."""
    ema: float = 0.2
    """Weight of the newest episode in the running success estimate."""

    def __post_init__(self) -> None:
        check(0.0 <= self.target_success <= 1.0, "curriculum.target_success", self.target_success,
              "in [0, 1]")
        check(self.temperature > 0, "curriculum.temperature", self.temperature, "must be > 0")
        check(0.0 <= self.floor < 1.0, "curriculum.floor", self.floor, "in [0, 1)")
        check(0.0 < self.ema <= 1.0, "curriculum.ema", self.ema, "in (0, 1]")
