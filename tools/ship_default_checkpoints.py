"""Copy an SFT policy and its PRM into checkpoints/default and write MANIFEST.json (maintainers only).

The headline experiment's seeds must all start from one SFT policy and one PRM, and a session
here cannot fetch them from a model hub nor keep them between machines, so the repo carries
them. The manifest records each file's size and sha256 (test/test_default_checkpoints.py checks
them) and where the files came from::

    .venv/bin/python tools/ship_default_checkpoints.py --policy runs/sft_state/policy \\
        --prm runs/prm_state --sft-result runs/sft_state/sft_result.json

Only the files the loaders read are shipped (no optimizer or trainer state).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for vla_rl_ros

from vla_rl_ros.core.policy.lora import sha256_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "checkpoints" / "default"


def main() -> None:
    """Copy, verify that both load and agree, write the manifest."""
    from vla_rl_ros.core.config import load_config
    from vla_rl_ros.core.policy import VLAPolicy
    from vla_rl_ros.core.rl.prm import META_FILE, ProcessRewardModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="SFT policy directory (vla-rl sft's policy/)")
    parser.add_argument("--prm", required=True, help="PRM directory (vla-rl train-prm --out)")
    parser.add_argument("--sft-result", help="the SFT run's sft_result.json, quoted in the manifest")
    args = parser.parse_args()
    for name, source in (("policy", args.policy), ("prm", args.prm)):
        shutil.rmtree(TARGET / name, ignore_errors=True)
        shutil.copytree(source, TARGET / name)
    cfg = load_config(ROOT / "config" / "train_sim.yaml")
    policy = VLAPolicy.load(str(TARGET / "policy"), cfg.policy)
    ProcessRewardModel.load(TARGET / "prm", cfg.policy).check_compatible(policy)
    shipped = [p for p in sorted(TARGET.rglob("*"))
               if p.is_file() and p.name not in ("README.md", "MANIFEST.json")]
    files = {str(p.relative_to(TARGET)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in shipped}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = commit.stdout.strip()
    manifest = {"made_at_commit": commit, "config": "config/train_sim.yaml",
                "parameters": sum(p.numel() for p in policy.model.parameters()),
                "prm_metrics": json.loads((TARGET / "prm" / META_FILE).read_text()).get("metrics", {}),
                "sft_result": json.loads(Path(args.sft_result).read_text()) if args.sft_result else None,
                "files": files}
    (TARGET / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"shipped {len(files)} files, {sum(f['bytes'] for f in files.values()) / 1e6:.1f} MB, to {TARGET}")


if __name__ == "__main__":
    main()
