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

from vla_rl_ros.core.policy.checkpoint import atomic_directory, commit_directory

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
    """Metadata and tensors of an adapter directory, verified (sha256, LoRA shape) before use."""
    directory = Path(directory)
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"adapter directory {directory} lacks {path.name}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    digest = sha256_file(weights_path)
    if digest != meta.get("sha256"):
        raise ValueError(f"{weights_path}: sha256 {digest} does not match {meta.get('sha256')} in "
                         f"{META_FILE} (corrupted or partially copied)")
    expected = lora_shape(peft_model)
    found = {k: meta.get(k) for k in expected}
    if found != expected:
        raise ValueError(f"{directory}: adapters were saved for LoRA {found}, this policy has {expected}")
    return meta, load_file(str(weights_path))


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
