"""Versioned adapter directories: ``<output_dir>/adapters/v000007/``, written by the learner.

Weights never travel over DDS. The policy core writes each version atomically and records the
sha256 of its weights file; the learner announces version, path and that checksum on the
latched ``policy_version`` topic, and the policy node checks the checksum before loading.
"""
from __future__ import annotations

import re
from pathlib import Path

VERSION_DIR = re.compile(r"^v(\d{6})$")


def version_dir(root: str | Path, version: int) -> Path:
    """Directory of ``version`` under ``root``."""
    return Path(root) / f"v{int(version):06d}"


def latest_version(root: str | Path) -> tuple[int, Path] | None:
    """Highest complete version under ``root`` (temporary siblings are ignored), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := VERSION_DIR.match(p.name))]
    return max(found) if found else None


def weights_checksum(directory: str | Path) -> str:
    """sha256 of the adapter weights file of ``directory`` (what PolicyVersion.sha256 announces)."""
    from vla_rl_ros.core.policy.lora import WEIGHTS_FILE, sha256_file
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"adapter weights {path} do not exist")
    return sha256_file(path)
