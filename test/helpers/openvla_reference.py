"""An independent statement of what the original OpenVLA code does, the oracle of test_policy_openvla_layout.

Each function restates one step of ``openvla/openvla-7b``'s remote code with the libraries it uses
(transformers' ``LlamaForCausalLM`` and ``CONFIG_MAPPING``, PIL, SentencePiece), never with
vla_rl_ros code, so a test comparing the two fails when the product drifts from the original.
The constants are the tiny checkpoint's shapes that the test builds.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import LlamaForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from vla_rl_ros.core.policy import VLAPolicy
from vla_rl_ros.core.policy.processor import prompt_for

ROUNDED_DINO_MEAN = [0.484375, 0.455078125, 0.40625]   # what openvla-7b's preprocessor_config.json stores
ROUNDED_DINO_STD = [0.228515625, 0.2236328125, 0.224609375]
SP_VOCAB = 448               # pieces in the tiny SentencePiece model (Llama-2: 32000)
PADDED_VOCAB = 512           # + <PAD> (id 448), padded to a multiple of 64 (openvla-7b: 32064)
TEXT_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
               "num_attention_heads": 2, "num_key_value_heads": 2, "pad_token_id": SP_VOCAB,
               "torch_dtype": "bfloat16", "vocab_size": PADDED_VOCAB}
"""A diff against LlamaConfig(), like openvla-7b's (which only needs pad_token_id and vocab_size)."""


def reference_lm(weights: dict, **text_overrides) -> LlamaForCausalLM:
    """The original's language model: ``CONFIG_MAPPING["llama"](**text_config)`` + the checkpoint."""
    config = CONFIG_MAPPING["llama"](**{**TEXT_CONFIG, **text_overrides})
    config._attn_implementation = "sdpa"
    lm = LlamaForCausalLM(config).float().eval()
    state = {k[len("language_model."):]: v for k, v in weights.items() if k.startswith("language_model.")}
    missing, unexpected = lm.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    return lm


def reference_pixels(frame: np.ndarray, mean=ROUNDED_DINO_MEAN, std=ROUNDED_DINO_STD,
                     resample=Image.BICUBIC) -> torch.Tensor:
    """PrismaticImageProcessor.apply_transform: PIL resize to 32x32, /255, normalise, per backbone."""
    image = Image.fromarray(frame).convert("RGB")
    if image.size != (32, 32):
        image = image.resize((32, 32), resample)
    scaled = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div(255.0)
    dino = scaled.sub(torch.tensor(mean).view(3, 1, 1)).div(torch.tensor(std).view(3, 1, 1))
    siglip = scaled.sub(0.5).div(0.5)
    return torch.cat([dino, siglip])[None]


def reference_prompt_ids(sp, instruction: str) -> list[int]:
    """The original processor's ids (BOS + SentencePiece), then predict_action's '▁' if missing."""
    ids = [1] + list(sp.encode(prompt_for(instruction)))
    space = sp.piece_to_id("\u2581")
    return ids if ids[-1] == space else ids + [space]


def reference_inputs(policy: VLAPolicy, lm, sp, frame: np.ndarray, instruction: str) -> torch.Tensor:
    """inputs_embeds [1, T, H] of ``[BOS, patches, rest of the prompt]`` built from the references."""
    ids = torch.tensor([reference_prompt_ids(sp, instruction)])
    with torch.no_grad():
        patches = policy.model.embed_images(reference_pixels(frame))
        text = lm.get_input_embeddings()(ids)
    return torch.cat([text[:, :1], patches, text[:, 1:]], dim=1)


def reference_predict_action(policy, lm, sp, frame, instruction, stats):
    """OpenVLA's predict_action: greedy over the WHOLE vocabulary (no cache), then its action rule."""
    embeds = reference_inputs(policy, lm, sp, frame, instruction)
    tokens, logits_seen = [], []
    with torch.no_grad():
        for _ in range(7):
            logits = lm(inputs_embeds=embeds).logits[:, -1]
            logits_seen.append(logits[0])
            token = int(logits.argmax(-1))
            tokens.append(token)
            embeds = torch.cat([embeds, lm.get_input_embeddings()(torch.tensor([[token]]))], dim=1)
    vocab_end = PADDED_VOCAB - 64  # OpenVLA's self.vocab_size = text vocab - pad_to_multiple_of
    bins = np.linspace(-1, 1, 256)
    centers = (bins[:-1] + bins[1:]) / 2
    normalized = centers[np.clip(vocab_end - np.array(tokens) - 1, 0, 254)]
    q01, q99, mask = (np.array(stats[k]) for k in ("q01", "q99", "mask"))
    action = np.where(mask, 0.5 * (normalized + 1) * (q99 - q01) + q01, normalized)
    return tokens, action, torch.stack(logits_seen)
