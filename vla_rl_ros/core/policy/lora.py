"""LoRA adapters (peft) on the language model, and versioned adapter directories.

Targets are explicit module names matched by a regex anchored to the Llama layers (and the
projector if asked), so ``lm_head`` is never wrapped (peft's "all-linear" on a plain module
would wrap it). The reference policy is the same model with adapters disabled: no second copy.
Adapter directories hold ``adapter.safetensors`` (LoRA + value head) and ``adapter.json``
(version, sha256 of the weights file, LoRA shape); they are written to a temporary sibling and
renamed into place, so a reader never sees a half-written version.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Mapping

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from vla_rl_ros.core.policy.model_dir import atomic_directory, commit_directory

WEIGHTS_FILE = "adapter.safetensors"
META_FILE = "adapter.json"
FORMAT_VERSION = 1


def target_regex(targets: list[str]) -> str:
    """Full-name regex of the modules LoRA wraps (peft matches it against each module's full name)."""
    llm = [t for t in targets if t != "projector"]
    parts = []
    if llm:
        parts.append(r"language_model\.model\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(llm) + ")")
    if "projector" in targets:
        parts.append(r"projector\.fc[123]")
    return "^(" + "|".join(parts) + ")$"


def attach_lora(model: torch.nn.Module, targets: list[str], rank: int, alpha: int, dropout: float,
                seed: int) -> PeftModel:
    """Wrap ``model`` in a PeftModel whose adapters start as a no-op (B = 0); base weights frozen."""
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_regex(targets),
                        bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def lora_shape(peft_model: PeftModel) -> dict:
    """Rank, alpha and targets: what an adapter file must match to be loaded."""
    config = peft_model.peft_config["default"]
    return {"rank": int(config.r), "alpha": int(config.lora_alpha), "targets": str(config.target_modules)}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_adapter_dir(directory: str | Path, peft_model: PeftModel, value_head: torch.nn.Module,
                     version: int, extra_meta: Mapping[str, int | str] | None = None) -> str:
    """Write LoRA + value-head weights and their metadata atomically; returns the weights' sha256.

    ``extra_meta`` is stored beside the LoRA shape (the policy records its chunk size there).
    """
    if int(version) < 0:
        raise ValueError(f"adapter version must be >= 0, got {version}")
    tensors = {f"lora.{k}": v for k, v in get_peft_model_state_dict(peft_model).items()}
    tensors.update({f"value_head.{k}": v for k, v in value_head.state_dict().items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    tmp, target = atomic_directory(directory)
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"version": str(int(version))})
        digest = sha256_file(tmp / WEIGHTS_FILE)
        meta = {"format": FORMAT_VERSION, "version": int(version), "sha256": digest,
                "weights_file": WEIGHTS_FILE, **lora_shape(peft_model), **dict(extra_meta or {})}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        commit_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digest


def read_adapter_dir(directory: str | Path, peft_model: PeftModel) -> tuple[dict, dict[str, torch.Tensor]]:
    """Metadata and tensors of an adapter directory, verified before use; ValueError says why not.

    Checked: ``adapter.json`` is a JSON object of this format; the weights' sha256 matches it; the
    LoRA shape matches ``peft_model``; the weights file parses as safetensors; every tensor is
    finite. A checksum proves only that the file is the one announced, not that its numbers are
    usable: NaN weights with a valid checksum used to load and then fail every decode.
    """
    directory = Path(directory)
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"adapter directory {directory} lacks {path.name}")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta_path}: not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: a JSON {type(meta).__name__}, expected an object")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    for key, least, required in (("version", 0, True), ("chunk_size", 1, False)):
        value = meta.get(key)
        if (required or value is not None) and not (type(value) is int and value >= least):
            raise ValueError(f"{meta_path}: {key} is {value!r}, expected an integer >= {least}")
    digest = sha256_file(weights_path)
    if digest != meta.get("sha256"):
        raise ValueError(f"{weights_path}: sha256 {digest} does not match {meta.get('sha256')} in "
                         f"{META_FILE} (corrupted or partially copied)")
    expected = lora_shape(peft_model)
    found = {k: meta.get(k) for k in expected}
    if found != expected:
        raise ValueError(f"{directory}: adapters were saved for LoRA {found}, this policy has {expected}")
    try:
        tensors = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own SafetensorError (no ValueError) on garbage
        raise ValueError(f"{weights_path}: not a readable safetensors file ({type(err).__name__}: {err})") \
            from None
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise ValueError(f"{weights_path}: non-finite weights in {len(bad)} tensor(s), "
                         f"e.g. {', '.join(bad[:3])}")
    return meta, tensors


def apply_adapter_tensors(peft_model: PeftModel, value_head: torch.nn.Module,
                          tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Load verified tensors; any missing or unexpected key is an error (nothing half-applied)."""
    lora = {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")}
    value = {k[len("value_head."):]: v for k, v in tensors.items() if k.startswith("value_head.")}
    stray = sorted(k for k in tensors if not k.startswith(("lora.", "value_head.")))
    expected_lora = get_peft_model_state_dict(peft_model)
    problems = (sorted(set(expected_lora) ^ set(lora)) + sorted(set(value_head.state_dict()) ^ set(value))
                + stray)
    if problems:
        raise ValueError(f"{where}: adapter keys do not match this policy, e.g. {', '.join(problems[:5])}")
    for key, tensor in lora.items():
        if tensor.shape != expected_lora[key].shape:
            raise ValueError(f"{where}: {key} has shape {list(tensor.shape)}, "
                             f"expected {list(expected_lora[key].shape)}")
    set_peft_model_state_dict(peft_model, lora)
    value_head.load_state_dict(value)


def merged_state_dict(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    """Base weights with the active LoRA deltas folded in, under the original checkpoint key names."""
    base = peft_model.base_model.model
    deltas = {}
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            deltas[f"{name}.weight"] = module.get_delta_weight("default")
    merged = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue
        clean = key.replace(".base_layer.", ".")
        merged[clean] = tensor + deltas[clean].to(tensor.dtype) if clean in deltas else tensor
    return merged
