"""The shipped start of the default task set (checkpoints/default): intact, loadable, consistent.

Every RL seed of the headline experiment must start from the same SFT policy and PRM; the repo
carries them because nothing can be fetched from a model hub here (checkpoints/default/README.md).
These tests catch a truncated or replaced file (for example a Git LFS pointer), a PRM that no
longer matches the policy, and a policy that no longer fits the default configuration.
"""
import json
from pathlib import Path

import pytest

from vla_rl_ros.core.policy.lora import sha256_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "checkpoints" / "default"
MANIFEST = DEFAULT / "MANIFEST.json"


def test_every_shipped_file_matches_the_manifest_and_nothing_is_unlisted():
    manifest = json.loads(MANIFEST.read_text())
    files = manifest["files"]
    shipped = {str(p.relative_to(DEFAULT)) for p in DEFAULT.rglob("*") if p.is_file()}
    assert shipped - {"README.md", "MANIFEST.json"} == set(files)
    for name, entry in files.items():
        path = DEFAULT / name
        assert path.stat().st_size == entry["bytes"], f"{name}: size changed (truncated or a pointer file?)"
        assert sha256_file(path) == entry["sha256"], f"{name}: contents changed"


def test_shipped_policy_and_prm_load_with_the_default_config_and_agree():
    from vla_rl_ros.core.config import load_config
    from vla_rl_ros.core.policy import VLAPolicy
    from vla_rl_ros.core.rl.prm import ProcessRewardModel

    cfg = load_config(ROOT / "config" / "train_sim.yaml")
    policy = VLAPolicy.load(str(DEFAULT / "policy"), cfg.policy)
    assert policy.arch.featurizer.image_size == cfg.env.image_size
    assert policy.action_tokenizer.action_dim == 7
    prm = ProcessRewardModel.load(DEFAULT / "prm", cfg.policy)
    prm.check_compatible(policy)  # raises PRMError if the PRM's action tokens meant other actions
    manifest = json.loads(MANIFEST.read_text())
    assert manifest["parameters"] == sum(p.numel() for p in policy.model.parameters())


def test_a_corrupt_copy_of_the_shipped_policy_is_refused(tmp_path):
    import shutil

    from vla_rl_ros.core.config import load_config
    from vla_rl_ros.core.policy import VLAPolicy
    from vla_rl_ros.core.policy.model_dir import CheckpointError

    copy = tmp_path / "policy"
    shutil.copytree(DEFAULT / "policy", copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        VLAPolicy.load(str(copy), load_config(ROOT / "config" / "train_sim.yaml").policy)
