"""Shapes of an OpenVLA-architecture model: the two ViTs, the projector and the Llama LM.

One :class:`VLAArchitecture` describes both the real ``openvla/openvla-7b`` layout (read from its
``config.json`` and the timm model ids it names) and the small presets that train on a CPU.
Only shapes live here; weights live in :mod:`.model` and :mod:`.checkpoint`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from vla_rl_ros.core.config_io import ConfigError, check

DINO_MEAN = (0.485, 0.456, 0.406)
DINO_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
ACTION_TOKENS_PER_STEP = 7
"""OpenVLA: one token per action dimension (end-effector delta xyz, delta rotation, gripper)."""
CHUNK_DECODINGS = ("autoregressive", "parallel")


@dataclass
class ViTSpec:
    """A timm-layout ViT as OpenVLA uses it (features of the second-to-last block)."""

    width: int
    depth: int
    """Blocks in the checkpoint; the last one is unused (features come from block depth-2)."""
    heads: int
    mlp_dim: int
    patch: int
    image_size: int
    class_token: bool
    registers: int
    layer_scale: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        check(self.width % self.heads == 0, "vit.width", self.width, f"divisible by heads={self.heads}")
        check(self.depth >= 2, "vit.depth", self.depth, ">= 2 (the last block is unused)")
        check(self.image_size % self.patch == 0, "vit.image_size", self.image_size,
              f"multiple of patch={self.patch}")
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)

    @property
    def num_patches(self) -> int:
        """Patch tokens per image."""
        return (self.image_size // self.patch) ** 2


@dataclass
class VLAArchitecture:
    """Everything needed to build the module tree before any weight is read."""

    featurizer: ViTSpec
    fused_featurizer: ViTSpec
    llm: dict[str, Any]
    """``LlamaConfig`` keyword arguments (hidden_size, num_hidden_layers, vocab_size, ...)."""
    action_vocab_end: int
    """One past the last action token id: action ids are [end - 256, end)."""
    n_action_bins: int = 256
    prompt_suffix_ids: tuple[int, ...] = ()
    """Ids appended to the prompt when not already last (OpenVLA: the SentencePiece space 29871)."""
    pad_token_id: int = 0
    eos_token_id: int = 2
    bos_token_id: int = 1
    state_prompt: bool = False
    """The prompt ends with the robot state as words (gripper opening, hand height; see
    ``processor.state_words``): such a model needs proprio with every observation. False for
    openvla checkpoints, whose config.json has no such key."""
    chunk_size: int = 1
    """Actions per policy call (an action chunk). 1 is OpenVLA's one action per call; a model
    trained with K actions per call only runs with K (``ChunkSizeError`` otherwise)."""
    chunk_decoding: str = "autoregressive"
    """How the K x 7 action tokens of a chunk are produced: 'autoregressive' (one token after the
    other, OpenVLA's rule) or 'parallel' (one forward pass over K x 7 action slots, each slot
    predicting its token independently given the observation, as OpenVLA-OFT)."""

    def __post_init__(self) -> None:
        check(self.featurizer.image_size == self.fused_featurizer.image_size, "fused_featurizer.image_size",
              self.fused_featurizer.image_size, f"equal to featurizer.image_size "
              f"{self.featurizer.image_size}")
        check(self.featurizer.num_patches == self.fused_featurizer.num_patches, "fused_featurizer.patch",
              self.fused_featurizer.patch, "must give as many patches as the featurizer")
        vocab = int(self.llm["vocab_size"])
        check(self.n_action_bins <= self.action_vocab_end <= vocab, "action_vocab_end", self.action_vocab_end,
              f"between n_action_bins={self.n_action_bins} and vocab_size={vocab}")
        self.prompt_suffix_ids = tuple(int(i) for i in self.prompt_suffix_ids)
        check(self.chunk_size >= 1, "chunk_size", self.chunk_size, "must be >= 1")
        check(self.chunk_decoding in CHUNK_DECODINGS, "chunk_decoding", self.chunk_decoding,
              f"one of {', '.join(CHUNK_DECODINGS)}")
        if self.chunk_decoding == "parallel":
            # The slot queries are the action tokens' input embeddings (see decoding.slot_ids).
            check(self.chunk_size * ACTION_TOKENS_PER_STEP <= self.n_action_bins, "chunk_size",
                  self.chunk_size, f"at most {self.n_action_bins // ACTION_TOKENS_PER_STEP} for parallel "
                  "decoding (one action-token embedding per slot)")

    @property
    def tokens_per_call(self) -> int:
        """Action tokens one policy call emits: 7 per action, ``chunk_size`` actions."""
        return ACTION_TOKENS_PER_STEP * self.chunk_size

    @property
    def image_size(self) -> int:
        """Input resolution (both backbones share it)."""
        return self.featurizer.image_size

    @property
    def vision_dim(self) -> int:
        """Channels of the fused patch features (DINO width + SigLIP width)."""
        return self.featurizer.width + self.fused_featurizer.width

    @property
    def hidden_size(self) -> int:
        """Width of the language model."""
        return int(self.llm["hidden_size"])

    @property
    def action_vocab_start(self) -> int:
        """First action token id."""
        return self.action_vocab_end - self.n_action_bins

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (stored in our ``config.json`` under ``vla_rl_ros_architecture``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VLAArchitecture":
        """Inverse of :meth:`to_dict`, with a clear error for a malformed entry."""
        try:
            data = dict(data)
            data["featurizer"] = ViTSpec(**data["featurizer"])
            data["fused_featurizer"] = ViTSpec(**data["fused_featurizer"])
            return cls(**data)
        except (KeyError, TypeError) as err:
            raise ConfigError(f"vla_rl_ros_architecture in config.json is malformed: {err}") from None


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value`` (embedding tables padded like OpenVLA)."""
    return -(-value // multiple) * multiple


def dino_spec(width: int, depth: int, heads: int, mlp_dim: int, patch: int, image_size: int) -> ViTSpec:
    """DINOv2-style featurizer: class token + 4 registers, LayerScale."""
    return ViTSpec(width, depth, heads, mlp_dim, patch, image_size, class_token=True, registers=4,
                   layer_scale=True, mean=DINO_MEAN, std=DINO_STD)


def siglip_spec(width: int, depth: int, heads: int, mlp_dim: int, patch: int, image_size: int) -> ViTSpec:
    """SigLIP-style fused featurizer: no prefix tokens, no LayerScale."""
    return ViTSpec(width, depth, heads, mlp_dim, patch, image_size, class_token=False, registers=0,
                   layer_scale=False, mean=SIGLIP_MEAN, std=SIGLIP_STD)


# The timm ids named in an openvla checkpoint's config.json, with the shapes they imply at 224 px.
KNOWN_TIMM_VITS = {
    "vit_large_patch14_reg4_dinov2.lvd142m": lambda size: dino_spec(1024, 24, 16, 4096, 14, size),
    "vit_so400m_patch14_siglip_224": lambda size: siglip_spec(1152, 27, 16, 4304, 14, size),
}

# ``transformers.LlamaConfig()`` defaults (unchanged from 4.40, which wrote openvla-7b, to 5.x).
# An openvla ``config.json`` stores ``text_config`` as a diff against exactly these, and the original
# rebuilds it with ``CONFIG_MAPPING["llama"](**text_config)``: so openvla-7b runs with RMSNorm eps 1e-6
# and max_position_embeddings 2048, not Llama-2-7B's own 1e-5 and 4096 (which match no computation
# the original does). The shapes happen to be Llama-2-7B's.
LLAMA_CONFIG_DEFAULTS = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048,
                             rms_norm_eps=1e-6, rope_theta=10000.0, vocab_size=32000, bos_token_id=1,
                             eos_token_id=2, pad_token_id=None, tie_word_embeddings=False, hidden_act="silu",
                             attention_bias=False, mlp_bias=False)
TEXT_CONFIG_METADATA = ("model_type", "torch_dtype", "dtype", "_name_or_path", "architectures",
                        "transformers_version", "use_cache", "initializer_range", "pretraining_tp",
                        "attention_dropout", "return_dict", "output_hidden_states", "output_attentions")
"""``text_config`` keys that do not change what the language model computes at inference."""


def llama_from_text_config(text_config: Mapping[str, Any]) -> dict[str, Any]:
    """``LlamaConfig`` kwargs of an openvla ``text_config`` (a diff against ``LlamaConfig()``).

    Keys that would change the computation and are not supported (rope scaling, another head
    size, an unknown key) are refused by name rather than silently ignored.
    """
    text = dict(text_config or {})
    if text.get("model_type", "llama") != "llama":
        raise ConfigError(f"config.json: text_config.model_type={text['model_type']!r}; only 'llama' "
                          "language models are supported")
    if text.get("rope_scaling") is not None:
        raise ConfigError(f"config.json: text_config.rope_scaling={text['rope_scaling']!r} is not "
                          "supported (openvla-7b has none)")
    if text.get("pretraining_tp", 1) != 1:
        raise ConfigError(f"config.json: text_config.pretraining_tp={text['pretraining_tp']!r} is not "
                          "supported (must be 1)")
    rope = dict(text.pop("rope_parameters", None) or {})  # how transformers 5.x writes rope_theta
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"config.json: text_config.rope_parameters={rope!r} is not supported")
    if "rope_theta" in rope:
        text.setdefault("rope_theta", rope["rope_theta"])
    unknown = sorted(k for k in text if k not in LLAMA_CONFIG_DEFAULTS and k not in TEXT_CONFIG_METADATA
                     and k not in ("rope_scaling", "head_dim"))
    if unknown:
        raise ConfigError(f"config.json: text_config keys {', '.join(unknown)} are not supported")
    llm = dict(LLAMA_CONFIG_DEFAULTS, **{k: v for k, v in text.items() if k in LLAMA_CONFIG_DEFAULTS})
    if llm["num_key_value_heads"] is None:  # LlamaConfig's rule
        llm["num_key_value_heads"] = llm["num_attention_heads"]
    head_dim = int(llm["hidden_size"]) // int(llm["num_attention_heads"])
    if text.get("head_dim") not in (None, head_dim):
        raise ConfigError(f"config.json: text_config.head_dim={text['head_dim']} is not hidden_size / "
                          f"num_attention_heads = {head_dim}; not supported")
    return llm


def small_llm(hidden: int, layers: int, heads: int, vocab_size: int, intermediate: int) -> dict[str, Any]:
    """LlamaConfig kwargs of a small LM with Llama-2 conventions (no tying, RMSNorm eps 1e-5)."""
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
                rms_norm_eps=1e-5, rope_theta=10000.0, vocab_size=vocab_size, bos_token_id=1,
                eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, hidden_act="silu")


def preset(size: str, image_size: int, vocab_size: int, state_prompt: bool = False, chunk_size: int = 1,
           chunk_decoding: str = "autoregressive") -> VLAArchitecture:
    """Named architecture: 'tiny' (tests), 'small' (CPU default), 'base', 'openvla-7b' (shape only).

    ``vocab_size`` is the tokenizer's size; its last 256 ids are the action tokens. The embedding
    table is padded to a multiple of 64 as in OpenVLA. ``state_prompt``, ``chunk_size`` and
    ``chunk_decoding``: see :class:`VLAArchitecture`.
    """
    padded = round_up(vocab_size, 64)
    if size == "openvla-7b":
        check(image_size == 224, "policy.image_size", image_size, "must be 224 for the openvla-7b shape")
        # The language-model config a real openvla-7b directory loads (see LLAMA_CONFIG_DEFAULTS).
        llm = llama_from_text_config({"vocab_size": round_up(max(vocab_size, 32001), 64),
                                      "pad_token_id": 32000})
        dino = KNOWN_TIMM_VITS["vit_large_patch14_reg4_dinov2.lvd142m"](image_size)
        sig = KNOWN_TIMM_VITS["vit_so400m_patch14_siglip_224"](image_size)
        return VLAArchitecture(dino, sig, llm, action_vocab_end=vocab_size, pad_token_id=32000,
                               state_prompt=state_prompt, chunk_size=chunk_size,
                               chunk_decoding=chunk_decoding)
    # (vit width, vit depth incl. the unused last block, heads, patch, llm hidden, layers, heads)
    # 'small' sits at the cheap end on purpose: image tokens dominate the cost of every step (decode,
    # SFT, PPO) on a CPU, and a 2-core laptop must train it by imitation in minutes to hours.
    shapes = {"tiny": (32, 3, 2, 16, 64, 2, 2), "small": (128, 3, 4, 16, 256, 2, 4),
              "base": (192, 5, 4, 16, 384, 4, 6)}
    check(size in shapes, "policy.size", size, f"one of {', '.join(list(shapes) + ['openvla-7b'])}")
    width, depth, vit_heads, patch, hidden, layers, heads = shapes[size]
    check(image_size % patch == 0, "policy.image_size", image_size, f"multiple of the patch size {patch}")
    return VLAArchitecture(
        featurizer=dino_spec(width, depth, vit_heads, 4 * width, patch, image_size),
        fused_featurizer=siglip_spec(width, depth, vit_heads, 4 * width, patch, image_size),
        llm=small_llm(hidden, layers, heads, padded, intermediate=int(hidden * 8 / 3) // 16 * 16),
        action_vocab_end=vocab_size, pad_token_id=0, state_prompt=state_prompt, chunk_size=chunk_size,
        chunk_decoding=chunk_decoding)


def from_openvla_config(cfg: Mapping[str, Any]) -> VLAArchitecture:
    """Architecture of an openvla checkpoint from its ``config.json`` (timm ids + ``text_config`` diff).

    ``prompt_suffix_ids`` is OpenVLA's hard-coded 29871 (Llama-2's '▁'); ``VLAPolicy.load`` replaces it
    with the directory's own tokenizer's '▁' id, which is 29871 for the real tokenizer.
    """
    if "vla_rl_ros_architecture" in cfg:
        return VLAArchitecture.from_dict(cfg["vla_rl_ros_architecture"])
    if not cfg.get("use_fused_vision_backbone", False):
        raise ConfigError("config.json: use_fused_vision_backbone is not true; only the fused "
                          "DINOv2+SigLIP backbone (dinosiglip) of openvla-7b is supported")
    ids = list(cfg.get("timm_model_ids") or [])
    unknown = [i for i in ids if i not in KNOWN_TIMM_VITS]
    if len(ids) != 2 or unknown:
        raise ConfigError(f"config.json: timm_model_ids={ids!r}; supported: {sorted(KNOWN_TIMM_VITS)}")
    image_size = int((cfg.get("image_sizes") or [224])[0])
    llm = llama_from_text_config(cfg.get("text_config") or {})
    pad_to = int(cfg.get("pad_to_multiple_of", 0) or 0)
    action_end = int(llm["vocab_size"]) - pad_to  # OpenVLA's ``self.vocab_size``: 32064 - 64
    return VLAArchitecture(KNOWN_TIMM_VITS[ids[0]](image_size), KNOWN_TIMM_VITS[ids[1]](image_size), llm,
                           action_vocab_end=action_end, n_action_bins=int(cfg.get("n_action_bins", 256)),
                           prompt_suffix_ids=(29871,), pad_token_id=int(cfg.get("pad_token_id", 32000)),
                           bos_token_id=int(llm["bos_token_id"]), eos_token_id=int(llm["eos_token_id"]))


__all__ = ["ViTSpec", "VLAArchitecture", "preset", "from_openvla_config", "llama_from_text_config",
           "KNOWN_TIMM_VITS", "LLAMA_CONFIG_DEFAULTS", "field"]
