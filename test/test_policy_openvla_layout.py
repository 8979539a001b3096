"""A directory laid out like a real ``openvla/openvla-7b`` (or LIBERO fine-tune) one, with tiny shapes.

Built in code with the real file layout: ``config.json`` whose ``text_config`` is a diff against
``LlamaConfig()`` (no ``vla_rl_ros_architecture`` entry), sharded safetensors with the unused keys,
``preprocessor_config.json`` with the bf16-rounded DINOv2 statistics, ``tokenizer.json`` and/or a
SentencePiece ``tokenizer.model``, ``dataset_statistics.json``, and remote-code ``*.py`` files that
must never run. Each behaviour is checked against an independent statement of what the original
code does (transformers' own ``LlamaConfig`` defaults, PIL + the stored statistics, a cache-free
greedy loop over the whole vocabulary with OpenVLA's token -> action rule, sentencepiece itself),
kept apart in ``helpers/openvla_reference.py`` so no product code is the oracle of itself.
"""
from __future__ import annotations

import builtins
import io
import json
import sys

import numpy as np
import pytest
import torch
from openvla_reference import (PADDED_VOCAB, ROUNDED_DINO_MEAN, ROUNDED_DINO_STD, SP_VOCAB, TEXT_CONFIG,
                               reference_inputs, reference_lm, reference_pixels, reference_predict_action,
                               reference_prompt_ids)
from policy_helpers import NORM_STATS, unused_openvla_tensors
from PIL import Image
from safetensors.torch import load_file
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.policy.architecture import (KNOWN_TIMM_VITS, dino_spec, from_openvla_config, preset,
                                                 siglip_spec)
from vla_rl_ros.core.policy.model_dir import CheckpointError, write_shards
from vla_rl_ros.core.policy.model import new_model
from vla_rl_ros.core.policy.policy import ChunkSizeError
from vla_rl_ros.core.policy.processor import prompt_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_DINO, TINY_SIGLIP = "vit_tiny_dinov2_reg4_test", "vit_tiny_siglip_test"
TEXTS = ["pick up the black bowl and place it on the plate", "open the top drawer of the cabinet",
         "put the cream cheese in the bowl"]
CORPUS = TEXTS + ["turn on the stove", "put both the alphabet soup and the tomato sauce in the basket",
                  "push the plate to the front of the stove",
                  "pick up the ketchup and place it in the basket",
                  "put the wine bottle on top of the cabinet", "open the middle drawer of the cabinet"]
REMOTE_CODE = 'raise RuntimeError("remote code of the checkpoint was executed")\n'
LIBERO_STATS = {"libero_spatial_no_noops": {"action": {
    "q01": [-0.5, -0.6, -0.7, -0.08, -0.09, -0.1, 0.0], "q99": [0.6, 0.7, 0.8, 0.09, 0.1, 0.11, 1.0],
    "mask": [True] * 6 + [False]}, "num_transitions": 52970}}


@pytest.fixture(scope="module", autouse=True)
def tiny_timm_ids():
    """The tiny ViTs this directory's config.json names (the real ids imply the 7B shapes)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(KNOWN_TIMM_VITS, TINY_DINO, lambda size: dino_spec(32, 3, 2, 128, 16, size))
        patch.setitem(KNOWN_TIMM_VITS, TINY_SIGLIP, lambda size: siglip_spec(32, 3, 2, 128, 16, size))
        yield


@pytest.fixture(scope="module")
def sp_model() -> bytes:
    """A Llama-style SentencePiece BPE model (byte fallback, unk/BOS/EOS = 0/1/2) trained in code."""
    import sentencepiece
    corpus = [prompt_for(text) for text in CORPUS] * 40
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=out, vocab_size=SP_VOCAB, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        num_threads=1, minloglevel=2)
    model = out.getvalue()
    assert sentencepiece.SentencePieceProcessor(model_proto=model).get_piece_size() == SP_VOCAB
    return model


@pytest.fixture(scope="module")
def sp(sp_model):
    import sentencepiece
    return sentencepiece.SentencePieceProcessor(model_proto=sp_model)


@pytest.fixture(scope="module")
def tokenizer_json(sp_model, tmp_path_factory) -> str:
    """transformers' own conversion of the SentencePiece model (what a real tokenizer.json is)."""
    from transformers import LlamaTokenizer
    directory = tmp_path_factory.mktemp("spm")
    (directory / "tokenizer.model").write_bytes(sp_model)
    return LlamaTokenizer.from_pretrained(str(directory), legacy=False).backend_tokenizer.to_str()


def openvla_config() -> dict:
    """config.json in openvla-7b's layout (its keys, a diff-style text_config), tiny shapes."""
    return {"arch_specifier": "no-align+fused-gelu-mlp", "architectures": ["OpenVLAForActionPrediction"],
            "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                         "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
            "hf_llm_id": "meta-llama/Llama-2-7b-hf", "image_resize_strategy": "resize-naive",
            "image_sizes": [32, 32], "llm_backbone_id": "llama2-7b-pure", "llm_max_length": 2048,
            "model_type": "openvla", "n_action_bins": 256, "norm_stats": NORM_STATS,
            "output_projector_states": False, "pad_to_multiple_of": 64, "pad_token_id": SP_VOCAB,
            "text_config": dict(TEXT_CONFIG), "timm_model_ids": [TINY_DINO, TINY_SIGLIP],
            "timm_override_act_layers": [None, None], "torch_dtype": "bfloat16",
            "transformers_version": "4.40.1", "use_fused_vision_backbone": True,
            "vision_backbone_id": "dinosiglip-vit-so-224px"}


def preprocessor_config(size: int = 32, interpolation: int = 3) -> dict:
    """preprocessor_config.json in openvla-7b's layout (the stored, bf16-rounded DINOv2 statistics)."""
    norms = [{"inplace": False, "mean": ROUNDED_DINO_MEAN, "std": ROUNDED_DINO_STD},
             {"inplace": False, "mean": [0.5] * 3, "std": [0.5] * 3}]
    return {"auto_map": {"AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
                         "AutoProcessor": "processing_prismatic.PrismaticProcessor"},
            "image_processor_type": "PrismaticImageProcessor", "image_resize_strategy": "resize-naive",
            "input_sizes": [[3, size, size]] * 2, "interpolations": ["bicubic"] * 2,
            "means": [ROUNDED_DINO_MEAN, [0.5] * 3], "stds": [ROUNDED_DINO_STD, [0.5] * 3],
            "processor_class": "PrismaticProcessor",
            "tvf_crop_params": [{"output_size": [size, size]}] * 2, "tvf_do_letterbox": False,
            "tvf_letterbox_fill": None, "tvf_normalize_params": norms,
            "tvf_resize_params": [{"antialias": True, "interpolation": interpolation, "max_size": None,
                                   "size": [size, size]}] * 2, "use_fused_vision_backbone": True}


@pytest.fixture(scope="module")
def weights() -> dict:
    """Checkpoint tensors: non-trivial weights, unused keys included; the non-action rows of lm_head
    are scaled up so that greedy decoding over the whole vocabulary picks non-action ids."""
    arch = from_openvla_config(openvla_config())
    model = new_model(arch, torch.float32, "cpu", seed=5)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.03)
        model.language_model.lm_head.weight[:arch.action_vocab_start] *= 4.0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update(unused_openvla_tensors(model))
    return state


def build_openvla_dir(directory, weights, sp_model, tokenizer_json, tokenizer="json", preprocessor=True,
                      dataset_statistics=None):
    """Write the directory: config, 2 shards + index, tokenizer file(s), processor config, stubs."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(openvla_config(), indent=2))
    write_shards(weights, directory, num_shards=2)
    if tokenizer in ("json", "both"):
        (directory / "tokenizer.json").write_text(tokenizer_json)
    if tokenizer in ("model", "both"):
        (directory / "tokenizer.model").write_bytes(sp_model)
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "add_eos_token": False, "legacy": False, "pad_token": "<PAD>",
         "tokenizer_class": "LlamaTokenizer", "auto_map": {"AutoProcessor": "processing_prismatic.X"}}))
    (directory / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2,
                                                                  "pad_token_id": SP_VOCAB}))
    if preprocessor:
        (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))
    if dataset_statistics is not None:
        (directory / "dataset_statistics.json").write_text(json.dumps(dataset_statistics))
    for name in ("modeling_prismatic.py", "configuration_prismatic.py", "processing_prismatic.py"):
        (directory / name).write_text(REMOTE_CODE)
    return directory


@pytest.fixture(scope="module")
def openvla_dir(weights, sp_model, tokenizer_json, tmp_path_factory):
    return build_openvla_dir(tmp_path_factory.mktemp("real") / "openvla-7b-tiny", weights, sp_model,
                             tokenizer_json)


def cfg(**overrides) -> PolicyConfig:
    return PolicyConfig(**{"unnorm_key": "libero_spatial_no_noops", **overrides})


def frames(batch: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------- tests
def test_text_config_is_a_diff_against_llama_config_defaults(openvla_dir, weights, sp):
    policy = VLAPolicy.load(str(openvla_dir), cfg())
    lm_config = policy.model.language_model.config
    assert lm_config.rms_norm_eps == 1e-6 and lm_config.max_position_embeddings == 2048
    assert lm_config.hidden_size == 64 and lm_config.vocab_size == PADDED_VOCAB
    # Our forward pass equals the original's language model on the same inputs...
    reference, llama2_eps = reference_lm(weights), reference_lm(weights, rms_norm_eps=1e-5)
    embeds = reference_inputs(policy, reference, sp, frames(1)[0], TEXTS[0])
    with torch.no_grad():
        ours = policy.model.language_model(inputs_embeds=embeds).logits
        expected = reference(inputs_embeds=embeds).logits
        wrong = llama2_eps(inputs_embeds=embeds).logits
    assert torch.allclose(ours, expected, atol=1e-6, rtol=0)
    # ...and Llama-2-7B's eps (what the loader used to fill in) is measurably another model.
    assert (ours - wrong).abs().max() > 1e-3


def test_the_7b_config_and_preset_get_llama_config_defaults():
    config = {**openvla_config(), "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m",
                                                     "vit_so400m_patch14_siglip_224"],
              "image_sizes": [224, 224], "pad_token_id": 32000,
              "text_config": {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16",
                              "vocab_size": 32064}}
    llm = from_openvla_config(config).llm
    expected = CONFIG_MAPPING["llama"](**config["text_config"])
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "vocab_size",
                "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings", "hidden_act"):
        assert llm[key] == getattr(expected, key), key
    assert llm["rope_theta"] == expected.rope_parameters["rope_theta"]
    assert preset("openvla-7b", 224, 32000).llm == llm  # the random-weight 7B bench runs the same LM


def test_unsupported_text_config_keys_are_refused_by_name():
    base = openvla_config()
    for extra, match in [({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
                         ({"sliding_window": 4096}, "sliding_window"), ({"model_type": "mistral"}, "mistral"),
                         ({"head_dim": 16}, "head_dim"),
                         ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_parameters")]:
        with pytest.raises(ConfigError, match=match):
            from_openvla_config({**base, "text_config": {**TEXT_CONFIG, **extra}})
    theta = {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
    llm = from_openvla_config({**base, "text_config": {**TEXT_CONFIG, **theta}}).llm
    assert llm["rope_theta"] == 500000.0


def test_preprocessor_config_statistics_are_what_the_pixels_use(openvla_dir):
    policy = VLAPolicy.load(str(openvla_dir), cfg())
    assert policy.processor.mean[:3].tolist() == ROUNDED_DINO_MEAN
    assert policy.processor.std[:3].tolist() == ROUNDED_DINO_STD
    square, wide = frames(1, seed=3), np.random.default_rng(4).integers(0, 256, (1, 40, 48, 3), np.uint8)
    assert torch.equal(policy.processor.pixels(square), reference_pixels(square[0]))
    assert torch.equal(policy.processor.pixels(wide), reference_pixels(wide[0]))  # PIL bicubic to 32x32
    exact = reference_pixels(square[0], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert (policy.processor.pixels(square) - exact).abs().max() > 1e-3  # the constants are not the file


def test_preprocessor_config_resize_settings_are_honoured(openvla_dir, tmp_path):
    bilinear = tmp_path / "bilinear"
    bilinear.mkdir()
    for path in openvla_dir.iterdir():
        (bilinear / path.name).write_bytes(path.read_bytes())
    (bilinear / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(interpolation=2)))
    wide = np.random.default_rng(5).integers(0, 256, (1, 40, 48, 3), np.uint8)
    policy = VLAPolicy.load(str(bilinear), cfg())
    assert torch.equal(policy.processor.pixels(wide), reference_pixels(wide[0], resample=Image.BILINEAR))
    # Without the tvf_* entries, input_sizes / interpolations / means / stds say the same.
    legacy = {k: v for k, v in preprocessor_config().items() if not k.startswith("tvf_")}
    (bilinear / "preprocessor_config.json").write_text(json.dumps(legacy))
    policy = VLAPolicy.load(str(bilinear), cfg())
    assert torch.equal(policy.processor.pixels(wide), reference_pixels(wide[0]))
    for broken, match in [({**preprocessor_config(), "tvf_do_letterbox": True}, "letterbox"),
                          (preprocessor_config(size=48), "produces 48x48 frames"),
                          ({**preprocessor_config(), "tvf_normalize_params": [{"mean": [0.5] * 3}] * 2},
                           "malformed")]:
        (bilinear / "preprocessor_config.json").write_text(json.dumps(broken))
        with pytest.raises(ConfigError, match=match):
            VLAPolicy.load(str(bilinear), cfg())


def test_greedy_over_the_whole_vocabulary_reproduces_predict_action(openvla_dir, weights, sp):
    """restrict_to_action_tokens=false is the original; the RL default (true) is another policy."""
    original = VLAPolicy.load(str(openvla_dir), cfg(restrict_to_action_tokens=False))
    restricted = VLAPolicy.load(str(openvla_dir), cfg())
    lm = reference_lm(weights)
    stats = NORM_STATS["libero_spatial_no_noops"]["action"]
    batch = frames(3, seed=7)
    out = original.decode(batch, TEXTS, greedy=True)  # batched, left-padded, KV-cached
    ref_logits = []
    for row in range(3):
        tokens, action, logits = reference_predict_action(original, lm, sp, batch[row], TEXTS[row], stats)
        assert out.tokens[row].tolist() == tokens
        np.testing.assert_allclose(out.actions[row, 0], action, rtol=0, atol=1e-6)
        ref_logits.append(logits)
    start = original.arch.action_vocab_start
    assert (out.tokens < start).any(), "the test needs a non-action argmax to tell the two rules apart"
    assert not torch.equal(restricted.decode(batch, TEXTS, greedy=True).tokens, out.tokens)
    # Scoring with the same setting: teacher-forced log-probs equal the decode's, and both are the
    # whole-vocabulary log-softmax (at policy.temperature) of the original's logits.
    scored = original.evaluate(batch, TEXTS, out.tokens)
    assert torch.allclose(scored.log_probs.detach(), out.log_probs, atol=1e-5, rtol=0)
    expected = torch.stack([torch.log_softmax(logits / original.cfg.temperature, -1).gather(
        -1, out.tokens[row][:, None]).squeeze(-1) for row, logits in enumerate(ref_logits)])
    assert torch.allclose(out.log_probs, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["json", "model", "both"])
def test_both_tokenizer_files_give_the_original_prompt_ids(variant, weights, sp_model, sp, tokenizer_json,
                                                           tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("reached AutoTokenizer or an interactive prompt")
    import transformers
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(builtins, "input", refuse)
    directory = build_openvla_dir(tmp_path / variant, weights, sp_model, tokenizer_json, tokenizer=variant)
    policy = VLAPolicy.load(str(directory), cfg())
    texts = TEXTS + ["Put the Wine Bottle on top of the cabinet", "stack 3 zebras onto the café's table!"]
    ids, mask = policy.processor.text(texts)
    for row, text in enumerate(texts):
        assert ids[row][mask[row].bool()].tolist() == reference_prompt_ids(sp, text), text
    assert policy.arch.prompt_suffix_ids == (sp.piece_to_id("\u2581"),)
    assert not any(name.endswith("_prismatic") for name in sys.modules)  # remote code never imported
    policy.save(str(tmp_path / f"saved-{variant}"))
    saved = sorted(p.name for p in (tmp_path / f"saved-{variant}").iterdir())
    assert ("tokenizer.model" in saved) == (variant == "model") and "preprocessor_config.json" in saved
    again = VLAPolicy.load(str(tmp_path / f"saved-{variant}"), cfg())
    assert torch.equal(again.processor.text(texts)[0], ids)
    batch = frames(2, seed=9)
    assert torch.equal(again.processor.pixels(batch), policy.processor.pixels(batch))
    assert torch.equal(again.decode(batch, TEXTS[:2], greedy=True).tokens,
                       policy.decode(batch, TEXTS[:2], greedy=True).tokens)


def test_tokenizer_model_without_sentencepiece_is_a_one_line_refusal(weights, sp_model, tokenizer_json,
                                                                     tmp_path, monkeypatch):
    directory = build_openvla_dir(tmp_path / "spm", weights, sp_model, tokenizer_json, tokenizer="model")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import sentencepiece -> ImportError
    with pytest.raises(CheckpointError, match="sentencepiece package is missing") as refused:
        VLAPolicy.load(str(directory), cfg())
    assert "\n" not in str(refused.value)
    monkeypatch.delitem(sys.modules, "sentencepiece")
    (directory / "tokenizer.model").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(CheckpointError, match="not a readable SentencePiece model") as unreadable:
        VLAPolicy.load(str(directory), cfg())
    assert "\n" not in str(unreadable.value)
    (directory / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        VLAPolicy.load(str(directory), cfg())


def test_dataset_statistics_replace_config_norm_stats_as_in_openvla_eval(weights, sp_model, tokenizer_json,
                                                                         tmp_path):
    directory = build_openvla_dir(tmp_path / "libero", weights, sp_model, tokenizer_json,
                                  dataset_statistics=LIBERO_STATS)
    policy = VLAPolicy.load(str(directory), PolicyConfig())  # one key: unnorm_key '' picks it
    assert policy.action_tokenizer.q99.tolist() == LIBERO_STATS["libero_spatial_no_noops"]["action"]["q99"]
    assert set(policy.norm_stats) == {"libero_spatial_no_noops"}


def test_openvla_directories_are_one_action_per_call(openvla_dir):
    assert VLAPolicy.load(str(openvla_dir), cfg()).chunk_size == 1
    with pytest.raises(ChunkSizeError, match="policy.chunk_size=1"):
        VLAPolicy.load(str(openvla_dir), cfg(chunk_size=2))


def test_shards_hold_the_real_key_names(openvla_dir):
    keys = set()
    for shard in openvla_dir.glob("model-*.safetensors"):
        keys |= set(load_file(str(shard)))
    assert "language_model.lm_head.weight" in keys
    assert "vision_backbone.fused_featurizer.attn_pool.latent" in keys  # unused, but stored
    assert not any(k.startswith("vla_rl_ros") for k in json.loads((openvla_dir / "config.json").read_text()))
