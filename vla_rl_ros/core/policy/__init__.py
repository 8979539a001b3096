"""The OpenVLA-architecture policy: model, checkpoint loading, batched decoding, LoRA, critic."""
from vla_rl_ros.core.policy.action_tokenizer import ActionTokenizer, compute_norm_stats
from vla_rl_ros.core.policy.config import PolicyConfig
from vla_rl_ros.core.policy.policy import DecodeOutput, EvalOutput, VLAPolicy

__all__ = ["VLAPolicy", "ActionTokenizer", "DecodeOutput", "EvalOutput", "PolicyConfig", "compute_norm_stats"]
