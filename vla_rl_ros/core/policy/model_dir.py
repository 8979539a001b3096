"""Load and save OpenVLA-layout directories: ``config.json`` + (sharded) safetensors.

The same loader reads a real ``openvla/openvla-7b`` directory and the directories this package
saves (which add a ``vla_rl_ros_architecture`` entry to ``config.json``). Of a real directory it
reads ``config.json``, the safetensors (index + shards), ``preprocessor_config.json`` and
``dataset_statistics.json`` when present, and (in ``processor``) ``tokenizer.json`` or
``tokenizer.model``; the ``*.py`` remote-code files are never imported. The module is built on
the meta device and every shard is assigned in place, so a 7B model never exists twice in
memory; keys OpenVLA stores but never uses are skipped by name, everything else must match
exactly, and nothing may stay on the meta device. There is no fallback to random weights.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vla_rl_ros.core.policy.architecture import VLAArchitecture, from_openvla_config
from vla_rl_ros.core.policy.model import OpenVLAModel, rebuild_rotary

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
ARCH_KEY = "vla_rl_ros_architecture"
PREPROCESSOR_FILE = "preprocessor_config.json"
DATASET_STATISTICS_FILE = "dataset_statistics.json"


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete or does not match the architecture it declares."""


def read_config(directory: str | Path) -> dict[str, Any]:
    """The directory's ``config.json`` as a dict."""
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a policy directory needs config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None


def read_json_file(path: Path) -> dict[str, Any] | None:
    """An optional JSON object file of a checkpoint: None when absent, a CheckpointError when malformed."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def read_preprocessor_config(directory: str | Path) -> dict[str, Any] | None:
    """The directory's ``preprocessor_config.json`` (the original image processor's settings), or None."""
    return read_json_file(Path(directory) / PREPROCESSOR_FILE)


def read_norm_stats(directory: str | Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """Action statistics: ``dataset_statistics.json`` when present, else ``config.json``'s ``norm_stats``.

    OpenVLA's evaluation scripts (``get_vla``) replace the config's statistics by that file when a
    fine-tuned directory has it, so this does the same.
    """
    stats = read_json_file(Path(directory) / DATASET_STATISTICS_FILE)
    return dict(stats if stats is not None else (config.get("norm_stats") or {}))


def unused_key_pattern(arch: VLAArchitecture) -> re.Pattern:
    """Keys OpenVLA stores but never uses: each ViT's last block, final norms, attention-pool head."""
    parts = []
    for name, spec in (("featurizer", arch.featurizer), ("fused_featurizer", arch.fused_featurizer)):
        parts.append(rf"vision_backbone\.{name}\.(blocks\.{spec.depth - 1}|norm|fc_norm|attn_pool|head)\.")
    parts.append(r"language_model\.model\.rotary_emb\.")
    return re.compile("^(" + "|".join(parts) + ")")


def weight_files(directory: Path) -> dict[str, list[str] | None]:
    """Shard file -> keys the index assigns to it (None for an unsharded ``model.safetensors``)."""
    present = sorted(p.name for p in directory.glob("model*.safetensors"))  # not value_head.*
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index_path} is malformed (needs a weight_map): {err}") from None
        shards: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            shards.setdefault(shard, []).append(key)
        missing = sorted(set(shards) - set(present))
        if missing:
            raise CheckpointError(f"{directory}: shard file(s) listed in {INDEX_FILE} are missing: "
                                  f"{', '.join(missing)}")
        extra = sorted(set(present) - set(shards))
        if extra:
            raise CheckpointError(f"{directory}: extra safetensors file(s) not listed in {INDEX_FILE}: "
                                  f"{', '.join(extra)} (remove them or fix the index)")
        return dict(shards)
    if present == [SINGLE_FILE]:
        return {SINGLE_FILE: None}
    if not present:
        raise CheckpointError(f"{directory} holds no weights ({SINGLE_FILE} or {INDEX_FILE} + shards)")
    raise CheckpointError(f"{directory}: safetensors files {', '.join(present)} but no {INDEX_FILE}")


@contextmanager
def open_shard(path: Path, device: str | torch.device = "cpu") -> Iterator[Any]:
    """``safe_open`` a weight file; a truncated or corrupt one is a CheckpointError naming it."""
    try:
        handle = safe_open(str(path), framework="pt", device=str(device))
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) here
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): "
                              f"{err}") from None
    with handle:
        yield handle


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one small safetensors file (a head), with :func:`open_shard`'s errors."""
    with open_shard(path) as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def _plan(directory: Path, arch: VLAArchitecture,
          expected: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Shard -> keys to load, after checking every key and shape against the meta model."""
    unused = unused_key_pattern(arch)
    plan: dict[str, list[str]] = {}
    seen: set[str] = set()
    for shard, indexed_keys in weight_files(directory).items():
        with open_shard(directory / shard) as handle:
            keys = list(handle.keys())
            if indexed_keys is not None and set(keys) != set(indexed_keys):
                diff = sorted(set(keys) ^ set(indexed_keys))[:5]
                raise CheckpointError(f"{shard}: keys disagree with {INDEX_FILE}, e.g. {', '.join(diff)}")
            wanted = []
            for key in keys:
                if key in expected:
                    shape = tuple(handle.get_slice(key).get_shape())
                    if shape != tuple(expected[key].shape):
                        raise CheckpointError(f"{shard}: {key} has shape {list(shape)} but the architecture "
                                              f"in config.json needs {list(expected[key].shape)}")
                    wanted.append(key)
                elif not unused.match(key):
                    raise CheckpointError(f"{shard}: unexpected key {key} (not part of the architecture "
                                          "declared by config.json)")
        seen.update(wanted)
        plan[shard] = wanted
    missing = sorted(set(expected) - seen)
    if missing:
        raise CheckpointError(f"{directory}: {len(missing)} weight(s) missing from the checkpoint, e.g. "
                              f"{', '.join(missing[:5])}; refusing to leave them randomly initialised")
    return plan


def load_model(directory: str | Path, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> tuple[OpenVLAModel, dict[str, Any]]:
    """Build the model of ``directory`` on the meta device and assign its weights shard by shard.

    Returns the model (eval mode, ``dtype`` on ``device``) and the parsed ``config.json``.
    """
    directory = Path(directory)
    config = read_config(directory)
    arch = from_openvla_config(config)
    with torch.device("meta"):
        model = OpenVLAModel(arch)
    expected = model.state_dict()
    for shard, keys in _plan(directory, arch, expected).items():
        with open_shard(directory / shard, device) as handle:
            part = {key: handle.get_tensor(key).to(dtype) for key in keys}
        model.load_state_dict(part, strict=False, assign=True)
        del part
    rebuild_rotary(model, device)
    on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if on_meta:
        raise CheckpointError(f"{directory}: left on the meta device after loading: {', '.join(on_meta[:5])}")
    return model.eval(), config


def write_shards(state_dict: Mapping[str, torch.Tensor], directory: str | Path, num_shards: int = 1) -> None:
    """Write ``state_dict`` as ``model.safetensors`` or as ``num_shards`` shards plus an index."""
    directory = Path(directory)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if num_shards <= 1:
        save_file(tensors, str(directory / SINGLE_FILE), metadata={"format": "pt"})
        return
    keys = list(tensors)
    weight_map, total = {}, 0
    for index in range(num_shards):
        name = f"model-{index + 1:05d}-of-{num_shards:05d}.safetensors"
        chunk = keys[index::num_shards]
        save_file({k: tensors[k] for k in chunk}, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in chunk})
        total += sum(tensors[k].numel() * tensors[k].element_size() for k in chunk)
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total},
                                                    "weight_map": weight_map}, indent=2))


def atomic_directory(target: str | Path) -> tuple[Path, Path]:
    """A fresh temporary sibling of ``target``; finish with :func:`commit_directory`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent)), target


def commit_directory(tmp: Path, target: Path) -> None:
    """Replace ``target`` by ``tmp`` with renames, so readers never see a half-written directory."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_model_dir(directory: str | Path, arch: VLAArchitecture, state_dict: Mapping[str, torch.Tensor],
                   tokenizer: Mapping[str, str | bytes], norm_stats: Mapping[str, Any], num_shards: int = 1,
                   extra_files: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                   preprocessor_config: Mapping[str, Any] | None = None) -> None:
    """Write config.json (architecture + norm_stats), the tokenizer and the weights, atomically.

    ``tokenizer`` maps file names to contents (``tokenizer.json`` text or ``tokenizer.model``
    bytes); ``preprocessor_config`` (a loaded checkpoint's, kept verbatim) is written when given;
    ``extra_files`` maps a file name to tensors saved beside the model (e.g. the value head).
    """
    tmp, target = atomic_directory(directory)
    try:
        config = {"model_type": "openvla", "use_fused_vision_backbone": True,
                  "n_action_bins": arch.n_action_bins,
                  "image_sizes": [arch.image_size] * 2, "norm_stats": dict(norm_stats),
                  ARCH_KEY: arch.to_dict()}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for name, content in tokenizer.items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content)
        if preprocessor_config is not None:
            (tmp / PREPROCESSOR_FILE).write_text(json.dumps(dict(preprocessor_config), indent=2))
        write_shards(state_dict, tmp, num_shards)
        for name, tensors in (extra_files or {}).items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / name))
        commit_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
