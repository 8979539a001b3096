"""The whole configuration tree: one dataclass per section, loaded from one YAML.

The shipped ``config/*.yaml`` files are ROS 2 params files. Every node reads the shared
``/**: ros__parameters:`` block (plus its own ``<node_name>: ros__parameters:`` block, which
wins); the ROS-free command line reads the same file and applies ``--set section.key=value``
overrides on top. Both end in :class:`ExperimentConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from vla_rl_ros.core.config_io import (ConfigError, check, from_dict, merge, parse_overrides,
                                       read_yaml, to_dict)
from vla_rl_ros.core.data.config import DemosConfig, SFTConfig
from vla_rl_ros.core.envs.config import EnvConfig
from vla_rl_ros.core.policy.config import PolicyConfig
from vla_rl_ros.core.rl.config import CurriculumConfig, PPOConfig, RewardConfig
from vla_rl_ros.core.safety import SafetyConfig


@dataclass
class TrainConfig:
    """Outer loop of ``vla-rl train`` and of the learner node."""

    iterations: int = 20
    """PPO iterations (rollout + update) to run."""
    episodes_per_iter: int = 16
    """Episodes collected per iteration across all environments, in groups of ``group_size`` per
    context (the last group is cut short when ``group_size`` does not divide it)."""
    group_size: int = 8
    """Rollouts per context (task + layout) in an iteration (the group the 'loo'/'grpo' estimators
    compare within; 8 in RIPT-VLA, SimpleVLA-RL and RLinf). 1 = every episode its own context."""
    skip_solved_streak: int = 2
    """A context whose last N groups all succeeded is not drawn again (RIPT-VLA); 0 = never skip."""
    fresh_layout_fraction: float = 0.0
    """Share of training contexts drawn as fresh random layouts (the scene's own placement sampler,
    seeded) instead of the fixed training init states; held-out states and layouts are never drawn."""
    eval_every: int = 5
    """Evaluate on held-out init states every N iterations; 0 disables."""
    eval_episodes: int = 10
    """Held-out episodes per evaluation: the held-out init states first (10 per task), then held-out
    fresh layouts, tasks round-robin (150 on 3 tasks resolves about +15 points at the start's rate)."""
    eval_sample: bool = False
    """Held-out evaluations sample actions at ``policy.temperature`` (the distribution PPO
    optimises) instead of decoding greedily. A small policy's flat action heads make its argmax
    drift under PPO much more than its sampled behaviour (docs/rl.md), so both are worth measuring.
    Every evaluation restarts the same seeded sampling stream."""
    output_dir: str = "runs/default"
    """Where checkpoints, adapters, bags, logs and results go."""
    seed: int = 0
    """Seed of the whole run (torch, numpy, sampling)."""
    torch_threads: int = 0
    """torch intra-op threads; 0 = torch's default."""
    time_budget_s: float = 0.0
    """Wall-clock budget of the whole run (resumed runs included): no iteration starts after it
    is spent, then the final evaluation runs; 0 = no budget (``train.iterations`` only)."""

    def __post_init__(self) -> None:
        check(self.time_budget_s >= 0, "train.time_budget_s", self.time_budget_s, "must be >= 0")
        check(self.iterations >= 0, "train.iterations", self.iterations, "must be >= 0")
        check(self.episodes_per_iter >= 1, "train.episodes_per_iter", self.episodes_per_iter, ">= 1")
        check(self.group_size >= 1, "train.group_size", self.group_size, ">= 1")
        check(self.skip_solved_streak >= 0, "train.skip_solved_streak", self.skip_solved_streak, ">= 0")
        check(0.0 <= self.fresh_layout_fraction <= 1.0, "train.fresh_layout_fraction",
              self.fresh_layout_fraction, "in [0, 1]")
        check(self.eval_every >= 0, "train.eval_every", self.eval_every, "must be >= 0")
        check(self.eval_episodes >= 1, "train.eval_episodes", self.eval_episodes, "must be >= 1")
        check(bool(self.output_dir), "train.output_dir", self.output_dir, "must not be empty")
        check(self.torch_threads >= 0, "train.torch_threads", self.torch_threads, "must be >= 0")


@dataclass
class GraphConfig:
    """ROS graph plumbing shared by the nodes (topics are relative so namespaces work)."""

    viz_rate_hz: float = 5.0
    """Rate cap of per-environment camera and joint-state topics for visualisation."""
    action_timeout_s: float = 10.0
    """A bridge waiting longer than this for actions reports the policy as missing."""
    bag_dir: str = "runs/default/bags"
    """Where the recorder writes trajectory bags (MCAP)."""
    lockstep: bool = False
    """Rollouts in lockstep with the learner, as in ``vla-rl train``: each policy version runs
    one plan of ``train.episodes_per_iter`` episodes (whole groups, every turn decoded by that
    version) and an environment with nothing assigned waits for the next plan. false = streaming:
    environments never wait (an unassigned one draws a training task), so the learner's batches
    mix the versions of the last ``max_policy_lag`` updates; it overlaps rollouts with updates,
    which pays off when they do not share the same few cores."""

    def __post_init__(self) -> None:
        check(self.viz_rate_hz > 0, "graph.viz_rate_hz", self.viz_rate_hz, "must be > 0")
        check(self.action_timeout_s > 0, "graph.action_timeout_s", self.action_timeout_s, "must be > 0")


@dataclass
class ExperimentConfig:
    """Every section; a YAML or ROS params file may set any subset of it."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    demos: DemosConfig = field(default_factory=DemosConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)


SHARED_SECTION = "/**"


def experiment_dict_from_params(yaml_data: Mapping[str, Any], node_name: str | None = None) -> dict:
    """Nested experiment dict from a ROS params YAML: the shared block, then the node's own."""
    merged: dict[str, Any] = {}
    sections = [SHARED_SECTION] + ([node_name, "/" + node_name] if node_name else [])
    found = False
    for key in sections:
        block = yaml_data.get(key)
        if block is None:
            continue
        if not isinstance(block, Mapping) or "ros__parameters" not in block:
            raise ConfigError(f"section {key!r} must hold a 'ros__parameters:' mapping")
        merged = merge(merged, block["ros__parameters"] or {})
        found = True
    if not found and yaml_data:
        raise ConfigError(f"no '/**' or '{node_name}' ros__parameters section in params file "
                          f"(sections: {', '.join(map(str, yaml_data))})")
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                node_name: str | None = None) -> ExperimentConfig:
    """Defaults <- params YAML (shared + node block) <- ``KEY=VALUE`` overrides, validated."""
    data: dict[str, Any] = {}
    if path:
        data = experiment_dict_from_params(read_yaml(path), node_name)
    data = merge(data, parse_overrides(overrides))
    return from_dict(ExperimentConfig, data)


def dump_params_yaml(cfg: ExperimentConfig) -> dict[str, Any]:
    """The ``/**: ros__parameters:`` mapping that reproduces ``cfg``."""
    return {SHARED_SECTION: {"ros__parameters": to_dict(cfg)}}
