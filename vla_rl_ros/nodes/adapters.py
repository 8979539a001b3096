"""Versioned adapter directories written by the learner and loaded by the policy node.

Weights never travel over DDS: the learner writes ``<output_dir>/adapters/v000007/`` atomically
(a temporary directory renamed into place) and announces version, path and checksum; the
policy node verifies the checksum before loading, so a half-copied or tampered directory is
refused instead of silently decoding with wrong weights.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

VERSION_DIR = re.compile(r"^v(\d{6})$")


def adapter_checksum(directory: str | Path) -> str:
    """sha256 over every file of ``directory`` (relative names and bytes, sorted by name)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"adapter directory {directory} holds no files")
    for path in files:
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def version_dir(root: str | Path, version: int) -> Path:
    """Directory name of ``version`` under ``root``."""
    return Path(root) / f"v{version:06d}"


def latest_version(root: str | Path) -> tuple[int, Path] | None:
    """Highest complete version under ``root`` (temporary directories are ignored), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := VERSION_DIR.match(p.name))]
    return max(found) if found else None


def write_version(root: str | Path, version: int, write: Callable[[Path], None]) -> tuple[Path, str]:
    """Call ``write(tmp_dir)`` then rename it to ``v<version>``; returns (path, checksum).

    The rename is atomic on one filesystem, so readers see either no version or a complete one.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = version_dir(root, version)
    if final.exists():
        raise FileExistsError(f"adapter version {final} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_v{version:06d}_", dir=root))
    try:
        write(tmp)
        checksum = adapter_checksum(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, checksum
