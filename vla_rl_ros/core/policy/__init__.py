"""The OpenVLA-architecture policy: model, checkpoint loading, batched decoding, LoRA, critic.

Attributes load lazily: importing ``vla_rl_ros.core.policy.config`` (as every configuration
load does) must not pay for torch, transformers and peft, which take seconds to import.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ActionTokenizer": "vla_rl_ros.core.policy.action_tokenizer",
    "compute_norm_stats": "vla_rl_ros.core.policy.action_tokenizer",
    "PolicyConfig": "vla_rl_ros.core.policy.config",
    "DecodeOutput": "vla_rl_ros.core.policy.policy",
    "EvalOutput": "vla_rl_ros.core.policy.policy",
    "VLAPolicy": "vla_rl_ros.core.policy.policy",
    "ChunkSizeError": "vla_rl_ros.core.policy.policy",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the module that defines ``name`` on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
