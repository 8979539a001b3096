"""Every state file the project reads is loaded with weights_only: a crafted pickle never runs.

Each loader (RL checkpoint, learner state, SFT trainer state) is pointed at a file whose
unpickling would write a marker file; the test asserts the loader refuses it with a clear error
and the marker was never written. The same files are first shown to be live (a plain
``torch.load(weights_only=False)`` does write the marker), so the refusal is what protects.
"""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import rclpy
import torch
from rclpy.parameter import Parameter

from dds_domains import isolate_dds
from test_sft_train import demo_dir, sft_config  # noqa: F401 - demo_dir is a fixture
from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.rl import checkpoint as ckpt
from vla_rl_ros.core.sft import CHECKPOINT_DIR, TRAINER_FILE, train_sft
from vla_rl_ros.nodes.adapters import version_dir


class WritesMarker:
    """Unpickling this calls exec(): what an attacker's state file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def craft(path: Path, marker: Path, payload_format: str = "torch") -> Path:
    """Write a state file holding a WritesMarker next to plausible keys; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"version": 1, "iteration": 1, "step": 1, "payload": WritesMarker(marker)}
    if payload_format == "torch":
        torch.save(state, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(state, handle)
    return path


@pytest.mark.parametrize("payload_format", ["torch", "raw_pickle"])
def test_crafted_file_is_live_without_weights_only(tmp_path, payload_format):
    marker = tmp_path / "marker"
    path = craft(tmp_path / "state.pt", marker, payload_format)
    try:
        torch.load(path, weights_only=False)
    except RuntimeError:  # a raw pickle is read as torch's legacy magic number: the code runs first
        pass
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("payload_format", ["torch", "raw_pickle"])
def test_rl_checkpoint_refuses_a_crafted_pickle(tmp_path, payload_format):
    marker = tmp_path / "marker"
    craft(ckpt.checkpoint_dir(tmp_path / "run") / ckpt.STATE_FILE, marker, payload_format)
    with pytest.raises(ConfigError, match=r"refused .*state\.pt.*cannot be read.*can run code"):
        ckpt.load_checkpoint(tmp_path / "run")
    assert not marker.exists()


def test_rl_checkpoint_state_round_trips_through_weights_only(tmp_path):
    """What a run keeps (numpy RNG states, numpy metrics) survives save + weights_only load."""
    rng = np.random.default_rng(5)
    np.random.seed(11)
    gen = torch.Generator().manual_seed(3)
    state = {"iteration": 2, "rng": ckpt.rng_state({"g": gen}, rng),
             "history": [{"rollout/return": np.float64(0.25), "counts": np.arange(3)}]}
    ckpt.save_checkpoint(tmp_path / "run", state)
    expected = (rng.random(), np.random.random(), torch.rand(1, generator=gen).item())
    loaded = ckpt.load_checkpoint(tmp_path / "run")
    ckpt.restore_rng_state(loaded["rng"], {"g": gen}, rng)
    assert (rng.random(), np.random.random(), torch.rand(1, generator=gen).item()) == expected
    assert loaded["history"] == [{"rollout/return": 0.25, "counts": [0, 1, 2]}]


def _learner(tmp_path: Path, context):
    from vla_rl_ros.nodes.learner_node import LearnerNode
    overrides = [Parameter("train.output_dir", value=str(tmp_path / "run")),
                 Parameter("env.backend", value="toy"), Parameter("env.task_ids", value=[0, 1]),
                 Parameter("env.image_size", value=32), Parameter("policy.size", value="tiny"),
                 Parameter("policy.image_size", value=32), Parameter("score_missing_steps", value=False)]
    return LearnerNode(context=context, parameter_overrides=overrides)


def test_learner_resumes_its_state_and_refuses_a_crafted_one(tmp_path, monkeypatch, one_torch_thread):
    isolate_dds(monkeypatch)
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        first = _learner(tmp_path, context)
        first.policy.save_adapters(str(version_dir(first.adapters_root, 1)), 1)
        first.version, first.processed = 1, ["bag_a"]
        first.history.append({"ppo/approx_kl": np.float64(0.01)})  # passes isinstance(float) in the node
        first._save_state()
        first.destroy_node()

        resumed = _learner(tmp_path, context)
        assert resumed.version == 1 and resumed.processed == ["bag_a"]
        assert resumed.history == [{"ppo/approx_kl": 0.01}]
        resumed.destroy_node()

        marker = tmp_path / "marker"
        craft(ckpt.checkpoint_dir(tmp_path / "run") / ckpt.STATE_FILE, marker)
        with pytest.raises(ConfigError, match=r"refused .*latest/state\.pt"):
            _learner(tmp_path, context)
        assert not marker.exists()
    finally:
        rclpy.shutdown(context=context)


def test_sft_resume_refuses_a_crafted_trainer_state(tmp_path, demo_dir, one_torch_thread):  # noqa: F811
    cfg = sft_config(tmp_path, steps=4)
    train_sft(cfg, progress=False, max_steps=2)
    trainer_file = tmp_path / "out" / CHECKPOINT_DIR / TRAINER_FILE
    assert torch.load(trainer_file, weights_only=True)["step"] == 2  # the real one loads as weights only
    marker = tmp_path / "marker"
    craft(trainer_file, marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train_sft(cfg, progress=False)
    assert not marker.exists()
    assert os.path.getsize(trainer_file) > 0  # refused, not deleted: the operator decides
