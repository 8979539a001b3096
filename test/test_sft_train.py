"""SFT: a tiny real VLA learns from demonstration bags, checkpoints, resumes, logs to TensorBoard."""
import json

import numpy as np
import pytest

from vla_rl_ros.cli.main import main
from vla_rl_ros.core.config import load_config
from vla_rl_ros.core.sft import learning_rate_at, random_shift, train_sft
from test_data_bags import make_episode, write_demo_dir


def sft_config(tmp_path, steps=4, **extra):
    overrides = [f"sft.demo_dir={tmp_path / 'demos'}", f"sft.output_dir={tmp_path / 'out'}",
                 f"sft.steps={steps}", "sft.batch_size=4", "sft.checkpoint_every=2", "sft.warmup_steps=1",
                 "sft.eval_episodes_per_task=0", "sft.log_every=1", "policy.size=tiny",
                 "policy.image_size=32",
                 "env.task_ids=[0,1]"] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)


@pytest.fixture()
def demo_dir(tmp_path):
    (tmp_path / "demos").mkdir()
    write_demo_dir(tmp_path / "demos", [make_episode(0, 0, steps=6), make_episode(1, 2, steps=6, seed=3)])
    return tmp_path / "demos"


def test_sft_trains_checkpoints_and_resumes(tmp_path, demo_dir):
    cfg = sft_config(tmp_path, steps=4)
    first = train_sft(cfg, progress=False, max_steps=2)
    out = tmp_path / "out"
    assert first["steps_done"] == 2 and (out / "checkpoint" / "trainer.pt").is_file()
    assert not (out / "policy").exists()  # not finished yet
    second = train_sft(cfg, progress=False)
    assert second["resumed_from"] == 2 and second["steps_done"] == 4
    assert (out / "policy" / "config.json").is_file()
    summary = json.loads((out / "sft_result.json").read_text())
    assert summary["demo_frames"] == 12 and summary["demo_episodes"] == 2
    assert list((out / "tb").glob("events.out.tfevents.*"))
    from vla_rl_ros.core.policy import VLAPolicy
    policy = VLAPolicy.load(str(out / "policy"), cfg.policy)
    stats = policy.norm_stats["libero_object"]["action"]
    assert stats["mask"][-1] is False and len(stats["q99"]) == 7


def test_sft_loss_decreases_on_a_fixed_dataset(tmp_path, demo_dir):
    result = train_sft(sft_config(tmp_path, steps=30, **{"sft.learning_rate": 3e-3}), progress=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "out" / "tb"))
    events.Reload()
    losses = [e.value for e in events.Scalars("sft/loss")]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) and result["final_loss"] < losses[0]


def test_sft_command_and_bad_input(tmp_path, demo_dir, capsys):
    code = main(["sft", "--no-progress", "--set", f"sft.demo_dir={demo_dir}", "--set",
                 f"sft.output_dir={tmp_path / 'cli'}", "--set", "sft.steps=1", "--set", "sft.batch_size=2",
                 "--set", "sft.eval_episodes_per_task=0", "--set", "policy.size=tiny", "--set",
                 "policy.image_size=32", "--set", "env.task_ids=[0,1]"])
    assert code == 0 and json.loads(capsys.readouterr().out)["steps_done"] == 1
    assert main(["sft", "--set", "sft.batch_size=0"]) == 2
    assert "sft.batch_size=0" in capsys.readouterr().err


def test_schedule_and_augmentation():
    assert learning_rate_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert learning_rate_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert learning_rate_at(100, 1.0, 10, 100) == pytest.approx(0.1)
    images = np.random.default_rng(0).integers(0, 255, size=(3, 16, 16, 3), dtype=np.uint8)
    shifted = random_shift(images, np.random.default_rng(1))
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
